"""Bundles from object storage and HTTP(S): cache, checksums, atomic swap, retries.

The HTTP server is a real one on 127.0.0.1 that can cut bodies short or answer 503 first; S3 is
the moto server of tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from bundle_server import Behaviour, free_port, start_server
from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.inference.bundle_source import ALL_ARTIFACTS, FetchOptions, fetch_bundle, split_pin
from imgclf.inference.predictor import Predictor


@pytest.fixture
def http_server() -> Iterator[tuple[Behaviour, str]]:
    """A behaviour to configure and the base URL of the server that follows it."""
    behaviour = Behaviour()
    server = start_server(behaviour)
    yield behaviour, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def archive(tiny_bundle: Path, tmp_path: Path) -> bytes:
    """The tiny bundle as a .tar.gz (bundle files at its top level)."""
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tiny_bundle, arcname=".")
    return path.read_bytes()


def options(tmp_path: Path, **overrides: Any) -> FetchOptions:
    values: dict[str, Any] = {"cache_dir": tmp_path / "cache", "backoff_s": 0.05, "attempts": 3}
    return FetchOptions(**(values | overrides))


def cache_entries(tmp_path: Path) -> list[str]:
    """Directories in the cache (lock files aside): staging leftovers would show up here."""
    cache = tmp_path / "cache"
    return sorted(p.name for p in cache.iterdir() if p.is_dir()) if cache.exists() else []


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_http_archive_with_pin_is_downloaded_once(
    http_server: tuple[Behaviour, str],
    archive: bytes,
    tmp_path: Path,
    image_bytes: Callable[..., bytes],
) -> None:
    behaviour, base = http_server
    behaviour.files["/models/colors.tar.gz"] = archive
    uri = f"{base}/models/colors.tar.gz#sha256={digest(archive)}"
    root = fetch_bundle(uri, options=options(tmp_path))
    assert root is not None
    assert Predictor.from_bundle(root).predict(image_bytes("blue")).label == "blue"
    assert fetch_bundle(uri, options=options(tmp_path)) == root
    assert behaviour.requests == ["/models/colors.tar.gz"]  # the second start used the cache


def test_wrong_sha256_is_refused_and_leaves_nothing(
    http_server: tuple[Behaviour, str], archive: bytes, tmp_path: Path
) -> None:
    behaviour, base = http_server
    behaviour.files["/m.tar.gz"] = archive
    with pytest.raises(ChecksumMismatchError, match="the #sha256 pin is 0000"):
        fetch_bundle(f"{base}/m.tar.gz#sha256={'0' * 64}", options=options(tmp_path))
    assert cache_entries(tmp_path) == []


def test_truncated_download_is_retried(
    http_server: tuple[Behaviour, str], archive: bytes, tmp_path: Path
) -> None:
    behaviour, base = http_server
    behaviour.files["/m.tar.gz"] = archive
    behaviour.truncate_first = 2
    root = fetch_bundle(f"{base}/m.tar.gz", options=options(tmp_path))
    assert root is not None and (root / "model.onnx").is_file()
    assert len(behaviour.requests) == 3


def test_download_truncated_every_time_fails_without_a_half_written_bundle(
    http_server: tuple[Behaviour, str], archive: bytes, tmp_path: Path
) -> None:
    behaviour, base = http_server
    behaviour.files["/m.tar.gz"] = archive
    behaviour.truncate_first = 99
    with pytest.raises(BundleError, match=r"cannot download .*/m.tar.gz after 3 attempts"):
        fetch_bundle(f"{base}/m.tar.gz", options=options(tmp_path))
    assert cache_entries(tmp_path) == []


def test_server_down_then_up(archive: bytes, tmp_path: Path) -> None:
    port = free_port()
    behaviour = Behaviour(files={"/m.tar.gz": archive}, unavailable_first=1)
    starter = threading.Timer(0.6, lambda: servers.append(start_server(behaviour, port)))
    servers: list[ThreadingHTTPServer] = []
    starter.start()
    try:
        started = time.monotonic()
        root = fetch_bundle(
            f"http://127.0.0.1:{port}/m.tar.gz", options=options(tmp_path, attempts=8)
        )
        assert root is not None and (root / "manifest.json").is_file()
        assert time.monotonic() - started >= 0.5  # refused first, then a 503, then the bundle
        assert behaviour.requests == ["/m.tar.gz", "/m.tar.gz"]
    finally:
        starter.join()
        for server in servers:
            server.shutdown()
            server.server_close()


def test_missing_file_fails_at_once(http_server: tuple[Behaviour, str], tmp_path: Path) -> None:
    behaviour, base = http_server
    with pytest.raises(BundleError, match="HTTP 404; check the URL"):
        fetch_bundle(f"{base}/absent.tar.gz", options=options(tmp_path))
    assert len(behaviour.requests) == 1


def test_new_archive_replaces_the_cached_one_atomically(
    http_server: tuple[Behaviour, str], archive: bytes, tiny_bundle: Path, tmp_path: Path
) -> None:
    behaviour, base = http_server
    behaviour.files["/m.tar.gz"] = archive
    first = fetch_bundle(f"{base}/m.tar.gz", options=options(tmp_path))
    behaviour.files["/m.tar.gz"] = b"not a tar.gz at all"
    with pytest.raises(BundleError, match=r"not a readable tar\.gz"):
        fetch_bundle(f"{base}/m.tar.gz", options=options(tmp_path))
    assert first is not None
    Predictor.from_bundle(first)  # the previous copy is intact after the failed update
    assert cache_entries(tmp_path) == [first.name]


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("https://h/m.tar.gz#sha256=abc", "64 lowercase hex"),
        ("https://h/m.tar.gz#md5=" + "0" * 64, "#sha256="),
        ("https://h/bundle/", "must be an archive"),
        ("s3://bucket-only", "s3://bucket/key"),
        ("some/dir#sha256=" + "a" * 64, "checks an archive"),
    ],
)
def test_bad_uris_are_named(uri: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=fragment):
        fetch_bundle(uri, options=options(tmp_path))


def test_local_directory_is_used_in_place(tiny_bundle: Path, tmp_path: Path) -> None:
    assert fetch_bundle(str(tiny_bundle), options=options(tmp_path)) == tiny_bundle
    assert fetch_bundle(None) is None
    assert split_pin("s3://b/k.tar.gz") == ("s3://b/k.tar.gz", None)


@pytest.fixture
def bucket(s3: Any, make_bucket: Callable[[str], str]) -> str:
    return make_bucket("bundles")


def upload_dir(s3: Any, bucket: str, root: Path, prefix: str) -> None:
    for path in root.iterdir():
        s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")


def test_s3_prefix_fetches_manifest_and_artifact_and_reuses_the_cache(
    s3: Any, bucket: str, tiny_bundle: Path, tmp_path: Path
) -> None:
    upload_dir(s3, bucket, tiny_bundle, "colors/v1")
    downloads: list[str] = []
    opts = options(tmp_path, on_download=lambda uri, size, ms: downloads.append(uri))
    root = fetch_bundle(f"s3://{bucket}/colors/v1/", options=opts)
    assert root is not None
    assert Predictor.from_bundle(root).labels == ["red", "green", "blue"]
    assert fetch_bundle(f"s3://{bucket}/colors/v1/", options=opts) == root
    assert downloads == [
        f"s3://{bucket}/colors/v1/manifest.json",
        f"s3://{bucket}/colors/v1/model.onnx",
        f"s3://{bucket}/colors/v1/manifest.json",  # the second start checked the manifest only
    ]
    assert fetch_bundle(
        f"s3://{bucket}/colors/v1", options=options(tmp_path, artifact=ALL_ARTIFACTS)
    )


def test_s3_tampered_artifact_and_wrong_pin_are_refused(
    s3: Any, bucket: str, tiny_bundle: Path, archive: bytes, tmp_path: Path
) -> None:
    s3.upload_file(str(tiny_bundle / "manifest.json"), bucket, "b/manifest.json")
    s3.put_object(Bucket=bucket, Key="b/model.onnx", Body=b"not the exported model")
    with pytest.raises(ChecksumMismatchError, match=r"model\.onnx has sha256"):
        fetch_bundle(f"s3://{bucket}/b/", options=options(tmp_path))
    s3.put_object(Bucket=bucket, Key="m.tgz", Body=archive)
    with pytest.raises(ChecksumMismatchError, match="pin is stale"):
        fetch_bundle(f"s3://{bucket}/m.tgz", sha256="1" * 64, options=options(tmp_path))
    good = fetch_bundle(f"s3://{bucket}/m.tgz", sha256=digest(archive), options=options(tmp_path))
    assert good is not None and (good / "model.onnx").is_file()
    assert cache_entries(tmp_path) == [good.name]


def test_missing_s3_object_fails_at_once(s3: Any, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=rf"cannot download s3://{bucket}/nope/manifest.json"):
        fetch_bundle(f"s3://{bucket}/nope/", options=options(tmp_path))
