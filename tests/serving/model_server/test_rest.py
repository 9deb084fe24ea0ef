"""V2 REST: tritonclient.http (binary tensor extension) and plain JSON requests."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from fastapi.testclient import TestClient

from imgclf.inference.predictor import Predictor
from imgclf.preprocessing import load_pixels
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.model_server.rest import create_rest_app
from imgclf.serving.model_server.server import ModelServer

COLORS = ["green", "red", "blue"]


@pytest.fixture
def base_url(model_server: ModelServer) -> str:
    return f"http://127.0.0.1:{model_server.http_port}"


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        yield client


@pytest.fixture
def pixels(tiny_bundle: Path, image_bytes: Callable[..., bytes]) -> np.ndarray:
    config = Predictor.from_bundle(tiny_bundle).preprocess_config
    return np.stack([load_pixels(image_bytes(c, seed=i), config) for i, c in enumerate(COLORS)])


def test_tritonclient_http_binary_top1_matches_predictor(
    model_server: ModelServer, tiny_bundle: Path, pixels: np.ndarray
) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{model_server.http_port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("colors")
        assert client.get_model_metadata("colors")["versions"] == ["1"]
        assert client.get_model_config("colors")["max_batch_size"] == 8
        tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)  # binary tensor extension (the default)
        outputs = [
            httpclient.InferRequestedOutput("probabilities"),
            httpclient.InferRequestedOutput("probabilities", class_count=1, binary_data=False),
        ]
        result = client.infer("colors", [tensor], outputs=outputs[:1])
        top = client.infer("colors", [tensor], outputs=outputs[1:])
    finally:
        client.close()
    predictor = Predictor.from_bundle(tiny_bundle)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), predictor.run_pixels(pixels), rtol=1e-5, atol=1e-6
    )
    labels = [str(row[0]).split(":")[2] for row in top.as_numpy("probabilities")]  # JSON: str
    assert labels == COLORS


def test_json_request_and_gzip_body(http: httpx.Client, pixels: np.ndarray) -> None:
    request = {
        "id": "42",
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.tolist(),  # nested lists are accepted as well as flat ones
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 3}}],
    }
    for content, headers in [
        (json.dumps(request).encode(), {}),
        (gzip.compress(json.dumps(request).encode()), {"Content-Encoding": "gzip"}),
    ]:
        response = http.post("/v2/models/colors/versions/1/infer", content=content, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["id"], body["model_version"]) == ("42", "1")
        (output,) = body["outputs"]
        assert output["datatype"] == "BYTES"
        assert output["shape"] == [3, 3]
        assert [output["data"][i * 3].split(":")[2] for i in range(3)] == COLORS


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/shoes/infer", {"inputs": []}, 404, "unknown model"),
        ("/v2/models/colors/versions/9/infer", {"inputs": []}, 404, "no version"),
        ("/v2/models/colors/infer", {"inputs": "x"}, 400, "inputs"),
        (
            "/v2/models/colors/infer",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3]}]},
            400,
            'neither "data"',
        ),
        (
            "/v2/models/colors/infer",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [1]}]},
            400,
            "must have shape",
        ),
        (
            "/v2/models/colors/infer",
            {"inputs": [{"name": "pixels", "datatype": "STRING", "shape": [1], "data": [1]}]},
            400,
            "not accepted",
        ),
        (
            "/v2/models/colors/infer",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [2], "data": [1, 300]}]},
            400,
            "cannot be read as UINT8",
        ),
        (
            "/v2/models/colors/infer",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [3], "data": [1, 3]}]},
            400,
            "do not fill",
        ),
    ],
)
def test_bad_requests_get_a_reason(
    http: httpx.Client, path: str, body: object, status: int, message: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


PIXELS = {"name": "pixels", "datatype": "UINT8", "shape": [1, 32, 32, 3], "data": [0] * 3072}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": [1]}, "inputs.0: Input should be a valid dictionary"),
        ({"inputs": [PIXELS], "outputs": [1]}, "outputs.0: Input should be a valid dictionary"),
        ({"inputs": [PIXELS], "outputs": "logits"}, "outputs: Input should be a valid list"),
        ({"inputs": [PIXELS], "parameters": 5}, "parameters: Input should be a valid dictionary"),
        ({"inputs": [{**PIXELS, "name": 7}]}, "inputs.0.name: Input should be a valid string"),
        ({"inputs": [{**PIXELS, "shape": [-1, 32, 32, 3]}]}, "greater than or equal to 0"),
        ({"inputs": [{**PIXELS, "shape": [2**64]}]}, "less than or equal to 9223372036854775807"),
        ({"inputs": [{**PIXELS, "shape": [1] * 33}]}, "at most 32 items"),
        (
            {"inputs": [{**PIXELS, "shape": [4294967296, 4294967296], "data": []}]},
            "0 values do not fill shape [4294967296, 4294967296] (18446744073709551616 values)",
        ),
        ({"inputs": [{**PIXELS, "shape": [0, 2**62, 2**62], "data": []}]}, "cannot be used"),
        (
            {"inputs": [{**PIXELS, "parameters": {"binary_data_size": -1}}]},
            "binary_data_size must be an integer",
        ),
        (
            {"inputs": [{**PIXELS, "parameters": {"binary_data_size": 10**30}}]},
            "binary_data_size must be an integer",
        ),
        ({"inputs": [PIXELS], "outputs": [{"name": "logits", "parameters": 3}]}, "outputs.0"),
    ],
)
def test_malformed_inference_requests_are_400_with_a_reason(
    http: httpx.Client, body: object, message: str
) -> None:
    response = http.post("/v2/models/colors/infer", json=body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, {}, "not valid JSON"),
        (b'{"inputs": [], "id": ' + b"9" * 5000 + b"}", {}, "not valid JSON"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "99"}, "at most the body's 14"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": b"\xb2"}, "header's length"),
        (b'{"inputs": []}', {"Inference-Header-Content-Length": "9" * 5000}, "header's length"),
    ],
)
def test_hostile_bodies_are_400_with_a_reason(
    http: httpx.Client, content: bytes, headers: dict[str, str | bytes], message: str
) -> None:
    response = http.post("/v2/models/colors/infer", content=content, headers=headers)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert len(response.content) < 2000


def test_not_json_and_oversized_bodies(http: httpx.Client, repository: Path) -> None:
    response = http.post("/v2/models/colors/infer", content=b"\xff\x00 not json")
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]

    models = ModelRepository(repository)
    models.poll()
    try:
        with TestClient(create_rest_app(models, max_body_bytes=1024)) as small:
            response = small.post("/v2/models/colors/infer", content=b"x" * 2048)
            assert response.status_code == 413
            assert "exceeds 1024 bytes" in response.json()["error"]
    finally:
        models.close()


def test_health_endpoints(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").status_code == 200
    assert http.get("/v2/models/colors/ready").status_code == 200
    assert http.get("/v2/models/colors/versions/2/ready").status_code == 503
    assert http.get("/v2").json()["name"] == "imgclf"
    meta = http.get("/v2/models/colors/versions/1").json()
    assert meta["inputs"][1] == {"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 3]}


def test_oversized_or_too_many_headers_get_431(model_server: ModelServer) -> None:
    """Issue #19: the model server's REST API caps headers as the REST service does."""
    base = f"http://127.0.0.1:{model_server.http_port}"
    for headers in ({"X-Big": "a" * 40_000}, {f"X-H{i}": "1" for i in range(150)}):
        assert httpx.get(f"{base}/v2/health/live", headers=headers).status_code == 431
    assert httpx.get(f"{base}/v2/health/live").status_code == 200
