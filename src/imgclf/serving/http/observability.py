"""Request ids, access logs as JSON lines, Prometheus request metrics, body-size and -time caps.

One pure ASGI middleware does all of these, so each request is timed once and every log line it
causes carries its request id (``X-Request-ID`` is taken from the client when it looks sane, or
made up, and always echoed back). Logs describe requests, never their content: no image bytes,
no base64, no URLs from bodies.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException

from imgclf.serving.http.metrics import ServiceMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = "x-request-id"
#: Paths of the KServe V2 and TF Serving protocols, whose clients expect an ``"error"`` field.
PROTOCOL_PREFIXES = ("/v2", "/v1/")
#: Status recorded for a request whose client went away before it was answered (nginx's 499).
CLIENT_CLOSED_REQUEST = 499
#: Scope key a middleware sets to name the route of a request it answers before routing.
ROUTE_TEMPLATE_KEY = "imgclf.route_template"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_logger = logging.getLogger("imgclf.access")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and extra fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", *, json_lines: bool = True) -> None:
    """Send all logs (imgclf and uvicorn) to stderr, as JSON lines or plain text."""
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # replaced by imgclf.access


class PayloadTooLargeError(HTTPException):
    """The request body is larger than the configured cap."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit:,} bytes; send less data")


class BodyTimeoutError(HTTPException):
    """The request body did not arrive in time (a stalled or very slow upload)."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {limit_s:g} s; send it again, faster or "
            "smaller",
            headers={"Connection": "close"},  # the rest of the body is never read
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestContextMiddleware:
    """Request ids, body caps, access log and request metrics for every HTTP request.

    The body caps: at most ``max_body_bytes`` (413), received within ``body_timeout_s`` of the
    request's headers (408). Without the deadline a client announcing a larger
    ``Content-Length`` than it sends holds its admission slot for as long as it keeps the
    connection open; enough of them lock every other client out.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        body_timeout_s: float = 15.0,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, REQUEST_ID_HEADER.encode())
        request_id = given if given and _REQUEST_ID_OK.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        try:
            await self._handle(scope, receive, send, request_id, status)
        finally:
            self.metrics.in_flight.dec()
            self._record(scope, status["code"], time.perf_counter() - start)
            request_id_var.reset(token)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, status: dict[str, int]
    ) -> None:
        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            detail = str(PayloadTooLargeError(self.max_body_bytes).detail)
            await send_json(send_with_id, 413, error_payload(scope.get("path", ""), detail))
            return
        await self.app(scope, self._capped(receive), send_with_id)

    def _capped(self, receive: Receive) -> Receive:
        received = 0
        limit = self.max_body_bytes
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        complete = False

        async def capped_receive() -> Message:
            nonlocal received, complete
            if complete:  # after the body, the app may wait for a disconnect: not bounded
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeoutError(self.body_timeout_s) from None
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(limit)
            return message

        return capped_receive

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or scope.get(ROUTE_TEMPLATE_KEY) or "unmatched"
        method = scope.get("method", "")
        self.metrics.requests.labels(template, method, str(status)).inc()
        self.metrics.latency.labels(template, method).observe(seconds)
        client = scope.get("client")
        access_logger.info(
            "%s %s %d",
            method,
            template,
            status,
            extra={
                "method": method,
                "path": scope.get("path", ""),
                "route": template,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client": client[0] if client else None,
                "request_id": request_id_var.get(),
            },
        )


def error_payload(path: str, detail: str) -> dict[str, str]:
    """The JSON error body: ``{"detail": ...}``, plus ``"error"`` on the V2 and TF Serving paths."""
    if path.startswith(PROTOCOL_PREFIXES):
        return {"detail": detail, "error": detail}
    return {"detail": detail}


async def send_json(
    send: Send,
    status: int,
    payload: dict[str, str],
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Answer with a JSON body and close the connection (for requests whose body is unread)."""
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
