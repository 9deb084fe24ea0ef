"""Shared fixtures: synthetic images, a synthetic folder-per-class dataset and a tiny ONNX bundle.

Everything here is generated on the fly, so tests need no download and no real dataset. The tiny
bundle's ONNX model is built by hand (no torch): it averages each colour channel and maps the means
to logits for the labels ``red``, ``green`` and ``blue``, so it classifies solid-colour images
correctly and serving tests can assert real answers.

S3 is a real S3-compatible HTTP server (moto in server mode) on 127.0.0.1; boto3 clients reach it
through boto3's standard ``AWS_ENDPOINT_URL_S3`` setting, so every S3 call in the tests goes over
HTTP exactly as it would to AWS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtools import COLORS, build_color_onnx, encode_image, make_image, write_color_dataset


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """Factory: ``image_bytes("red", fmt="PNG", size=(32, 32))`` -> encoded image bytes."""

    def factory(
        color: str = "red", fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0
    ) -> bytes:
        return encode_image(make_image(COLORS[color], size, seed=seed), fmt)

    return factory


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    """A small train/validation/test dataset of three colour classes."""
    return write_color_dataset(tmp_path / "colors")


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A valid bundle with an ``onnx`` artifact that classifies solid colours (no torch needed)."""
    from imgclf.bundle import Bundle, Manifest
    from imgclf.preprocessing import PreprocessConfig

    root = tmp_path / "tiny-bundle"
    root.mkdir()
    config = PreprocessConfig(
        input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    manifest = Manifest(
        name="colors",
        version="1",
        backbone="channel-means",
        labels=list(COLORS),
        preprocessing=config.to_dict(),
    )
    bundle = Bundle(root=root, manifest=manifest)
    build_color_onnx(root / "model.onnx", input_size=32)
    bundle.add_artifact(
        "onnx",
        root / "model.onnx",
        format="onnx",
        precision="fp32",
        input_name="input",
        output_name="logits",
    )
    return root


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
