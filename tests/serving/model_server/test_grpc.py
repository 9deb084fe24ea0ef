"""V2 gRPC interoperability: tritonclient (a client nobody here wrote) against the model server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from imgclf.inference.predictor import Predictor
from imgclf.preprocessing import load_pixels, normalize
from imgclf.serving.model_server.server import ModelServer


@pytest.fixture
def client(model_server: ModelServer) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{model_server.grpc_port}") as triton:
        yield triton


@pytest.fixture
def pixels(tiny_bundle: Path, image_bytes: Callable[..., bytes]) -> np.ndarray:
    config = Predictor.from_bundle(tiny_bundle).preprocess_config
    return np.stack([load_pixels(image_bytes(c, seed=i), config) for i, c in enumerate(COLORS)])


COLORS = ["red", "green", "blue", "blue", "red"]


def test_health_and_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("colors")
    assert client.is_model_ready("colors", "1")
    assert not client.is_model_ready("colors", "7")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "imgclf"
    assert "classification" in server["extensions"]
    meta = client.get_model_metadata("colors", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("input", "FP32", ["-1", "3", "32", "32"]),
        ("pixels", "UINT8", ["-1", "32", "32", "3"]),
    ]
    assert [t["name"] for t in meta["outputs"]] == ["logits", "probabilities"]
    config = client.get_model_config("colors").config
    assert config.max_batch_size == 8
    assert config.parameters["imgclf.labels"].string_value == '["red", "green", "blue"]'


@pytest.mark.parametrize("kind", ["uint8", "fp32"])
def test_tritonclient_top1_matches_predictor(
    client: grpcclient.InferenceServerClient, tiny_bundle: Path, pixels: np.ndarray, kind: str
) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    if kind == "uint8":
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
    else:
        batch = normalize(pixels, predictor.preprocess_config)
        tensor = grpcclient.InferInput("input", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
    outputs = [
        grpcclient.InferRequestedOutput("probabilities"),
        grpcclient.InferRequestedOutput("logits", class_count=2),
    ]
    result = client.infer("colors", [tensor], outputs=outputs, request_id="r-1")

    expected = predictor.run_pixels(pixels)
    probs = result.as_numpy("probabilities")
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert [predictor.labels[i] for i in probs.argmax(axis=1)] == COLORS
    top = result.as_numpy("logits")
    assert top.shape == (len(COLORS), 2)
    assert [row[0].decode().split(":", 2)[2] for row in top] == COLORS
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("colors", "1", "r-1")


def test_all_outputs_returned_when_none_requested(
    client: grpcclient.InferenceServerClient, pixels: np.ndarray
) -> None:
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer("colors", [tensor], model_version="1")
    assert result.as_numpy("logits").shape == (len(COLORS), 3)
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)


def test_typed_contents_are_accepted(model_server: ModelServer, pixels: np.ndarray) -> None:
    request = service_pb2.ModelInferRequest(model_name="colors")
    request.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
    request.inputs[0].contents.uint_contents.extend(pixels.reshape(-1).tolist())
    request.outputs.add(name="probabilities")
    with grpc.insecure_channel(f"127.0.0.1:{model_server.grpc_port}") as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    probs = np.frombuffer(response.raw_output_contents[0], dtype=np.float32).reshape(-1, 3)
    assert probs.argmax(axis=1).tolist() == [["red", "green", "blue"].index(c) for c in COLORS]


def _infer_error(
    client: grpcclient.InferenceServerClient, model: str, tensor: grpcclient.InferInput, **kw: str
) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor], **kw)
    return info.value


@pytest.mark.parametrize(
    ("name", "dtype", "shape", "message"),
    [
        ("pixels", "FP32", [1, 32, 32, 3], "must be UINT8"),
        ("pixels", "UINT8", [1, 3, 32, 32], "must have shape"),
        ("input", "FP32", [1, 3, 16, 16], "must have shape"),
        ("image", "UINT8", [1, 32, 32, 3], "exactly one input"),
        ("pixels", "UINT8", [9, 32, 32, 3], "exceeds max_batch_size 8"),
        ("pixels", "INT64", [1, 32, 32, 3], "must be UINT8, got INT64"),
        ("pixels", "BOOL", [1, 32, 32, 3], "not accepted"),
    ],
)
def test_bad_requests_are_invalid_argument(
    client: grpcclient.InferenceServerClient, name: str, dtype: str, shape: list[int], message: str
) -> None:
    np_dtype = {"FP32": np.float32, "UINT8": np.uint8, "INT64": np.int64, "BOOL": np.bool_}[dtype]
    tensor = grpcclient.InferInput(name, shape, dtype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=np_dtype))
    error = _infer_error(client, "colors", tensor)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in error.message()


def test_unknown_model_or_version_is_not_found(
    client: grpcclient.InferenceServerClient, pixels: np.ndarray
) -> None:
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    error = _infer_error(client, "shoes", tensor)
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "serves ['colors']" in error.message()
    error = _infer_error(client, "colors", tensor, model_version="3")
    assert error.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("shoes")


def test_unknown_output_is_invalid_argument(
    client: grpcclient.InferenceServerClient, pixels: np.ndarray
) -> None:
    tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    with pytest.raises(InferenceServerException, match="no output 'scores'") as info:
        client.infer("colors", [tensor], outputs=[grpcclient.InferRequestedOutput("scores")])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_runtime_failure_is_internal_with_the_reason(
    model_server: ModelServer, pixels: np.ndarray
) -> None:
    model = model_server.repository.get("colors")

    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("out of memory in Gemm")

    model._runtime = type("Broken", (), {"run": lambda self, batch: broken(batch)})()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{model_server.grpc_port}") as client:
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        with pytest.raises(InferenceServerException, match="out of memory in Gemm") as info:
            client.infer("colors", [tensor])
        assert info.value.status() == "StatusCode.INTERNAL"
        stats = client.get_inference_statistics("colors").model_stats[0]
        assert stats.inference_stats.fail.count == 1


@pytest.mark.parametrize(
    ("shape", "raw", "message"),
    [
        ([4294967296, 4294967296], b"", "do not fill shape [4294967296, 4294967296]"),
        ([2**62, 4], b"", "do not fill"),
        ([-1, 32, 32, 3], b"", "negative dimension"),
        ([0, 2**62, 2**62], b"", "cannot be used (array is too big"),
        ([1] * 70, b"\0" * 4, "cannot be used"),
        ([2**63 - 1, 0], b"", "cannot be used"),
        ([1], b"\0\0\0", "not a whole number of FP32 values"),
    ],
)
def test_bad_shapes_are_invalid_argument_with_a_reason(
    model_server: ModelServer, shape: list[int], raw: bytes, message: str
) -> None:
    request = service_pb2.ModelInferRequest(model_name="colors")
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(raw)
    with grpc.insecure_channel(f"127.0.0.1:{model_server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert message in (info.value.details() or "")
