"""The local invoke URL (images without the Runtime Interface Emulator), over real HTTP.

The server runs the real handler on the tiny colour bundle; requests are sent with httpx exactly
as a user's ``curl -d`` would send them. The container test (``test_lambda_container.py``) runs
the same server as the image's entrypoint.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from imgclf.serving.aws_lambda.local_invoke import (
    INVOKE_PATH,
    LocalContext,
    load_handler,
    make_server,
)
from imgclf.serving.aws_lambda.settings import LAMBDA_SYNC_PAYLOAD_LIMIT

pytestmark = pytest.mark.usefixtures("lambda_env")


def serve(handler: Callable[[Any, Any], Any], body_timeout_s: float = 30) -> Iterator[str]:
    server = make_server(handler, "127.0.0.1", 0, body_timeout_s)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def invoke_url() -> Iterator[str]:
    """Base URL of a local invoker running imgclf's handler."""
    yield from serve(load_handler("imgclf.serving.aws_lambda.handler.handler"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_base64_image_gets_the_prediction(
    invoke_url: str, image_bytes: Callable[..., bytes]
) -> None:
    body = json.dumps({"image": b64(image_bytes("blue")), "top_k": 2})
    response = httpx.post(invoke_url + INVOKE_PATH, content=body, timeout=60)
    assert response.status_code == 200
    answer = response.json()
    assert answer["class"] == "blue"
    assert len(answer["top_k"]) == 2
    assert answer["model"] == {"name": "colors", "version": "1"}


@pytest.mark.parametrize(
    ("event", "status", "words"),
    [
        ('{"image": "@@@"}', 400, "base64"),
        ('{"picture": "x"}', 422, "picture"),
        ("null", 422, "JSON object"),
        ("[1, 2]", 422, "JSON object"),
    ],
)
def test_bad_events_get_the_handlers_4xx_object(
    invoke_url: str, event: str, status: int, words: str
) -> None:
    response = httpx.post(invoke_url + INVOKE_PATH, content=event, timeout=60)
    assert response.status_code == 200  # as from the emulator: the function returned normally
    answer = response.json()
    assert answer["statusCode"] == status
    assert words in answer["detail"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"image": ', b"\xff\xfe", b"[" * 100_000, b'{"top_k": ' + b"9" * 5000 + b"}"],
)
def test_body_that_is_not_json_gets_400_without_calling_the_handler(
    invoke_url: str, body: bytes
) -> None:
    response = httpx.post(invoke_url + INVOKE_PATH, content=body, timeout=60)
    assert response.status_code == 400
    answer = response.json()
    assert answer["statusCode"] == 400
    assert "not JSON" in answer["detail"]


def test_wrong_path_method_and_size_are_refused(invoke_url: str) -> None:
    assert httpx.post(invoke_url + "/predict", json={}, timeout=10).status_code == 404
    wrong_method = httpx.get(invoke_url + INVOKE_PATH, timeout=10)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "POST"
    # An oversized event is refused from its Content-Length, before any of it is read.
    port = int(invoke_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST {INVOKE_PATH} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {LAMBDA_SYNC_PAYLOAD_LIMIT + 1}\r\n\r\n".encode()
        )
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_stalled_upload_neither_blocks_others_nor_holds_its_connection(
    image_bytes: Callable[..., bytes],
) -> None:
    for url in serve(load_handler("imgclf.serving.aws_lambda.handler.handler"), body_timeout_s=1):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
            stalled.sendall(
                f"POST {INVOKE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{".encode()
            )
            event = {"image": b64(image_bytes("red"))}
            answer = httpx.post(url + INVOKE_PATH, json=event, timeout=30)
            assert answer.json()["class"] == "red"
            assert stalled.recv(100) == b""  # closed after the body timeout, without an answer


def test_handler_exception_is_reported_like_lambda() -> None:
    seen: list[Any] = []

    def failing(event: Any, context: Any) -> Any:
        seen.append(context)
        raise RuntimeError("S3 is down")

    for url in serve(failing):
        response = httpx.post(url + INVOKE_PATH, json={"Records": []}, timeout=10)
    assert response.status_code == 200
    assert response.headers["X-Amz-Function-Error"] == "Unhandled"
    assert response.json() == {"errorMessage": "S3 is down", "errorType": "RuntimeError"}
    context = seen[0]
    assert isinstance(context, LocalContext)
    assert context.aws_request_id
    assert 0 < context.get_remaining_time_in_millis() <= 300_000


def test_load_handler_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"module\.function"):
        load_handler("handler")
    with pytest.raises(ValueError, match="no callable"):
        load_handler("imgclf.serving.aws_lambda.handler.nothing")


@pytest.mark.parametrize(
    "headers",
    [{"X-Big": "a" * 40_000}, {f"X-H{i}": "1" for i in range(150)}],
    ids=["one-40kb-header", "150-headers"],
)
def test_oversized_or_too_many_headers_get_431(invoke_url: str, headers: dict[str, str]) -> None:
    answer = httpx.post(f"{invoke_url}{INVOKE_PATH}", json={}, headers=headers, timeout=10)
    assert answer.status_code == 431


@pytest.fixture
def trickling_upstream() -> Iterator[str]:
    """An upstream that sends its status line, then a header one byte every 50 ms."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not stop.wait(0.05):
                try:
                    conn.sendall(b"x")
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/slow.jpg"
    stop.set()
    listener.close()


def test_trickling_upstream_is_cut_at_the_fetch_deadline(
    monkeypatch: pytest.MonkeyPatch, invoke_url: str, trickling_upstream: str, image_bytes: Any
) -> None:
    """Issue #19: the handler hung for good on such an upstream, and every later event with it."""
    monkeypatch.setenv("URL_ALLOW_LOOPBACK", "1")
    monkeypatch.setenv("URL_TIMEOUT_S", "1")
    url = f"{invoke_url}{INVOKE_PATH}"
    answer = httpx.post(url, json={"url": trickling_upstream}, timeout=10)
    assert answer.status_code == 200  # the invoke URL answers what the handler returned
    assert answer.json()["statusCode"] == 400
    assert "longer than 1 s" in answer.json()["detail"]
    assert answer.elapsed.total_seconds() < 3
    image = {"image": b64(image_bytes("red"))}
    assert httpx.post(url, json=image, timeout=10).json()["class"] == "red"
