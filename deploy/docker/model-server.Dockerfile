# imgclf model server: a KServe V2 / Open Inference Protocol server (`imgclf model-server`) over a
# Triton-style model repository, gRPC on 8001 and REST on 8000 (Triton's ports).
#
#   docker build -f deploy/docker/model-server.Dockerfile -t imgclf-model-server .
#   docker run --rm -p 127.0.0.1:8001:8001 imgclf-model-server           # bundled clothing model
#   docker run --rm -p 127.0.0.1:8001:8001 -v "$PWD/repo:/models:ro" imgclf-model-server
#
# The repository at /models is written at build time from the bundled model by imgclf's Triton
# exporter (imgclf.export.triton); mount your own repository over it to serve other models (the
# server picks up new versions without a restart), or pull a bundle at start-up with
# `--bundle https://host/bundle.tar.gz#sha256=<hex>` (`--bundle s3://bucket/prefix/` uses boto3,
# installed by the s3 extra in deploy/locks/serve.txt; see deploy/k8s/overlays/s3-model). No torch: ONNX
# Runtime runs the models.
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

# ---- repository: the bundled model as a Triton model repository --------------------------------
FROM runtime AS repository
# auto: the bundle's int8 ONNX model if it has one (what `imgclf serve` runs too), else fp32.
ARG MODEL_ARTIFACT=auto
RUN python -c "import sys; from imgclf.bundle import load_bundle; \
from imgclf.export.triton import export_triton_repository; \
bundle = load_bundle(); kind = sys.argv[1]; \
kind = ('onnx-int8' if 'onnx-int8' in bundle.manifest.artifacts else 'onnx') if kind == 'auto' else kind; \
print(export_triton_repository(bundle, '/models', artifact=kind), kind)" "${MODEL_ARTIFACT}" \
    && chmod -R a+rX,go-w /models

# ---- model server ---------------------------------------------------------------------------------
FROM runtime AS model-server
COPY --from=repository /models /models
USER 10001:10001
WORKDIR /home/imgclf
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
ENTRYPOINT ["imgclf", "model-server"]
CMD ["--repository", "/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001"]
