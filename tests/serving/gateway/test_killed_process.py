"""A real ``imgclf model-server`` process killed with SIGKILL and restarted under the gateway."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from imgclf.errors import ModelServerUnavailableError
from imgclf.serving.gateway.client import RemoteBackend

BLUE = np.full((1, 32, 32, 3), (30, 40, 220), dtype=np.uint8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(repository: Path, port: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "imgclf", "model-server", "--repository", str(repository),
        "--grpc-port", str(port), "--no-http", "--poll-interval", "0",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None
    assert "gRPC on" in process.stdout.readline()  # printed once the port listens
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.slow
def test_sigkilled_model_server_gives_503_then_recovers(repository: Path) -> None:
    port = free_port()
    first = start_server(repository, port)
    backend = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", timeout_s=3, retries=2)
    second = None
    try:
        assert backend.infer(BLUE).argmax() == 2
        first.kill()
        first.wait()
        started = time.monotonic()
        with pytest.raises(ModelServerUnavailableError):
            backend.infer(BLUE)
        assert time.monotonic() - started < 1.5
        assert not backend.is_ready()

        second = start_server(repository, port)
        deadline = time.monotonic() + 10
        while not backend.is_ready():
            assert time.monotonic() < deadline, "gateway did not reconnect"
            time.sleep(0.1)
        assert backend.infer(BLUE).argmax() == 2
    finally:
        backend.close()
        stop(first)
        if second is not None:
            stop(second)
