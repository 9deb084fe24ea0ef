"""Gateway fault handling: a killed, slow, resetting or misbehaving model server.

Each failure must surface quickly as the right ModelServerError status (503 unavailable, 504 too
slow, 502 unusable answer), and the gateway must recover on its own once the server is back.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from imgclf.errors import ModelServerError
from imgclf.serving.gateway.client import RemoteBackend
from imgclf.serving.http.app import REST_STATUS
from imgclf.serving.model_server.grpc_service import InferenceServicer
from imgclf.serving.status import status_for

RED = np.full((2, 32, 32, 3), (220, 30, 30), dtype=np.uint8)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - started


def infer_ok(backend: RemoteBackend) -> bool:
    try:
        return backend.infer(RED).argmax(axis=1).tolist() == [0, 0]
    except ModelServerError:
        return False


def expect_error(backend: RemoteBackend, status: int, match: str) -> float:
    """Time until the expected error, whose message (shown to clients) names no address."""
    started = time.monotonic()
    with pytest.raises(ModelServerError, match=match) as info:
        backend.infer(RED)
    assert status_for(info.value, REST_STATUS, 500) == status  # what the REST app answers
    message = str(info.value)
    port = backend.target.rsplit(":", 1)[1]
    for internal in ("127.0.0.1", port, "ipv4", "dns:", "onnxruntime exploded"):
        assert internal not in message, f"{internal!r} leaked in {message!r}"
    assert info.value.__cause__ is None  # the gRPC error (addresses, details) is logged instead
    return time.monotonic() - started


def test_killed_server_gives_fast_503_and_recovery(grpc_servers: Any) -> None:
    server, port = grpc_servers.start()
    backend = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", timeout_s=3, retries=2)
    try:
        assert infer_ok(backend)
        server.stop(0).wait()
        elapsed = expect_error(backend, 503, "unavailable")
        assert elapsed < 1.5  # retries with backoff, far below the 3 s deadline
        assert not backend.is_ready()

        grpc_servers.start(port=port)
        recovery = wait_for(lambda: infer_ok(backend))
        assert recovery < 5
        assert backend.is_ready()
    finally:
        backend.close()


class SlowServicer(InferenceServicer):
    delay_s = 3.0

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        time.sleep(self.delay_s)
        return super().ModelInfer(request, context)


def test_slow_server_gives_504_at_the_deadline(grpc_servers: Any) -> None:
    _, port = grpc_servers.start(SlowServicer)
    backend = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", timeout_s=0.5, retries=2)
    try:
        elapsed = expect_error(backend, 504, r"did not answer within 0\.5 s")
        assert 0.4 < elapsed < 1.5  # not retried: a timeout would only repeat
    finally:
        backend.close()


class MalformedServicer(InferenceServicer):
    """Answers inference with what a broken or incompatible server might send."""

    mode = "no-output"

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if self.mode == "internal":
            context.abort(grpc.StatusCode.INTERNAL, "onnxruntime exploded")
        response = service_pb2.ModelInferResponse(model_name="colors", model_version="1")
        if self.mode == "wrong-shape":
            response.outputs.add(name="probabilities", datatype="FP32", shape=[1, 3])
            response.raw_output_contents.append(struct.pack("<3f", 1, 0, 0))
        return response


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("no-output", "without output 'probabilities'"),
        ("wrong-shape", r"expected FP32 \[2, 3\]"),
        ("internal", "INTERNAL"),
    ],
)
def test_unusable_answers_are_502(grpc_servers: Any, mode: str, match: str) -> None:
    servicer = type("Servicer", (MalformedServicer,), {"mode": mode})
    _, port = grpc_servers.start(servicer)
    backend = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", timeout_s=2)
    try:
        assert expect_error(backend, 502, match) < 1
    finally:
        backend.close()


class ResettingProxy:
    """A TCP proxy to the model server that can switch to resetting every connection."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.resetting = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.resetting:
                self._reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self._open += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def reset_all(self) -> None:
        self.resetting = True
        for sock in self._open:
            with contextlib.suppress(OSError):
                self._reset(sock)
        self._open.clear()

    def close(self) -> None:
        self._closed = True
        self.reset_all()
        self._listener.close()


@pytest.fixture
def proxy(grpc_servers: Any) -> Iterator[ResettingProxy]:
    _, port = grpc_servers.start()
    resetting = ResettingProxy(port)
    yield resetting
    resetting.close()


def test_resetting_connections_give_503_and_recovery(proxy: ResettingProxy) -> None:
    backend = RemoteBackend.from_url(f"grpc://127.0.0.1:{proxy.port}", timeout_s=3, retries=2)
    try:
        assert infer_ok(backend)
        proxy.reset_all()
        assert expect_error(backend, 503, "unavailable") < 1.5
        proxy.resetting = False
        assert wait_for(lambda: infer_ok(backend)) < 5
    finally:
        backend.close()
