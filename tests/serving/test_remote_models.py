"""`imgclf serve -m https://...` and `imgclf model-server --bundle s3://...` as users run them."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import imgclf
from bundle_server import Behaviour, free_port, start_server
from imgclf.cli import main

SRC = str(Path(imgclf.__file__).resolve().parents[1])


@pytest.fixture
def archive_server(tiny_bundle: Path, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Base URL of a server holding ``/colors.tar.gz``, and the archive's sha256."""
    path = tmp_path / "colors.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(tiny_bundle, arcname=".")
    data = path.read_bytes()
    server = start_server(Behaviour(files={"/colors.tar.gz": data}))
    yield f"http://127.0.0.1:{server.server_address[1]}", hashlib.sha256(data).hexdigest()
    server.shutdown()
    server.server_close()


def spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environment = {**os.environ, **(env or {}), "PYTHONPATH": SRC}
    return subprocess.Popen(
        [sys.executable, "-m", "imgclf", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )


def wait_ready(url: str, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"exited with {process.returncode}: {output}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} never became ready")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.slow
def test_serve_downloads_a_pinned_archive(
    archive_server: tuple[str, str], tmp_path: Path, image_bytes: Callable[..., bytes]
) -> None:
    base, digest = archive_server
    port = free_port()
    cache = tmp_path / "cache"
    process = spawn(
        [
            *("serve", "-m", f"{base}/colors.tar.gz#sha256={digest}"),
            *("--model-cache", str(cache), "--port", str(port), "--threads", "1"),
        ]
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/ready", process)
        files = {"file": ("x.png", image_bytes("green", fmt="PNG"), "image/png")}
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=10)
        assert (answer.status_code, answer.json()["class"]) == (200, "green")
        assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    finally:
        stop(process)


def test_serve_with_a_wrong_pin_is_a_clear_start_up_error(
    archive_server: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _ = archive_server
    uri = f"{base}/colors.tar.gz#sha256={'a' * 64}"
    code = main(["serve", "-m", uri, "--model-cache", str(tmp_path / "cache")])
    assert code == 2
    error = capsys.readouterr().err
    assert "imgclf serve: error: model archive" in error
    assert "the #sha256 pin is aaaa" in error
    assert [p for p in (tmp_path / "cache").iterdir() if p.is_dir()] == []


@pytest.mark.slow  # five attempts with backoff: about 4 to 8 s
def test_serve_with_an_unreachable_model_fails_after_retries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}/model.tar.gz"
    assert main(["serve", "-m", uri, "--model-cache", str(tmp_path)]) == 2
    assert "after 5 attempts (ConnectError" in capsys.readouterr().err


@pytest.mark.slow
def test_model_server_exports_a_bundle_from_an_s3_prefix(
    s3: Any, make_bucket: Callable[[str], str], tiny_bundle: Path, tmp_path: Path
) -> None:
    import tritonclient.grpc as grpcclient

    bucket = make_bucket("models")
    for path in tiny_bundle.iterdir():
        s3.upload_file(str(path), bucket, f"colors/v1/{path.name}")
    grpc_port, http_port = free_port(), free_port()
    process = spawn(
        [
            *("model-server", "--repository", str(tmp_path / "repo")),
            *("--bundle", f"s3://{bucket}/colors/v1/", "--model-cache", str(tmp_path / "cache")),
            *("--grpc-port", str(grpc_port), "--http-port", str(http_port)),
            *("--poll-interval", "0"),
        ]
    )
    try:
        wait_ready(f"http://127.0.0.1:{http_port}/v2/health/ready", process)
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
            tensor.set_data_from_numpy(np.full((1, 32, 32, 3), (220, 30, 30), dtype=np.uint8))
            result = client.infer("colors", [tensor])
            assert int(result.as_numpy("probabilities").argmax()) == 0
    finally:
        stop(process)
