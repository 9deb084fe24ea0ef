"""Compressed V2 REST bodies: decompressed incrementally with a cap, so a bomb costs nothing.

A 1 MB gzip body that expands to 1 GiB is sent to a real ``imgclf model-server`` process; it must
answer 413 with a reason while its peak memory (VmHWM) stays far below the expanded size.
"""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from imgclf.serving.model_server.server import ModelServer

MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def bomb(expanded_mib: int, wbits: int) -> bytes:
    """One compressed stream of ``expanded_mib`` MiB of zeros (about 1000:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MIB)
    return b"".join(packer.compress(zeros) for _ in range(expanded_mib)) + packer.flush()


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    return bomb(1024, 16 + zlib.MAX_WBITS)


@pytest.fixture
def server(repository: Path) -> Iterator[tuple[str, int]]:
    """A model-server process with its default 64 MiB body limit: (base URL, pid)."""
    http_port = free_port()
    command = [
        sys.executable, "-m", "imgclf", "model-server", "--repository", str(repository),
        "--grpc-port", str(free_port()), "--http-port", str(http_port), "--poll-interval", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    try:
        assert b"REST on" in process.stdout.readline()
        yield f"http://127.0.0.1:{http_port}", process.pid
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.slow
def test_gzip_and_deflate_bombs_get_413_without_expanding(
    server: tuple[str, int], gzip_bomb: bytes
) -> None:
    url, pid = server
    bombs = {
        "gzip 1 GiB": (gzip_bomb, "gzip"),
        "gzip 1024 members": (gzip.compress(bytes(MIB)) * 1024, "gzip"),
        "deflate 512 MiB": (bomb(512, zlib.MAX_WBITS), "deflate"),
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/v2/health/ready").status_code == 200
        before = peak_rss_mb(pid)
        for name, (body, encoding) in bombs.items():
            assert len(body) < 1.1 * MIB, name
            response = http.post(
                "/v2/models/colors/infer", content=body, headers={"Content-Encoding": encoding}
            )
            assert response.status_code == 413, (name, response.text)
            assert "decompressed request body exceeds 67108864 bytes" in response.json()["error"]
        growth = peak_rss_mb(pid) - before
        print(f"model server peak RSS {before:.0f} MB -> +{growth:.0f} MB over the bombs")
        assert growth < 300  # the cap is 64 MiB; expanding the bomb would add 1024 MB

        # The server still answers, and honest compressed requests still work.
        assert http.get("/v2/health/ready").status_code == 200
        request = {
            "inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}
            ]
        }
        response = http.post(
            "/v2/models/colors/infer",
            content=gzip.compress(json.dumps(request).encode()),
            headers={"Content-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "encoding", "status", "message"),
    [
        (gzip.compress(b'{"inputs": []}')[:-6], "gzip", 400, "truncated gzip"),
        (b"not gzip at all", "gzip", 400, "not valid gzip"),
        (zlib.compress(b'{"inputs": []}') + b"tail", "deflate", 400, "after the end"),
        (b'{"inputs": []}', "br", 415, "'br' is not supported"),
    ],
)
def test_bad_compressed_bodies_get_a_reason(
    model_server: ModelServer, body: bytes, encoding: str, status: int, message: str
) -> None:
    url = f"http://127.0.0.1:{model_server.http_port}/v2/models/colors/infer"
    response = httpx.post(url, content=body, headers={"Content-Encoding": encoding})
    assert response.status_code == status
    assert message in response.json()["error"]
