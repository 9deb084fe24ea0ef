"""TF Serving's REST API on ``imgclf serve``: raw-pixel instances, the CIFAR client's exact request.

The CIFAR system's client writes ``{"instances": [<32x32x3 floats in [0, 1]>]}`` to a file and
runs ``curl -X POST http://localhost:8501/v1/models/image_classifier:predict -d @test_data.json``
(so the body arrives as application/x-www-form-urlencoded). These tests send exactly that, and
check that raw pixels get the same probabilities as the same image encoded as PNG on /predict.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from http_fakes import ClientFactory
from PIL import Image
from test_http_server import Server, wait_ready

from imgtools import COLORS, make_image

FORM = {"Content-Type": "application/x-www-form-urlencoded"}  # what curl -d sends


def _photo(color: str = "blue", size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.asarray(make_image(COLORS[color], size, seed=3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _predict_png(client: TestClient, pixels: np.ndarray) -> list[float]:
    files = {"file": ("x.png", _png(pixels), "image/png")}
    response = client.post("/predict", files=files, params={"top_k": 1000})
    assert response.status_code == 200, response.text
    scores = {item["class"]: item["prob"] for item in response.json()["top_k"]}
    labels = client.get("/v1/models/colors/metadata").json()["metadata"]["labels"]
    return [scores[label] for label in labels]


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda p: (p / 255.0).tolist(), id="floats-0-1"),
        pytest.param(lambda p: p.astype(int).tolist(), id="uint8-integers"),
        pytest.param(lambda p: p.astype(float).tolist(), id="floats-0-255"),
    ],
)
def test_raw_pixels_get_the_probabilities_of_the_same_png(
    client: TestClient, encode: Callable[[np.ndarray], object]
) -> None:
    pixels = _photo("blue")
    body = json.dumps({"instances": [encode(pixels)]})
    response = client.post("/v1/models/colors:predict", content=body, headers=FORM)
    assert response.status_code == 200, response.text
    (row,) = response.json()["predictions"]
    np.testing.assert_allclose(row, _predict_png(client, pixels), atol=2e-4)


def test_any_size_columnar_and_mixed_instances(client: TestClient) -> None:
    green = _photo("green", (70, 50))
    red_b64 = base64.b64encode(_png(_photo("red"))).decode()
    body = {"inputs": {"images": [(green / 255.0).tolist(), {"b64": red_b64}]}}
    response = client.post("/v1/models/colors:predict", json=body)
    assert response.status_code == 200, response.text
    outputs = np.asarray(response.json()["outputs"])
    assert outputs.argmax(axis=1).tolist() == [1, 0]
    np.testing.assert_allclose(outputs.sum(axis=1), 1.0, atol=1e-5)


def test_versions_and_unknown_versions(client: TestClient) -> None:
    body = {"instances": [_photo().tolist()]}
    assert client.post("/v1/models/colors/versions/1:predict", json=body).status_code == 200
    missing = client.post("/v1/models/colors/versions/7:predict", json=body)
    assert missing.status_code == 404
    assert "Servable not found" in missing.json()["error"]
    assert client.get("/v1/models/colors/versions/1").json()["model_version_status"][0][
        "version"
    ] == ("1")
    meta = client.get("/v1/models/colors/versions/1/metadata").json()
    signature = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["outputs"]) == {"probabilities"}


_ROW = [[0.5, 0.5, 0.5]] * 4
_LIMITS = [
    ("a 10^6-value list", "[" + ",".join(["0.5"] * 1_000_000) + "]", "JSON values"),
    ("ragged", json.dumps([[[1, 2, 3]] * 4, [[1, 2, 3]] * 3]), "rectangular"),
    ("NaN", json.dumps([_ROW, [[float("nan"), 0, 0]] * 4]), "finite"),
    ("strings", json.dumps([[["1", "2", "3"]] * 4] * 4), "numbers"),
    ("booleans", json.dumps([[[True, False, True]] * 4] * 4), "numbers"),
    ("wrong rank", json.dumps([0.5] * 48), "shape [height, width, 3]"),
    ("not RGB", json.dumps([[[0.5, 0.5]] * 4] * 4), "shape [height, width, 3]"),
    ("out of range", json.dumps([[[300, 0, 0]] * 4] * 4), "within 0-255"),
    ("negative", json.dumps([[[-0.5, 0, 0]] * 4] * 4), "within 0-255"),
    ("null", json.dumps([[[None, 0, 0]] * 4] * 4), "numbers"),
]


@pytest.mark.parametrize(("what", "instance", "reason"), _LIMITS, ids=[c[0] for c in _LIMITS])
def test_bad_raw_instances_are_a_fast_400_with_the_reason(
    client: TestClient, what: str, instance: str, reason: str
) -> None:
    body = '{"instances": [' + instance + "]}"
    started = time.perf_counter()
    response = client.post("/v1/models/colors:predict", content=body, headers=FORM)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, (what, response.text)
    assert reason in response.json()["error"], response.json()
    assert len(response.content) < 1000
    assert elapsed < 5.0  # refused before any expensive work, not after a long stall


def test_model_name_renames_every_path(make_client: ClientFactory) -> None:
    client = make_client(model_name="image_classifier")
    body = {"instances": [(_photo("red") / 255.0).tolist()]}
    response = client.post("/v1/models/image_classifier:predict", json=body)
    assert response.status_code == 200, response.text
    assert int(np.argmax(response.json()["predictions"][0])) == 0
    assert client.post("/v1/models/colors:predict", json=body).status_code == 404
    assert client.get("/v2/models/image_classifier/ready").status_code == 200
    assert client.get("/v2/models/colors/ready").status_code == 404
    assert client.get("/v1/models/image_classifier").json()["model_version_status"]
    assert 'name="image_classifier"' in client.get("/metrics").text


def test_model_name_from_the_environment(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMGCLF_MODEL_NAME", "image_classifier")
    client = make_client()
    assert client.get("/v1/models/image_classifier/metadata").status_code == 200


@pytest.mark.slow
def test_clothing_bundle_takes_a_224x224_list(make_client: ClientFactory) -> None:
    client = make_client(model=None, threads=None)
    labels = client.get("/model").json()["labels"]
    name = client.get("/model").json()["name"]
    pixels = np.asarray(make_image((150, 40, 60), (224, 224), noise=60, seed=5), dtype=np.uint8)
    body = json.dumps({"instances": [(pixels / 255.0).tolist()]})
    response = client.post(f"/v1/models/{name}:predict", content=body, headers=FORM)
    assert response.status_code == 200, response.text
    (row,) = response.json()["predictions"]
    assert len(row) == len(labels)
    files = {"file": ("x.png", _png(pixels), "image/png")}
    expected = client.post("/predict", files=files).json()["class"]
    assert labels[int(np.argmax(row))] == expected


@pytest.fixture
def served_as_image_classifier(tiny_bundle: Path, tmp_path: Path) -> Iterator[Server]:
    args = ["-m", "imgclf", "serve", "--model", str(tiny_bundle), "--port", "{port}"]
    server = Server([*args, "--model-name", "image_classifier"], tmp_path / "server.log")
    try:
        wait_ready(server.base, server.process)
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_cifar_clients_exact_curl_command(
    served_as_image_classifier: Server, tmp_path: Path
) -> None:
    # The client: resize to 32x32, scale to [0, 1], write test_data.json, curl -d @file.
    pixels = _photo("green")
    (tmp_path / "test_data.json").write_text(
        json.dumps({"instances": [(pixels / 255.0).tolist()]}), encoding="utf-8"
    )
    url = f"{served_as_image_classifier.base}/v1/models/image_classifier:predict"
    result = subprocess.run(
        ["curl", "-sS", "-X", "POST", url, "-d", "@test_data.json"],
        cwd=tmp_path,
        capture_output=True,
        check=True,
        timeout=30,
    )
    answer = json.loads(result.stdout)
    assert "predictions" in answer, answer
    predictions = answer["predictions"]
    assert len(predictions) == 1 and len(predictions[0]) == 3
    assert int(np.argmax(predictions[0])) == 1  # green
