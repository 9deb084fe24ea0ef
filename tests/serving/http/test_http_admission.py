"""Admission control at the ASGI level: refusals happen before the body is read."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from imgclf.serving.http.admission import AdmissionMiddleware, inference_route
from imgclf.serving.http.dependencies import Services
from imgclf.serving.http.observability import ROUTE_TEMPLATE_KEY
from imgclf.serving.http.settings import ServeSettings


def _services(queue_size: int) -> Services:
    settings = ServeSettings(queue_size=queue_size)
    return Services.from_settings(settings)


class _Inner:
    """The wrapped app: reads the whole body, records how many requests were inside at once."""

    def __init__(self, services: Services, hold: asyncio.Event | None = None) -> None:
        self.services = services
        self.hold = hold
        self.seen_admitted: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.seen_admitted.append(self.services.admitted)
        while (await receive()).get("more_body"):
            pass
        if self.hold is not None:
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _scope(path: str, method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": []}


async def _call(app: Any, scope: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Run one request; return the messages sent and how often the body was asked for."""
    sent: list[dict[str, Any]] = []
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, reads


def test_full_service_refuses_without_reading_the_body() -> None:
    services = _services(queue_size=1)
    hold = asyncio.Event()
    inner = _Inner(services, hold)
    app = AdmissionMiddleware(inner, services=services)

    async def scenario() -> None:
        first = asyncio.create_task(_call(app, _scope("/predict")))
        await asyncio.sleep(0.01)
        assert services.admitted == 1
        scope = _scope("/v2/models/clothing/infer")
        sent, reads = await _call(app, scope)
        assert reads == 0  # refused from the request line alone
        start, body = sent
        assert start["status"] == 503
        headers = dict(start["headers"])
        assert headers[b"retry-after"] == b"1"
        assert headers[b"connection"] == b"close"
        payload = json.loads(body["body"])
        assert "at capacity" in payload["detail"]
        assert payload["error"] == payload["detail"]  # the V2 protocol's error field
        assert scope[ROUTE_TEMPLATE_KEY] == "/v2/models/{name}/infer"
        hold.set()
        (sent, reads) = await first
        assert sent[0]["status"] == 200 and reads == 1

    asyncio.run(scenario())
    assert services.admitted == 0  # released after the answer
    assert inner.seen_admitted == [1]


def test_other_routes_are_never_counted_or_refused() -> None:
    services = _services(queue_size=1)
    services.admitted = 1  # full
    app = AdmissionMiddleware(_Inner(services), services=services)
    for scope in (_scope("/health", "GET"), _scope("/metrics", "GET"), _scope("/predict", "GET")):
        sent, _ = asyncio.run(_call(app, scope))
        assert sent[0]["status"] == 200
    assert services.admitted == 1


def test_slot_is_released_when_the_app_fails() -> None:
    services = _services(queue_size=2)

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    app = AdmissionMiddleware(failing, services=services)
    with pytest.raises(RuntimeError):
        asyncio.run(_call(app, _scope("/predict")))
    assert services.admitted == 0


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("POST", "/predict", "/predict"),
        ("POST", "/predict/batch", "/predict/batch"),
        ("POST", "/v2/models/m/infer", "/v2/models/{name}/infer"),
        ("POST", "/v2/models/m/versions/3/infer", "/v2/models/{name}/versions/{version}/infer"),
        ("POST", "/v1/models/m:predict", "/v1/models/{name}:predict"),
        ("POST", "/v1/models/m/versions/1:predict", "/v1/models/{name}/versions/{version}:predict"),
        ("GET", "/predict", None),
        ("POST", "/predict/other", None),
        ("POST", "/v2/models/m/ready", None),
    ],
)
def test_inference_routes(method: str, path: str, template: str | None) -> None:
    assert inference_route(_scope(path, method)) == template


def test_every_inference_route_is_under_admission() -> None:
    """Each POST route of the API (all of them run the model) is recognised, as its template."""
    from imgclf.serving.http.app import create_app

    paths = create_app(ServeSettings()).openapi()["paths"]
    posts = [path for path, operations in paths.items() if "post" in operations]
    assert len(posts) == 6
    for template in posts:
        path = template.replace("{name}", "clothing").replace("{version}", "2")
        assert inference_route(_scope(path)) == template
