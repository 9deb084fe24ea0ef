"""Fixtures for the Lambda handler: AWS event shapes, a local S3 server and a clean environment.

S3 is a real S3-compatible HTTP server (moto in server mode) on 127.0.0.1; the handler's boto3
client reaches it through boto3's standard ``AWS_ENDPOINT_URL_S3`` setting, so every S3 call in
these tests goes over HTTP exactly as it would to AWS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (one per test session)."""
    pytest.importorskip("boto3", reason="S3 tests need the lambda extra (boto3)")
    server_module = pytest.importorskip("moto.server", reason="S3 tests need moto[server]")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A boto3 S3 client on the local server; the handler is pointed at the same server."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.session.Session().client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def make_bucket(s3: Any, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory creating a bucket whose name is unique to the test."""
    counter = iter(range(1000))

    def factory(stem: str) -> str:
        name = f"{stem}-{request.node.name.lower().replace('_', '-')[:30]}-{next(counter)}"
        name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")[:63]
        s3.create_bucket(Bucket=name)
        return name

    return factory
