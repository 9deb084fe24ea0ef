# One command installs and runs the main job, one installs and runs the tests:
#   make serve     -> REST API + web page for the bundled clothing model on http://127.0.0.1:8000
#   make test      -> the full test suite (installs torch for the training tests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Training needs torch + torchvision; these versions install from the local wheel cache here.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help serve install-serve install-dev test test-fast test-containers lint format clean \
	bench-accuracy bench-runtimes bench-serving bench-reliability bench-gateway bench-lambda

help:
	@echo "make serve            install the serving extras and serve the bundled model on $(HOST):$(PORT)"
	@echo "make test             install everything (torch included) and run the whole test suite"
	@echo "make test-fast        the same without the slow tests (containers, browser, real data)"
	@echo "make test-containers  container tests only (needs podman: ../shared/tools/container-base.sh)"
	@echo "make lint             ruff check, ruff format --check, mypy"
	@echo "make bench-*          benchmarks: accuracy runtimes serving reliability gateway lambda"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install-serve: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'

serve: install-serve
	$(BIN)/imgclf serve --host $(HOST) --port $(PORT)

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[serve,grpc,lambda,train,dev]'

test: install-dev
	$(BIN)/python -m pytest

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow"

test-containers: install-dev
	$(BIN)/python -m pytest -m containers

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

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
