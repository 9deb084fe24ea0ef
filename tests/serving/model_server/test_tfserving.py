"""TF Serving's gRPC and REST APIs on the model server (the official client's test is in
tests/serving/tfserving_client, run by ``make test-tfserving`` in an environment of its own)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from PIL import Image
from proto_tools import normalised

from imgclf.serving.model_server.server import ModelServer, ModelServerSettings
from imgclf.serving.model_server.tfserving_grpc import DESCRIPTOR_SET, messages
from imgtools import COLORS, make_image

protoc = pytest.importorskip("grpc_tools.protoc")

PROTO_ROOT = DESCRIPTOR_SET.parent / "tfserving"
SERVICES = ("tensorflow_serving/apis/prediction_service.proto",
            "tensorflow_serving/apis/model_service.proto")  # fmt: skip
DT_FLOAT, DT_UINT8, DT_STRING = 1, 4, 7


@pytest.fixture
def server(repository: Path) -> Iterator[ModelServer]:
    settings = ModelServerSettings(
        repository=repository, grpc_port=0, http_port=0, tfserving_grpc_port=0, poll_interval_s=0
    )
    model_server = ModelServer(settings)
    model_server.start()
    yield model_server
    model_server.stop(grace_s=0)


@pytest.fixture
def call(server: ModelServer) -> Iterator[Callable[..., Any]]:
    """``call("PredictionService", "Predict", request)`` -> the response message."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.tfserving_grpc_port}")
    responses = {"Predict": "PredictResponse", "GetModelMetadata": "GetModelMetadataResponse"}
    responses |= {"GetModelStatus": "GetModelStatusResponse", "Classify": "ClassificationResponse"}

    def invoke(service: str, method: str, request: Any) -> Any:
        stub = channel.unary_unary(
            f"/tensorflow.serving.{service}/{method}",
            request_serializer=type(request).SerializeToString,
            response_deserializer=getattr(messages(), responses[method]).FromString,
        )
        return stub(request, timeout=30)

    yield invoke
    channel.close()


def _photo(color: str, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.asarray(make_image(COLORS[color], size, seed=1), dtype=np.uint8)


def _predict_request(tensor: Any, name: str = "colors") -> Any:
    request = messages().PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = "serving_default"
    request.inputs["input_1"].CopyFrom(tensor)
    return request


def _tensor(array: np.ndarray, dtype: int, *, content: bool = True) -> Any:
    tensor = messages().TensorProto(dtype=dtype)
    for size in array.shape:
        tensor.tensor_shape.dim.add(size=size)
    if content:
        tensor.tensor_content = np.ascontiguousarray(array).tobytes()
    elif dtype == DT_FLOAT:
        tensor.float_val.extend(array.ravel().tolist())
    else:
        tensor.int_val.extend(array.ravel().tolist())
    return tensor


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _probabilities(response: Any) -> np.ndarray:
    output = response.outputs["probabilities"]
    assert output.dtype == DT_FLOAT
    shape = [d.size for d in output.tensor_shape.dim]
    return np.asarray(output.float_val, dtype=np.float32).reshape(shape)


@pytest.mark.parametrize(
    ("dtype", "scale", "content"),
    [(DT_UINT8, 1, True), (DT_UINT8, 1, False), (DT_FLOAT, 1 / 255, True), (DT_FLOAT, 1, False)],
    ids=["uint8-content", "uint8-int_val", "float01-content", "float255-float_val"],
)
def test_predict_numeric_images(
    call: Callable[..., Any], dtype: int, scale: float, content: bool
) -> None:
    batch = np.stack([_photo(c) for c in ("red", "green", "blue")])
    values = batch if dtype == DT_UINT8 else (batch * scale).astype(np.float32)
    response = call(
        "PredictionService", "Predict", _predict_request(_tensor(values, dtype, content=content))
    )
    probs = _probabilities(response)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert response.model_spec.name == "colors"
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"


def test_predict_encoded_images_of_any_size(call: Callable[..., Any]) -> None:
    tensor = messages().TensorProto(dtype=DT_STRING)
    tensor.tensor_shape.dim.add(size=2)
    tensor.string_val.extend([_png(_photo("blue", (90, 40))), _png(_photo("green"))])
    probs = _probabilities(call("PredictionService", "Predict", _predict_request(tensor)))
    assert probs.argmax(axis=1).tolist() == [2, 1]


@pytest.mark.parametrize(
    ("mutate", "code", "reason"),
    [
        (lambda r: setattr(r.model_spec, "name", "shoes"), "NOT_FOUND", "unknown model"),
        (lambda r: r.model_spec.version.__setattr__("value", 9), "NOT_FOUND", "version"),
        (lambda r: setattr(r.model_spec, "signature_name", "other"), "INVALID_ARGUMENT", "sign"),
        (lambda r: r.output_filter.append("scores"), "INVALID_ARGUMENT", "unknown output"),
        (lambda r: r.inputs["second"].CopyFrom(r.inputs["input_1"]), "INVALID_ARGUMENT", "one"),
        (lambda r: r.inputs["input_1"].tensor_shape.dim.pop(), "INVALID_ARGUMENT", "shape"),
        (lambda r: setattr(r.inputs["input_1"], "dtype", 19), "INVALID_ARGUMENT", "dtype"),
        (
            lambda r: setattr(r.inputs["input_1"], "tensor_content", b"\0" * 7),
            "INVALID_ARGUMENT",
            "bytes",
        ),
    ],
)
def test_predict_errors_carry_tf_serving_codes(
    call: Callable[..., Any], mutate: Callable[[Any], None], code: str, reason: str
) -> None:
    request = _predict_request(_tensor(_photo("red")[None], DT_UINT8))
    mutate(request)
    with pytest.raises(grpc.RpcError) as caught:
        call("PredictionService", "Predict", request)
    assert caught.value.code().name == code
    assert reason in caught.value.details()


def test_nan_floats_are_refused(call: Callable[..., Any]) -> None:
    values = np.full((1, 4, 4, 3), np.nan, dtype=np.float32)
    with pytest.raises(grpc.RpcError) as caught:
        call("PredictionService", "Predict", _predict_request(_tensor(values, DT_FLOAT)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finite" in caught.value.details()


def test_metadata_status_and_unimplemented_methods(call: Callable[..., Any]) -> None:
    request = messages().GetModelMetadataRequest(metadata_field=["signature_def", "labels"])
    request.model_spec.name = "colors"
    response = call("PredictionService", "GetModelMetadata", request)
    signatures = messages().SignatureDefMap.FromString(response.metadata["signature_def"].value)
    signature = signatures.signature_def["serving_default"]
    assert [d.size for d in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 3]
    labels = messages().TensorProto.FromString(response.metadata["labels"].value)
    assert [s.decode() for s in labels.string_val] == ["red", "green", "blue"]
    status_request = messages().GetModelStatusRequest()
    status_request.model_spec.name = "colors"
    status = call("ModelService", "GetModelStatus", status_request).model_version_status
    assert [(s.version, s.state) for s in status] == [(1, 30)]  # AVAILABLE
    status_request.model_spec.name = "shoes"
    with pytest.raises(grpc.RpcError) as caught:
        call("ModelService", "GetModelStatus", status_request)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        call("PredictionService", "Classify", messages().ClassificationRequest())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rest_v1_on_the_model_server(server: ModelServer) -> None:
    base = f"http://127.0.0.1:{server.http_port}/v1/models/colors"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    red = base64.b64encode(_png(_photo("red"))).decode()
    body = {"instances": [(_photo("blue") / 255.0).tolist(), {"b64": red}]}
    response = httpx.post(f"{base}:predict", content=json.dumps(body), headers=form)
    assert response.status_code == 200, response.text
    assert np.argmax(response.json()["predictions"], axis=1).tolist() == [2, 0]
    versioned = httpx.post(f"{base}/versions/1:predict", json={"inputs": body["instances"]})
    assert "outputs" in versioned.json()
    meta = httpx.get(f"{base}/metadata").json()
    assert meta["metadata"]["labels"] == ["red", "green", "blue"]
    assert httpx.get(base).json()["model_version_status"][0]["state"] == "AVAILABLE"
    missing = httpx.post(f"http://127.0.0.1:{server.http_port}/v1/models/shoes:predict", json=body)
    assert missing.status_code == 404 and "error" in missing.json()
    ragged = httpx.post(f"{base}:predict", json={"instances": [[[[1, 2, 3]], [[1, 2]]]]})
    assert ragged.status_code == 400
    assert "rectangular" in ragged.json()["error"]


def test_checked_in_protos_compile_to_the_descriptor_set_served(tmp_path: Path) -> None:
    out = tmp_path / "set.binpb"
    well_known = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_imports"]
    args.append(f"--descriptor_set_out={out}")
    assert protoc.main(["protoc", *args, *(str(PROTO_ROOT / s) for s in SERVICES)]) == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    served = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes()).file
    assert [f.name for f in compiled] == [f.name for f in served]
    for mine, theirs in zip(compiled, served, strict=True):
        assert normalised(mine) == normalised(theirs), mine.name
