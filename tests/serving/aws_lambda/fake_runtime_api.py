"""A small stand-in for the AWS Lambda Runtime API, so a real container image can be invoked.

It serves the endpoints the runtime interface client calls (API version 2018-06-01): ``GET
/runtime/invocation/next`` hands out queued events with the headers Lambda sends, and the
``response`` and ``error`` endpoints record what the function returned.
"""

from __future__ import annotations

import http.server
import json
import queue
import threading
import time
import uuid
from typing import Any

PREFIX = "/2018-06-01/runtime"


class FakeRuntimeApi:
    """Queue events, run the server on 127.0.0.1, collect responses by request id."""

    def __init__(self) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.responses: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.init_errors: list[Any] = []
        self._done = threading.Condition()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        """``host:port`` for ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def __enter__(self) -> FakeRuntimeApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def invoke(self, event: Any) -> str:
        """Queue an event; return its request id."""
        request_id = str(uuid.uuid4())
        self.events.put((request_id, event))
        return request_id

    def wait(self, request_ids: list[str], timeout: float) -> None:
        """Block until every request id has a response or an error (or an init error occurs)."""
        deadline = time.monotonic() + timeout
        with self._done:
            while not self.init_errors and not all(
                r in self.responses or r in self.errors for r in request_ids
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer for {request_ids} within {timeout} s")
                self._done.wait(left)

    def _record(self, kind: str, request_id: str, payload: Any) -> None:
        with self._done:
            if kind == "response":
                self.responses[request_id] = payload
            elif kind == "error":
                self.errors[request_id] = payload
            else:
                self.init_errors.append(payload)
            self._done.notify_all()

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != f"{PREFIX}/invocation/next":
                    self._reply(404, {"errorMessage": f"unknown path {self.path}"})
                    return
                request_id, event = api.events.get()  # long poll, as the real API does
                self._reply(
                    200,
                    event,
                    {
                        "Lambda-Runtime-Aws-Request-Id": request_id,
                        "Lambda-Runtime-Deadline-Ms": str(int(time.time() * 1000) + 60_000),
                        "Lambda-Runtime-Invoked-Function-Arn": (
                            "arn:aws:lambda:us-east-1:123456789012:function:imgclf-classify"
                        ),
                        "Lambda-Runtime-Trace-Id": "Root=1-5e66d96f-7491f09xmpl79d18acf3d050",
                    },
                )

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                payload = json.loads(raw) if raw else None
                parts = self.path.removeprefix(PREFIX).strip("/").split("/")
                if parts[:2] == ["init", "error"]:
                    api._record("init", "", payload)
                elif (
                    len(parts) == 3
                    and parts[0] == "invocation"
                    and parts[2]
                    in {
                        "response",
                        "error",
                    }
                ):
                    api._record(parts[2], parts[1], payload)
                else:
                    self._reply(404, {"errorMessage": f"unknown path {self.path}"})
                    return
                self._reply(202, {"status": "OK"})

            def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
