"""Invoke the Lambda handler locally through the emulator's invoke URL, on any base image.

AWS base images bring the Runtime Interface Emulator (RIE), which answers
``POST /2015-03-31/functions/function/invocations`` on port 8080 by running the function once. Other
base images (``--build-arg BASE_IMAGE=python:3.11-slim``) have no RIE; there the image's entrypoint
starts this small server instead, so one command works everywhere::

    docker run --rm -p 127.0.0.1:9000:8080 imgclf-lambda
    curl -s http://127.0.0.1:9000/2015-03-31/functions/function/invocations -d '{"url": "..."}'

Like the RIE (and Lambda's Invoke API), the request body is the event and the answer is whatever
the handler returned, with HTTP 200; a handler exception is answered with 200, the
``X-Amz-Function-Error: Unhandled`` header and ``{"errorMessage", "errorType"}``. A body that is
not JSON never reaches the handler (Lambda refuses such payloads too): it gets HTTP 400 and the
handler's error shape, ``{"detail": ..., "statusCode": 400}``; headers over 32 KiB in all, or more
than 100 of them, get 431. One event runs at a time, as in one
Lambda execution environment. Only the standard library is used.

Run directly with ``python -m imgclf.serving.aws_lambda.local_invoke [HANDLER] [--host H]
[--port P]``; the handler is ``module.function`` (default: imgclf's).
"""

from __future__ import annotations

import argparse
import http.server
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgclf.serving.aws_lambda.settings import LAMBDA_SYNC_PAYLOAD_LIMIT
from imgclf.serving.header_limits import DEFAULT_MAX_HEADER_BYTES, header_problem
from imgclf.serving.json_input import JSONBodyError, parse_json

__all__ = ["INVOKE_PATH", "LocalContext", "load_handler", "main", "make_server"]

#: The invoke URL's path, as the RIE serves it (the function is always called "function").
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
DEFAULT_HANDLER = "imgclf.serving.aws_lambda.handler.handler"
#: Seconds a client may take to send its request; a stalled upload cannot hold the server.
BODY_TIMEOUT_S = 30.0

Handler = Callable[[Any, Any], Any]
_REFUSED = object()  # a request answered with a 4xx before reaching the handler


@dataclass
class LocalContext:
    """The attributes of Lambda's context object that handlers read.

    Values come from the variables Lambda (and the RIE) set: ``AWS_LAMBDA_FUNCTION_NAME``,
    ``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``, ``AWS_LAMBDA_FUNCTION_TIMEOUT`` (seconds).
    """

    function_name: str = "function"
    memory_limit_in_mb: str = "3008"
    timeout_s: float = 300.0
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/function"
    log_stream_name: str = "local"
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_s

    @property
    def invoked_function_arn(self) -> str:
        """An ARN of the shape Lambda gives (account and region are placeholders)."""
        return f"arn:aws:lambda:us-east-1:012345678912:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout."""
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str]) -> LocalContext:
        """A fresh context (new request id, full timeout) configured from the environment."""
        name = env.get("AWS_LAMBDA_FUNCTION_NAME", "function")
        return cls(
            function_name=name,
            memory_limit_in_mb=env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "3008"),
            timeout_s=float(env.get("AWS_LAMBDA_FUNCTION_TIMEOUT", "300")),
            log_group_name=f"/aws/lambda/{name}",
        )


def load_handler(name: str) -> Handler:
    """Import a handler named ``package.module.function``, as the Lambda runtime does.

    Raises:
        ValueError: ``name`` has no module part, or the attribute is not callable.
        ImportError: the module cannot be imported.
    """
    module_name, _, attribute = name.rpartition(".")
    if not module_name:
        raise ValueError(f"handler {name!r} must be module.function")
    handler = getattr(importlib.import_module(module_name), attribute, None)
    if not callable(handler):
        raise ValueError(f"{module_name} has no callable {attribute!r}")
    return handler  # type: ignore[no-any-return]


def make_server(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 8080,
    body_timeout_s: float = BODY_TIMEOUT_S,
) -> http.server.ThreadingHTTPServer:
    """An HTTP server that answers the invoke URL by calling ``handler`` (not started yet).

    Each connection has its own thread and ``body_timeout_s`` per read, so a client that stalls
    its upload holds only its own connection; events then run one at a time.
    """
    lock = threading.Lock()

    class InvokeRequestHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = body_timeout_s
        server_version = "imgclf-lambda-local"

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != INVOKE_PATH:
                self.close_connection = True  # its body is never read
                self._send(404, {"detail": f"not found; POST the event to {INVOKE_PATH}"})
                return
            event = self._read_event()
            if event is _REFUSED:
                return
            context = LocalContext.from_env(os.environ)
            with lock:  # one event at a time, like one execution environment
                try:
                    answer = handler(event, context)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    error = {"errorMessage": str(exc), "errorType": type(exc).__name__}
                    self._send(200, error, {"X-Amz-Function-Error": "Unhandled"})
                    return
            self._send(200, answer)

        def parse_request(self) -> bool:
            """Parse as the standard library does (431 past 100 headers), then cap the total."""
            if not super().parse_request():
                return False
            problem = header_problem(self.headers.items(), DEFAULT_MAX_HEADER_BYTES, 100)
            if problem is None:
                return True
            self._fail(431, problem)
            return False

        def do_GET(self) -> None:
            self.close_connection = True
            self._send(405, {"detail": "use POST with the event as JSON"}, {"Allow": "POST"})

        def do_PUT(self) -> None:
            self.do_GET()

        def do_DELETE(self) -> None:
            self.do_GET()

        def _read_event(self) -> Any:
            """The JSON event of the request body, or ``_REFUSED`` after answering a 4xx."""
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self._fail(411, "send the event with a Content-Length header")
                return _REFUSED
            if int(length) > LAMBDA_SYNC_PAYLOAD_LIMIT:
                self._fail(413, f"the event is over Lambda's {LAMBDA_SYNC_PAYLOAD_LIMIT} bytes")
                return _REFUSED
            try:
                raw = self.rfile.read(int(length))
            except TimeoutError:
                self.close_connection = True
                return _REFUSED
            try:
                return parse_json(raw or b"{}")
            except JSONBodyError as exc:  # also too deep, or a number over 4300 digits
                self._fail(400, f"the request body is not JSON ({exc}); send the event as JSON")
                return _REFUSED

        def _fail(self, status: int, detail: str) -> None:
            self.close_connection = True
            self._send(status, {"detail": detail, "statusCode": status})

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body, default=str).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the handler logs every request as a JSON line

    server = http.server.ThreadingHTTPServer((host, port), InvokeRequestHandler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the invoke URL until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m imgclf.serving.aws_lambda.local_invoke", description=__doc__.splitlines()[0]
    )
    parser.add_argument("handler", nargs="?", default=DEFAULT_HANDLER, help="module.function")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (the RIE's: 8080)")
    args = parser.parse_args(argv)
    server = make_server(load_handler(args.handler), args.host, args.port)
    print(
        f"no Lambda Runtime API or emulator: serving {args.handler} at "
        f"POST http://{args.host}:{server.server_address[1]}{INVOKE_PATH}",
        file=sys.stderr,
        flush=True,
    )
    # As PID 1 of a container, Python would ignore SIGTERM: `docker stop` must not wait 10 s.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
