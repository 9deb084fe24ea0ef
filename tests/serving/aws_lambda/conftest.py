"""Lambda handler fixtures: a clean environment (the S3 server is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

LAMBDA_ENV_VARS = (
    "MODEL_URI",
    "MODEL_SHA256",
    "MODEL_ARTIFACT",
    "MODEL_CACHE_DIR",
    "INFERENCE_THREADS",
    "TOP_K",
    "URL_TIMEOUT_S",
    "OUTPUT_BUCKET",
    "OUTPUT_PREFIX",
    "MAX_REQUEST_BYTES",
    "MAX_OBJECT_BYTES",
    "URL_MAX_BYTES",
    "URL_ALLOWED_HOSTS",
    "URL_ALLOW_LOOPBACK",
    "LOG_LEVEL",
)


@pytest.fixture
def lambda_env(
    monkeypatch: pytest.MonkeyPatch, tiny_bundle: Path, tmp_path: Path
) -> Iterator[Path]:
    """A clean handler environment serving ``tiny_bundle``; the model cache is emptied around it."""
    from imgclf.serving.aws_lambda.model_store import clear_model_cache

    for name in LAMBDA_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODEL_URI", str(tiny_bundle))
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    monkeypatch.setenv("INFERENCE_THREADS", "1")
    clear_model_cache()
    yield tiny_bundle
    clear_model_cache()
