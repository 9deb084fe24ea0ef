# One command installs and runs the main job, one installs and runs the tests:
#   make serve     -> REST API + web page for the bundled clothing model on http://127.0.0.1:8000
#   make test      -> the full test suite (installs torch for the training tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Training needs torch + torchvision. pip fetches these pins from its index like any package
# (PyPI unless you configured another): on Linux x86-64 that torch wheel is the CUDA build and
# brings the nvidia-* runtime wheels with it, about 4.3 GB installed (torch itself 1.2 GB), GPU or
# not. For a smaller CPU-only install, first install the same pins from PyTorch's CPU wheel index
# (pytorch.org's install page gives the command), then run make: pip keeps what is installed.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# TFLite export gets its own environment: litert-torch pins older pydantic/typing-extensions than
# the serving stack, and it must work without the serving extras.
TFLITE_VENV ?= .venv-tflite
TFLITE_BIN := $(TFLITE_VENV)/bin
# The official TF Serving client (tensorflow-serving-api pulls TensorFlow) gets its own environment
# too: the serving images must never need TensorFlow.
TFSERVING_VENV ?= .venv-tfserving
TFSERVING_BIN := $(TFSERVING_VENV)/bin

.PHONY: help serve install-serve install-dev test test-fast test-containers lint format clean \
	install-tflite test-tflite install-tfserving test-tfserving tfserving-protos lock \
	bench-accuracy bench-runtimes bench-serving bench-reliability bench-gateway bench-lambda \
	bench-peers

help:
	@echo "make serve            install the serving extras and serve the bundled model on $(HOST):$(PORT)"
	@echo "make test             install everything (torch included) and run the whole test suite"
	@echo "make test-fast        the same without the slow tests (training, containers, browser, real data)"
	@echo "make test-containers  container tests only (needs podman: ../shared/tools/container-base.sh)"
	@echo "make test-tflite      TFLite export round trip in its own environment ($(TFLITE_VENV))"
	@echo "make test-tfserving   official TF Serving client vs the model server ($(TFSERVING_VENV))"
	@echo "make lint             ruff check, ruff format --check, mypy, lint-imports (layers)"
	@echo "make lock             regenerate the images' dependency locks (deploy/locks) with uv"
	@echo "make bench-*          benchmarks: accuracy runtimes serving reliability gateway lambda peers"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install-serve: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'

serve: install-serve
	$(BIN)/imgclf serve --host $(HOST) --port $(PORT)

# Everything but torch, torchvision and their CUDA libraries (installed by version from TORCH_PINS)
# comes from a hash-checked lock (deploy/locks/dev.txt, resolved from the extras in DEV_EXTRAS), so
# CI and every developer test the same versions the images run.
DEV_EXTRAS := serve,grpc,lambda,train,ray,s3,dev
install-dev: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r deploy/locks/dev.txt
	$(BIN)/pip install --quiet --no-deps -e '.[$(DEV_EXTRAS)]'
	$(BIN)/pip check

test: install-dev
	$(BIN)/python -m pytest

# --durations names the tests that have grown slow enough to be marked `slow`.
test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow" --durations=10

test-containers: install-dev
	$(BIN)/python -m pytest -m containers

$(TFLITE_BIN)/python:
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_BIN)/pip install --quiet --upgrade pip

install-tflite: $(TFLITE_BIN)/python
	$(TFLITE_BIN)/pip install --quiet $(TORCH_PINS)
	$(TFLITE_BIN)/pip install --quiet -e '.[train,tflite]' 'pytest>=8' 'pytest-timeout>=2.3'

# IMGCLF_REQUIRE_TFLITE=1: a missing extra fails the round trip instead of skipping it. anyio's
# pytest plugin (the version litert-torch's pins allow) trips pytest's deprecation errors; unused.
test-tflite: install-tflite
	IMGCLF_REQUIRE_TFLITE=1 $(TFLITE_BIN)/python -m pytest -p no:anyio tests/export/test_tflite.py

$(TFSERVING_BIN)/python:
	$(PYTHON) -m venv $(TFSERVING_VENV)
	$(TFSERVING_BIN)/pip install --quiet --upgrade pip

# The servers under test run from this environment too.
install-tfserving: $(TFSERVING_BIN)/python
	$(TFSERVING_BIN)/pip install --quiet -e '.[grpc,serve,tfserving-client]'

# IMGCLF_REQUIRE_TFSERVING=1: a missing package fails the run instead of skipping it.
test-tfserving: install-tfserving
	IMGCLF_REQUIRE_TFSERVING=1 $(TFSERVING_BIN)/python -m pytest -p no:anyio \
		tests/serving/model_server/test_tfserving_client.py

# Regenerate the checked-in TF Serving .proto files and their descriptor set (see the script).
tfserving-protos: install-tfserving install-dev
	$(TFSERVING_BIN)/python tools/tfserving_protos.py write
	$(BIN)/python tools/tfserving_protos.py compile

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The images' hash-checked dependency locks (deploy/locks), after editing pyproject.toml's
# dependencies; tests/deploy/test_deploy_locks.py fails until they are current. Only uv is needed:
# install-dev itself installs from the lock, which may be the stale one. Pins still allowed are
# kept; LOCK_ARGS=--upgrade moves every pin to the newest release allowed.
lock: $(BIN)/python
	$(BIN)/pip install --quiet 'uv>=0.5'
	UV=$(BIN)/uv TORCH_PINS="$(TORCH_PINS)" DEV_EXTRAS="$(DEV_EXTRAS)" deploy/locks/update.sh $(LOCK_ARGS)

clean:
	rm -rf $(VENV) $(TFLITE_VENV) $(TFSERVING_VENV) build dist .pytest_cache .mypy_cache .ruff_cache

bench-accuracy: install-dev
	$(BIN)/python bench/bench_accuracy.py

bench-runtimes: install-dev
	$(BIN)/python bench/bench_runtimes.py --update-docs

bench-serving: install-dev
	$(BIN)/python bench/bench_serving.py --update-docs

bench-reliability: install-dev
	$(BIN)/python bench/bench_reliability.py --update-docs

bench-gateway: install-dev
	$(BIN)/python bench/bench_gateway.py --update-docs

bench-lambda: install-dev
	$(BIN)/python bench/bench_lambda.py --update-docs

# KServe and BentoML in environments of their own (created on first run; --venvs DIR).
bench-peers: install-dev
	$(BIN)/python bench/bench_peers.py --rounds 5 --seconds 30 --update-docs
