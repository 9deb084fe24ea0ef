"""The official ``tensorflow-serving-api`` client against ``imgclf model-server``'s TF Serving port.

Runs in an environment of its own (TensorFlow is large and pins its own protobuf): ``make
test-tfserving`` builds ``.venv-tfserving`` and sets ``IMGCLF_REQUIRE_TFSERVING=1``, so a missing
package fails the run instead of skipping it. Elsewhere these tests are skipped.

The request is built the way the CIFAR system's gateway builds it: ``PredictionServiceStub``,
``model_spec.name``, ``signature_name="serving_default"`` and a ``tf.make_tensor_proto`` input of
32x32 images scaled to [0, 1]. The classes must be those ``imgclf serve``'s ``/predict`` gives.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from PIL import Image
from proto_tools import normalised

from imgtools import COLORS, make_image

if os.environ.get("IMGCLF_REQUIRE_TFSERVING") != "1":
    pytest.importorskip("tensorflow_serving", reason="run by make test-tfserving")
tf: Any = pytest.importorskip("tensorflow")

from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
)

pytestmark = pytest.mark.slow
DESCRIPTOR_SET = (
    Path(__file__).resolve().parents[3] / "src/imgclf/serving/model_server/proto/tfserving.binpb"
)
IMAGES = [("red", 1), ("green", 2), ("blue", 3), ("green", 4), ("red", 5)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, process: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited with {process.returncode}"
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200")


@pytest.fixture
def servers(tiny_bundle: Path, tmp_path: Path) -> Iterator[dict[str, int]]:
    """``imgclf model-server`` (model ``image_classifier``) and ``imgclf serve``, same bundle."""
    root, bundle = tmp_path, tiny_bundle
    ports = {name: _free_port() for name in ("v2", "rest", "tfs", "serve")}
    imgclf = [sys.executable, "-m", "imgclf"]
    commands = [
        [
            *imgclf, "model-server", "--repository", str(root / "repo"), "--bundle", str(bundle),
            "--model-name", "image_classifier", "--grpc-port", str(ports["v2"]),
            "--http-port", str(ports["rest"]), "--tfserving-grpc-port", str(ports["tfs"]),
        ],
        [*imgclf, "serve", "--model", str(bundle), "--port", str(ports["serve"]), "--threads", "1"],
    ]  # fmt: skip
    logs = [(root / f"server{i}.log").open("wb") for i in range(2)]
    processes = [
        subprocess.Popen(cmd, stdout=log, stderr=log)
        for cmd, log in zip(commands, logs, strict=True)
    ]
    try:
        _wait(f"http://127.0.0.1:{ports['rest']}/v2/health/ready", processes[0])
        _wait(f"http://127.0.0.1:{ports['serve']}/ready", processes[1])
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait(10)
        for log in logs:
            log.close()


def _photo(color: str, seed: int) -> np.ndarray:
    """A 'photo' as the CIFAR client holds it after resizing to 32x32."""
    image = make_image(COLORS[color], (48, 40), noise=60, seed=seed).resize((32, 32))
    return np.asarray(image, dtype=np.uint8)


def _predict_classes(port: int, photos: list[np.ndarray]) -> list[str]:
    classes = []
    for photo in photos:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, "PNG")
        files = {"file": ("x.png", buffer.getvalue(), "image/png")}
        response = httpx.post(f"http://127.0.0.1:{port}/predict", files=files, timeout=30)
        classes.append(response.json()["class"])
    return classes


def _gateway_request(batch: np.ndarray) -> Any:
    """The CIFAR gateway's request: model_spec.name, serving_default, a make_tensor_proto input."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "image_classifier"
    request.model_spec.signature_name = "serving_default"
    request.inputs["input_1"].CopyFrom(tf.make_tensor_proto(batch, shape=list(batch.shape)))
    return request


def test_official_client_gets_the_classes_of_predict(servers: dict[str, int]) -> None:
    photos = [_photo(color, seed) for color, seed in IMAGES]
    expected = _predict_classes(servers["serve"], photos)
    for kind in ("float01", "uint8", "encoded"):
        _check_predict(servers["tfs"], photos, kind, expected)
    _check_metadata_and_status(servers["tfs"])


def _check_predict(port: int, photos: list[np.ndarray], kind: str, expected: list[str]) -> None:
    batch = np.stack(photos)
    if kind == "float01":
        request = _gateway_request((batch / 255.0).astype(np.float32))
    elif kind == "uint8":
        request = _gateway_request(batch)
    else:
        encoded = []
        for photo in photos:
            buffer = io.BytesIO()
            Image.fromarray(photo).save(buffer, "PNG")
            encoded.append(buffer.getvalue())
        request = _gateway_request(np.array(encoded, dtype=object))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        result = stub.Predict(request, 10.0)
    probs = tf.make_ndarray(result.outputs["probabilities"])
    assert probs.shape == (len(photos), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    labels = list(COLORS)
    assert [labels[i] for i in probs.argmax(axis=1)] == expected, kind
    assert result.model_spec.name == "image_classifier"


def _check_metadata_and_status(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = "image_classifier"
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, 10.0)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert response.metadata["signature_def"].Unpack(signatures)
        signature = signatures.signature_def["serving_default"]
        assert signature.method_name == "tensorflow/serving/predict"
        assert list(signature.outputs) == ["probabilities"]
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "image_classifier"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request)
    (version,) = status.model_version_status
    assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    with pytest.raises(grpc.RpcError) as caught:
        bad = _gateway_request(np.zeros((1, 32, 32), dtype=np.float32))  # no channel dimension
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(bad, 10.0)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_served_definitions_are_the_official_ones() -> None:
    """The checked-in descriptor set equals the descriptors the official packages ship."""
    served = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    official_pool = descriptor_pool.Default()
    assert prediction_service_pb2.DESCRIPTOR.name in {file.name for file in served}
    assert model_service_pb2.DESCRIPTOR.name in {file.name for file in served}
    for file in served:
        if file.name.startswith("google/protobuf/"):  # protobuf's own, whatever its version
            continue
        official = descriptor_pb2.FileDescriptorProto()
        official_pool.FindFileByName(file.name).CopyToProto(official)
        assert normalised(file) == normalised(official), file.name
