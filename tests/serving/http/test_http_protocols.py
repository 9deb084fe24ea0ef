"""KServe V2 (Open Inference Protocol) and TF Serving REST paths over the real tiny bundle."""

from __future__ import annotations

import base64
from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

ImageBytes = Callable[..., bytes]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bytes_input(images: list[bytes]) -> dict[str, object]:
    return {
        "name": "image",
        "shape": [len(images)],
        "datatype": "BYTES",
        "data": [_b64(i) for i in images],
    }


def test_v2_health_and_server_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] == "imgclf"
    assert "classification" in server["extensions"]


def test_v2_model_metadata_and_readiness(client: TestClient) -> None:
    meta = client.get("/v2/models/colors").json()
    assert meta["name"] == "colors"
    assert meta["versions"] == ["1"]
    assert {"name": "image", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 3]} in meta["inputs"]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["labels"] == ["red", "green", "blue"]
    assert client.get("/v2/models/colors/versions/1").status_code == 200
    assert client.get("/v2/models/colors/ready").json() == {"name": "colors", "ready": True}


@pytest.mark.parametrize(
    "path",
    ["/v2/models/other", "/v2/models/other/ready", "/v2/models/colors/versions/9"],
)
def test_v2_unknown_model_is_404_with_error_field(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == body["detail"]
    assert "'colors'" in body["detail"]


def test_v2_infer_bytes_returns_probabilities(client: TestClient, image_bytes: ImageBytes) -> None:
    images = [image_bytes("red"), image_bytes("blue", fmt="PNG")]
    response = client.post(
        "/v2/models/colors/infer", json={"id": "req-1", "inputs": [_bytes_input(images)]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "req-1"
    assert body["model_name"] == "colors"
    assert body["model_version"] == "1"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities"
    assert output["datatype"] == "FP32"
    assert output["shape"] == [2, 3]
    probs = np.asarray(output["data"]).reshape(2, 3)
    assert probs.argmax(axis=1).tolist() == [0, 2]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_v2_classification_extension(client: TestClient, image_bytes: ImageBytes) -> None:
    body = {
        "inputs": [_bytes_input([image_bytes("green")])],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
    }
    output = client.post("/v2/models/colors/infer", json=body).json()["outputs"][0]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [1, 2]
    score, index, label = output["data"][0].split(":")
    assert (index, label) == ("1", "green")
    assert float(score) > 0.9


def test_v2_uint8_pixels_match_bytes_path(client: TestClient, image_bytes: ImageBytes) -> None:
    pixels = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    pixels[..., 2] = 220
    body = {
        "inputs": [
            {
                "name": "pixels",
                "shape": [1, 32, 32, 3],
                "datatype": "UINT8",
                "data": pixels.ravel().tolist(),
            }
        ]
    }
    response = client.post("/v2/models/colors/versions/1/infer", json=body)
    assert response.status_code == 200, response.text
    probs = response.json()["outputs"][0]["data"]
    assert int(np.argmax(probs)) == 2


@pytest.mark.parametrize(
    "tensor, fragment",
    [
        ({"name": "image", "shape": [2], "datatype": "BYTES", "data": ["AAAA"]}, "shape"),
        ({"name": "image", "shape": [1], "datatype": "BYTES", "data": [5]}, "base64 strings"),
        ({"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}, "not accepted"),
        (
            {"name": "p", "shape": [1, 2, 2, 3], "datatype": "UINT8", "data": [0] * 12},
            "[N, 32, 32, 3]",
        ),
        (
            {"name": "p", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [300] * 3072},
            "[0, 255]",
        ),
        ({"name": "image", "shape": [-1], "datatype": "BYTES", "data": []}, "negative"),
        ({"name": "p", "shape": [-1, 32, 32, 3], "datatype": "UINT8", "data": []}, "1 <= N"),
        # 2**64 values: numpy's int64 product wraps to 0, which "matched" the empty data
        ({"name": "p", "shape": [2**32, 2**32], "datatype": "UINT8", "data": []}, "shape"),
        ({"name": "p", "shape": [0, 2**31, 2**31, 3], "datatype": "UINT8", "data": []}, "1 <= N"),
        ({"name": "i", "shape": [2**32, 2**32], "datatype": "BYTES", "data": []}, "shape"),
        (
            {"name": "p", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [[0], 0]},
            "regular array",
        ),
        (
            {"name": "p", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [2**70] * 3072},
            "[0, 255]",
        ),
        (
            {"name": "p", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [True] * 3072},
            "[0, 255]",
        ),
        (
            {"name": "p", "shape": [99, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072},
            "1 <= N <= 32",
        ),
        ({"name": "image", "shape": [1], "datatype": "BYTES", "data": ["!!"]}, "base64"),
    ],
)
def test_v2_bad_tensors_are_400(
    client: TestClient, tensor: dict[str, object], fragment: str
) -> None:
    response = client.post("/v2/models/colors/infer", json={"inputs": [tensor]})
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]


def test_v2_unknown_output_and_bad_image(client: TestClient, image_bytes: ImageBytes) -> None:
    unknown = client.post(
        "/v2/models/colors/infer",
        json={"inputs": [_bytes_input([image_bytes()])], "outputs": [{"name": "logits"}]},
    )
    assert unknown.status_code == 400
    assert "unknown output" in unknown.json()["detail"]
    corrupt = client.post("/v2/models/colors/infer", json={"inputs": [_bytes_input([b"junk"])]})
    assert corrupt.status_code == 415


def test_v2_malformed_request_is_422(client: TestClient) -> None:
    response = client.post("/v2/models/colors/infer", json={"inputs": "nope"})
    assert response.status_code == 422
    assert "inputs" in response.json()["detail"]


@pytest.mark.parametrize(
    "instance",
    [lambda b: {"b64": b}, lambda b: {"image_bytes": {"b64": b}}],
)
def test_tf_serving_predict(
    client: TestClient, image_bytes: ImageBytes, instance: Callable[[str], object]
) -> None:
    body = {"instances": [instance(_b64(image_bytes(c))) for c in ("blue", "red")]}
    response = client.post("/v1/models/colors:predict", json=body)
    assert response.status_code == 200, response.text
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (2, 3)
    assert predictions.argmax(axis=1).tolist() == [2, 0]


def test_tf_serving_columnar_inputs(client: TestClient, image_bytes: ImageBytes) -> None:
    body = {"signature_name": "serving_default", "inputs": [{"b64": _b64(image_bytes("green"))}]}
    outputs = client.post("/v1/models/colors:predict", json=body).json()["outputs"]
    assert int(np.argmax(outputs[0])) == 1


def test_tf_serving_status_metadata_and_errors(client: TestClient) -> None:
    status = client.get("/v1/models/colors").json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    meta = client.get("/v1/models/colors/metadata").json()
    assert meta["metadata"]["labels"] == ["red", "green", "blue"]
    missing = client.post("/v1/models/shoes:predict", json={"instances": [{"b64": "AAAA"}]})
    assert missing.status_code == 404
    assert "Servable not found" in missing.json()["error"]
    bad = client.post("/v1/models/colors:predict", json={"instances": [{"x": 1}]})
    assert bad.status_code == 400
    assert "instance 0" in bad.json()["error"]
    both = client.post("/v1/models/colors:predict", json={"instances": [1], "inputs": [1]})
    assert both.status_code == 400
