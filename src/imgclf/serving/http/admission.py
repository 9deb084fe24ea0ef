"""Admission control: bound the inference requests in progress, refuse the rest before reading them.

Under overload the cheapest answer is the one given before any work is done. A FastAPI
dependency only runs after the request body has been received and parsed (multipart parsing,
JSON decoding), so a dependency-based check makes every refused request pay for its upload
and puts it behind the accepted ones on a saturated event loop. This pure ASGI middleware looks
only at the method and path, which are known when the request line arrives, and answers
503 + ``Retry-After`` without touching the body (the connection is closed, as the unread body
cannot be skipped). Accepted requests are counted until their response is sent, so the bound
covers receiving, decoding, queueing and inference.

Each client address (the connecting peer, or the address a trusted proxy names: this middleware
runs inside uvicorn's proxy-headers middleware) may have at most
``settings.max_requests_per_client`` of those requests in progress; beyond that it gets 429 +
``Retry-After`` at once, so one client (64 stalled uploads, say) cannot take the whole queue and
lock everyone else out with 503s.

When a SIGTERM's grace period runs out, uvicorn cancels the requests still in progress and would
answer them 500 Internal Server Error; here they get 503 + ``Retry-After`` instead, which says
what happened (this replica went away) and that the request can be sent again elsewhere.
"""

from __future__ import annotations

import asyncio
import re

from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.observability import (
    ROUTE_TEMPLATE_KEY,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    error_payload,
    send_json,
)

#: Answer given to a request cancelled when the shutdown grace period ran out.
SHUTDOWN_DETAIL = (
    "the service shut down before this request was finished (graceful shutdown period "
    "exceeded); retry on another replica"
)

#: POST paths that run the model, with the route template each is counted under in metrics.
INFERENCE_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/predict$"), "/predict"),
    (re.compile(r"^/predict/batch$"), "/predict/batch"),
    (re.compile(r"^/v2/models/[^/]+/infer$"), "/v2/models/{name}/infer"),
    (
        re.compile(r"^/v2/models/[^/]+/versions/[^/]+/infer$"),
        "/v2/models/{name}/versions/{version}/infer",
    ),
    (re.compile(r"^/v1/models/[^/]+:predict$"), "/v1/models/{name}:predict"),
    (
        re.compile(r"^/v1/models/[^/]+/versions/[^/]+:predict$"),
        "/v1/models/{name}/versions/{version}:predict",
    ),
)


def inference_route(scope: Scope) -> str | None:
    """The route template of a POST that decodes images and runs the model, else None."""
    if scope.get("method") != "POST":
        return None
    path = scope.get("path", "")
    return next((template for pattern, template in INFERENCE_ROUTES if pattern.match(path)), None)


class AdmissionMiddleware:
    """At most ``services.settings.queue_size`` inference requests in progress; 503 for the rest."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse at once when full; otherwise count the request until it is answered."""
        template = inference_route(scope) if scope["type"] == "http" else None
        if template is None:
            await self.app(scope, receive, send)
            return
        services = self.services
        client = _client_address(scope)
        refusal = self._refusal(client)
        if refusal is not None:
            status, detail = refusal
            scope[ROUTE_TEMPLATE_KEY] = template  # the router never sees this request
            payload = error_payload(scope.get("path", ""), detail)
            await send_json(send, status, payload, headers=[(b"retry-after", b"1")])
            return
        by_client = services.admitted_by_client
        by_client[client] = by_client.get(client, 0) + 1
        try:
            await self._admitted(scope, receive, send)
        finally:
            by_client[client] -= 1
            if not by_client[client]:
                del by_client[client]

    def _refusal(self, client: str) -> tuple[int, str] | None:
        """(status, detail) when the request must be refused now, else None."""
        services = self.services
        per_client = services.settings.max_requests_per_client
        if services.admitted_by_client.get(client, 0) >= per_client:
            return 429, (
                f"this client already has {per_client} requests in progress, the most one client "
                "may have; wait for their answers, then retry"
            )
        limit = services.settings.queue_size
        if services.admitted >= limit:
            return 503, (
                f"the service is at capacity ({services.admitted} requests in progress, limit "
                f"{limit}); retry after 1 s"
            )
        return None

    async def _admitted(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.services
        services.admitted += 1
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if not started:  # the server gave up on it: say so, instead of uvicorn's bare 500
                payload = error_payload(scope.get("path", ""), SHUTDOWN_DETAIL)
                await send_json(send, 503, payload, headers=[(b"retry-after", b"1")])
            raise
        finally:
            services.admitted -= 1


def _client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
