"""The native REST API over the real tiny colour bundle: inputs, response shape, health, metrics."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from http_fakes import ClientFactory, FakeBackend

ImageBytes = Callable[..., bytes]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_predict_multipart_answers_the_documented_shape(
    client: TestClient, image_bytes: ImageBytes
) -> None:
    response = client.post(
        "/predict", files={"file": ("x.jpg", image_bytes("green"), "image/jpeg")}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"class", "probability", "top_k", "model"}
    assert body["class"] == "green"
    assert body["probability"] > 0.9
    assert body["model"] == {"name": "colors", "version": "1"}
    assert [set(entry) for entry in body["top_k"]] == [{"class", "prob"}] * 3
    assert body["top_k"][0] == {"class": "green", "prob": body["probability"]}
    probs = [entry["prob"] for entry in body["top_k"]]
    assert probs == sorted(probs, reverse=True)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("color", ["red", "green", "blue"])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_predict_base64_json_every_format(
    client: TestClient, image_bytes: ImageBytes, color: str, fmt: str
) -> None:
    response = client.post("/predict", json={"image": _b64(image_bytes(color, fmt=fmt))})
    assert response.status_code == 200, response.text
    assert response.json()["class"] == color


def test_predict_accepts_data_urls_and_raw_bytes(
    client: TestClient, image_bytes: ImageBytes
) -> None:
    data_url = "data:image/png;base64," + _b64(image_bytes("blue", fmt="PNG"))
    assert client.post("/predict", json={"image": data_url}).json()["class"] == "blue"
    raw = client.post(
        "/predict", content=image_bytes("red"), headers={"Content-Type": "image/jpeg"}
    )
    assert raw.json()["class"] == "red"


@pytest.mark.parametrize("top_k, expected", [(1, 1), (2, 2), (50, 3)])
def test_top_k_is_selectable_and_capped_at_the_classes(
    client: TestClient, image_bytes: ImageBytes, top_k: int, expected: int
) -> None:
    response = client.post(f"/predict?top_k={top_k}", json={"image": _b64(image_bytes())})
    assert len(response.json()["top_k"]) == expected


@pytest.mark.parametrize("top_k", ["0", "-1", "abc", "1001"])
def test_bad_top_k_is_422_with_a_reason(
    client: TestClient, image_bytes: ImageBytes, top_k: str
) -> None:
    response = client.post(f"/predict?top_k={top_k}", json={"image": _b64(image_bytes())})
    assert response.status_code == 422
    assert "top_k" in response.json()["detail"]


def test_default_top_k_comes_from_settings(
    make_client: ClientFactory, image_bytes: ImageBytes
) -> None:
    client = make_client(default_top_k=2)
    assert len(client.post("/predict", json={"image": _b64(image_bytes())}).json()["top_k"]) == 2


def test_batch_json_and_multipart_keep_order(client: TestClient, image_bytes: ImageBytes) -> None:
    colors = ["red", "blue", "green", "blue"]
    body = {"images": [{"image": _b64(image_bytes(c))} for c in colors]}
    response = client.post("/predict/batch?top_k=1", json=body)
    assert response.status_code == 200
    result = response.json()
    assert [p["class"] for p in result["predictions"]] == colors
    assert result["model"] == {"name": "colors", "version": "1"}
    assert all(len(p["top_k"]) == 1 for p in result["predictions"])
    files = [("files", (f"{c}.png", image_bytes(c, fmt="PNG"), "image/png")) for c in colors]
    multipart = client.post("/predict/batch", files=files)
    assert [p["class"] for p in multipart.json()["predictions"]] == colors


def test_batch_names_the_bad_image(client: TestClient, image_bytes: ImageBytes) -> None:
    body = {"images": [{"image": _b64(image_bytes())}, {"image": _b64(b"not an image")}]}
    response = client.post("/predict/batch", json=body)
    assert response.status_code == 415
    assert response.json()["detail"].startswith("image 1:")


def test_batch_size_limit(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    client = make_client(max_batch_images=2)
    body = {"images": [{"image": _b64(image_bytes())}] * 3}
    response = client.post("/predict/batch", json=body)
    assert response.status_code == 400
    assert "at most 2" in response.json()["detail"]


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({}, "exactly one of 'url' or 'image'"),
        ({"url": "http://a.example/x.jpg", "image": "AAAA"}, "exactly one"),
        ({"image": 5}, "image"),
        ({"picture": "AAAA"}, "picture"),
        ({"image": "not base64 !!"}, "not valid base64"),
        ([1, 2], "body"),
    ],
)
def test_malformed_json_bodies_get_400_with_a_reason(
    client: TestClient, body: object, fragment: str
) -> None:
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert fragment in response.json()["detail"]


def test_invalid_json_syntax(client: TestClient) -> None:
    response = client.post(
        "/predict", content=b'{"image": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]


def test_multipart_without_file_field(client: TestClient) -> None:
    response = client.post("/predict", data={"other": "x"}, files={"x": ("a", b"b", "text/plain")})
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_health_ready_and_model(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    model = client.get("/model").json()
    assert model == {
        "name": "colors",
        "version": "1",
        "labels": ["red", "green", "blue"],
        "input_size": 32,
    }


def test_readiness_follows_the_backend(make_client: ClientFactory) -> None:
    backend = FakeBackend(ready=False)
    client = make_client(backend=backend)
    response = client.get("/ready")
    assert response.status_code == 503
    assert response.json() == {"detail": "model not ready"}
    assert client.get("/health").status_code == 200
    backend.ready = True
    assert client.get("/ready").status_code == 200


def test_backend_failure_is_503_not_500(
    make_client: ClientFactory, image_bytes: ImageBytes
) -> None:
    client = make_client(backend=FakeBackend(fail=True))
    response = client.post("/predict", json={"image": _b64(image_bytes())})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    detail = response.json()["detail"]
    assert "model server is unavailable" in detail
    assert "10.0.0.1" not in detail and "grpc://" not in detail  # internal addresses: log only
    assert response.headers["x-request-id"] in detail  # ... where this id finds them


def test_every_503_says_when_to_retry(make_client: ClientFactory) -> None:
    backend = FakeBackend(ready=False)
    client = make_client(backend=backend)
    for path in ("/ready", "/v2/health/ready", "/v2/models/fake/ready"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.headers["retry-after"] == "1", path


def test_request_id_is_echoed_or_generated(client: TestClient) -> None:
    given = client.get("/health", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = client.get("/health", headers={"X-Request-ID": "bad id with spaces <script>"})
    assert len(made.headers["x-request-id"]) == 32
    assert made.headers["x-request-id"] != client.get("/health").headers["x-request-id"]


def test_unknown_route_and_method_are_json(client: TestClient) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found"}
    wrong = client.get("/predict")
    assert wrong.status_code == 405
    assert "detail" in wrong.json()


def test_metrics_count_requests_batches_and_model(
    client: TestClient, image_bytes: ImageBytes
) -> None:
    for _ in range(3):
        client.post("/predict", json={"image": _b64(image_bytes())})
    client.post("/predict", json={"image": "AAAA"})
    text = client.get("/metrics").text
    assert 'imgclf_http_requests_total{method="POST",route="/predict",status="200"} 3.0' in text
    assert 'imgclf_http_requests_total{method="POST",route="/predict",status="415"} 1.0' in text
    assert 'imgclf_http_request_duration_seconds_count{method="POST",route="/predict"} 4.0' in text
    assert "imgclf_batch_size_count" in text
    assert "imgclf_queue_depth 0.0" in text
    assert 'imgclf_model_info{labels="3",name="colors",version="1"} 1.0' in text
    assert "imgclf_images_classified_total 3.0" in text


def test_access_logs_are_json_with_request_id_and_no_image_content(
    client: TestClient, image_bytes: ImageBytes, caplog: pytest.LogCaptureFixture
) -> None:
    from imgclf.serving.http.observability import JsonLogFormatter

    payload = _b64(image_bytes())
    with caplog.at_level(logging.INFO, logger="imgclf.access"):
        client.post("/predict", json={"image": payload}, headers={"X-Request-ID": "req-42"})
    records = [r for r in caplog.records if r.name == "imgclf.access"]
    assert records
    line = JsonLogFormatter().format(records[-1])
    entry = json.loads(line)
    assert entry["request_id"] == "req-42"
    assert entry["route"] == "/predict"
    assert entry["status"] == 200
    assert entry["duration_ms"] > 0
    assert payload[:40] not in line


def test_openapi_documents_every_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    assert {
        "/predict",
        "/predict/batch",
        "/health",
        "/ready",
        "/metrics",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/infer",
        "/v1/models/{name}:predict",
    } <= paths
    content = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert client.get("/docs").status_code == 200
