"""`imgclf serve --model-server grpc://...` end to end: the REST API before the model server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from imgclf.serving.http.app import create_app
from imgclf.serving.http.settings import ServeSettings


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
