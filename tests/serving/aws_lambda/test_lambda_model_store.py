"""Loading the served model from MODEL_URI: S3 archives and prefixes, local archives, checksums."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lambda_events import FakeContext, http_v2_event

from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.serving.aws_lambda.handler import handler
from imgclf.serving.aws_lambda.model_store import clear_model_cache, get_model
from imgclf.serving.aws_lambda.settings import LambdaSettings

pytestmark = pytest.mark.usefixtures("lambda_env")


def make_archive(bundle: Path, path: Path, *, nested: bool = False) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(bundle, arcname="tiny-bundle" if nested else ".")
    return path


@pytest.fixture
def model_bucket(s3: Any, make_bucket: Callable[[str], str]) -> tuple[Any, str]:
    """The S3 client and a fresh bucket to upload models to."""
    return s3, make_bucket("models")


def settings_for(monkeypatch: pytest.MonkeyPatch, **env: str) -> LambdaSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import os

    return LambdaSettings.from_env(os.environ)


def predict_red(image_bytes: Callable[..., bytes]) -> tuple[int, dict[str, Any]]:
    image = base64.b64encode(image_bytes("red")).decode()
    response = handler(http_v2_event(json.dumps({"image": image})), FakeContext())
    return response["statusCode"], json.loads(response["body"])


def test_s3_archive_with_matching_sha256(
    model_bucket: tuple[Any, str],
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    image_bytes: Callable[..., bytes],
) -> None:
    s3, bucket = model_bucket
    archive = make_archive(tiny_bundle, tmp_path / "model.tar.gz", nested=True)
    s3.upload_file(str(archive), bucket, "colors/v1/model.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    settings = settings_for(
        monkeypatch, MODEL_URI=f"s3://{bucket}/colors/v1/model.tar.gz", MODEL_SHA256=digest
    )
    model = get_model(settings)
    assert model.source == f"s3://{bucket}/colors/v1/model.tar.gz"
    assert Path(settings.model_cache_dir) in model.predictor.bundle.root.parents
    assert get_model(settings) is model  # loaded once per environment
    status, body = predict_red(image_bytes)
    assert (status, body["class"]) == (200, "red")


def test_s3_archive_with_wrong_sha256_is_refused(
    model_bucket: tuple[Any, str],
    tiny_bundle: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    image_bytes: Callable[..., bytes],
) -> None:
    s3, bucket = model_bucket
    archive = make_archive(tiny_bundle, tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), bucket, "model.tar.gz")
    settings = settings_for(
        monkeypatch, MODEL_URI=f"s3://{bucket}/model.tar.gz", MODEL_SHA256="0" * 64
    )
    with pytest.raises(ChecksumMismatchError, match="MODEL_SHA256"):
        get_model(settings)
    status, body = predict_red(image_bytes)
    assert status == 500
    assert "sha256" in body["detail"]


def test_s3_prefix_downloads_manifest_and_runnable_artifact_only(
    model_bucket: tuple[Any, str],
    tiny_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
    image_bytes: Callable[..., bytes],
) -> None:
    s3, bucket = model_bucket
    for path in tiny_bundle.iterdir():
        s3.upload_file(str(path), bucket, f"bundles/colors/{path.name}")
    s3.put_object(Bucket=bucket, Key="bundles/colors/notes.txt", Body=b"unrelated")
    settings = settings_for(monkeypatch, MODEL_URI=f"s3://{bucket}/bundles/colors")
    model = get_model(settings)
    assert sorted(p.name for p in model.predictor.bundle.root.iterdir()) == [
        "manifest.json",
        "model.onnx",
    ]
    status, body = predict_red(image_bytes)
    assert (status, body["class"]) == (200, "red")


def test_s3_prefix_with_tampered_artifact_is_refused(
    model_bucket: tuple[Any, str],
    tiny_bundle: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s3, bucket = model_bucket
    s3.upload_file(str(tiny_bundle / "manifest.json"), bucket, "b/manifest.json")
    s3.put_object(Bucket=bucket, Key="b/model.onnx", Body=b"not the model that was exported")
    settings = settings_for(monkeypatch, MODEL_URI=f"s3://{bucket}/b/")
    with pytest.raises(ChecksumMismatchError, match=r"model\.onnx has sha256"):
        get_model(settings)


def test_archive_with_tampered_artifact_fails_manifest_check(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"replaced")
    archive = make_archive(tiny_bundle, tmp_path / "model.tgz")
    settings = settings_for(monkeypatch, MODEL_URI=str(archive))
    with pytest.raises(ChecksumMismatchError, match="manifest says"):
        get_model(settings)


def test_local_archive(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = make_archive(tiny_bundle, tmp_path / "model.tar.gz")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    settings = settings_for(monkeypatch, MODEL_URI=str(archive), MODEL_SHA256=digest)
    assert get_model(settings).predictor.labels == ["red", "green", "blue"]


def test_archive_escaping_its_directory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    settings = settings_for(monkeypatch, MODEL_URI=str(archive))
    with pytest.raises(BundleError, match="not a plain relative file"):
        get_model(settings)
    assert not (tmp_path / "escaped.txt").exists()


def test_missing_s3_object_names_the_uri(
    s3: Any, make_bucket: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = make_bucket("models")
    settings = settings_for(monkeypatch, MODEL_URI=f"s3://{bucket}/absent.tar.gz")
    with pytest.raises(BundleError, match=rf"cannot download s3://{bucket}/absent.tar.gz"):
        get_model(settings)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"MODEL_SHA256": "abc"}, "64 lowercase hex"),
        ({"MODEL_URI": "s3://bucket-only"}, "s3://bucket/key"),
        ({"INFERENCE_THREADS": "0"}, "INFERENCE_THREADS"),
        ({"URL_ALLOW_LOOPBACK": "maybe"}, "URL_ALLOW_LOOPBACK"),
    ],
)
def test_bad_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError, match=fragment):
        get_model(settings_for(monkeypatch, **env))


def test_sha256_needs_an_archive(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="MODEL_SHA256 checks an archive"):
        get_model(settings_for(monkeypatch, MODEL_SHA256="a" * 64))


def test_changed_settings_reload_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    first = get_model(settings_for(monkeypatch))
    second = get_model(settings_for(monkeypatch, MODEL_ARTIFACT="onnx"))
    assert first is not second
    clear_model_cache()
    assert get_model(settings_for(monkeypatch)) is not second


def test_bundle_files_are_readable_by_the_function_user(tiny_bundle: Path) -> None:
    """Lambda runs the function as an unprivileged user: a bundle copied into an image as-is
    (file modes preserved) must be world-readable."""
    for path in tiny_bundle.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044, f"{path.name} is not world-readable"
