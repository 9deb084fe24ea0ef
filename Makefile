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

.PHONY: serve install-serve install-dev test test-fast lint format bench clean

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

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
