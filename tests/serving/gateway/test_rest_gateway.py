"""`imgclf serve --model-server grpc://...` end to end: the REST API before the model server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from imgclf.serving.http.app import create_app
from imgclf.serving.http.settings import ServeSettings
from imgclf.serving.model_server.grpc_service import InferenceServicer


def settings(**fields: Any) -> ServeSettings:
    return ServeSettings(log_json=False, log_level="warning", **fields)


def predict(client: TestClient, image: bytes) -> Any:
    return client.post("/predict", files={"file": ("x.jpg", image, "image/jpeg")})


def test_gateway_answers_like_embedded_and_survives_the_model_server(
    grpc_servers: Any, tiny_bundle: Path, image_bytes: Callable[..., bytes]
) -> None:
    server, port = grpc_servers.start()
    images = [image_bytes(color, seed=i) for i, color in enumerate(["red", "green", "blue"])]
    gateway = create_app(settings(model_server_url=f"grpc://127.0.0.1:{port}"))
    embedded = create_app(settings(model=tiny_bundle))
    with TestClient(gateway) as remote, TestClient(embedded) as local:
        for image in images:
            got, want = predict(remote, image), predict(local, image)
            assert got.status_code == 200, got.text
            assert got.json()["class"] == want.json()["class"]
            assert got.json()["probability"] == pytest.approx(want.json()["probability"], abs=1e-5)
        assert [predict(remote, image).json()["class"] for image in images] == [
            "red",
            "green",
            "blue",
        ]
        assert remote.get("/model").json()["labels"] == ["red", "green", "blue"]
        assert remote.get("/ready").status_code == 200

        server.stop(0).wait()
        down = predict(remote, images[0])
        assert down.status_code == 503
        assert "unavailable" in down.json()["detail"]
        assert remote.get("/ready").status_code == 503

        grpc_servers.start(port=port)
        deadline = time.monotonic() + 10
        while remote.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "gateway did not become ready again"
            time.sleep(0.05)
        assert predict(remote, images[2]).json()["class"] == "blue"


class LeakyServicer(InferenceServicer):
    """Fails inference the way a proxy in front of a model server might, naming addresses."""

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.INTERNAL, "upstream ipv4:10.0.3.7:8001 reset the stream")


class SlowServicer(InferenceServicer):
    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        time.sleep(2)
        return super().ModelInfer(request, context)


@pytest.mark.parametrize(
    ("servicer", "stop", "status", "reason"),
    [
        (InferenceServicer, True, 503, "model server is unavailable"),
        (SlowServicer, False, 504, "model server did not answer"),
        (LeakyServicer, False, 502, "model server failed to answer"),
    ],
)
def test_gateway_errors_name_no_internal_address(
    grpc_servers: Any,
    image_bytes: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
    servicer: Any,
    stop: bool,
    status: int,
    reason: str,
) -> None:
    server, port = grpc_servers.start(servicer)
    gateway = create_app(
        settings(model_server_url=f"grpc://127.0.0.1:{port}", model_server_timeout_s=1)
    )
    with TestClient(gateway) as client:
        if stop:
            server.stop(0).wait()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="imgclf.serving.gateway.client"):
            response = predict(client, image_bytes("red"))
    assert response.status_code == status
    body = response.text
    assert reason in body
    for internal in ("127.0.0.1", str(port), "ipv4", "dns:", "grpc://", "10.0.3.7", "upstream"):
        assert internal not in body, f"{internal!r} leaked in {body}"
    logged = caplog.text  # ... while the log keeps what an operator needs
    assert f"dns:///127.0.0.1:{port}" in logged
    assert "10.0.3.7" in logged or status != 502
