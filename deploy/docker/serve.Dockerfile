# imgclf serving image: the REST API, web page and gateway (`imgclf serve`), ONNX Runtime only.
#
#   docker build -f deploy/docker/serve.Dockerfile -t imgclf-serve .
#   docker run --rm -p 127.0.0.1:8000:8000 imgclf-serve                   # bundled clothing model
#   docker run --rm -p 127.0.0.1:8000:8000 -v "$PWD/my-bundle:/model:ro" \
#       -e IMGCLF_MODEL=/model imgclf-serve                               # your own bundle
#   docker run --rm -p 127.0.0.1:8000:8000 imgclf-serve \
#       --model-server grpc://model-server:8001                           # gateway mode
#
# No torch: the image installs `imgclf[serve,grpc]` from a wheel built in its own stage, and the
# dependencies from the hash-checked lock deploy/locks/serve.txt (`make lock` updates it).
# BASE_IMAGE must be a Debian-based Python 3.11+ image with `venv` (the official slim image is).
ARG BASE_IMAGE=python:3.11-slim

# ---- deps: third-party dependencies only, so editing the source keeps this layer cached ----------
# Exact versions, every file checked against its sha256 (deploy/locks/serve.txt, `make lock`).
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/venv
COPY deploy/locks/serve.txt /build/
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /build/serve.txt

# ---- wheel: the imgclf package itself, bundled model included ------------------------------------
FROM ${BASE_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY deploy/locks/build.txt /build/
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --require-hashes --no-deps -r /build/build.txt
WORKDIR /src
COPY pyproject.toml README.md* ./
COPY src ./src
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

# ---- venv: dependencies + imgclf; pip only installs the wheel and leaves with it ---------------
FROM deps AS venv
COPY --from=wheel /dist /tmp/dist
# pip check: a lock that misses a dependency fails the build, not the first request.
RUN /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && rm -rf /tmp/dist

# ---- runtime -------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 imgclf \
    && useradd --system --uid 10001 --gid imgclf --home-dir /home/imgclf --create-home \
        --shell /usr/sbin/nologin imgclf
COPY --from=venv /opt/venv /opt/venv

USER 10001:10001
WORKDIR /home/imgclf
ENV IMGCLF_HOST=0.0.0.0 \
    IMGCLF_PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('IMGCLF_PORT', '8000')}/ready\", timeout=4)"]
ENTRYPOINT ["imgclf", "serve"]
