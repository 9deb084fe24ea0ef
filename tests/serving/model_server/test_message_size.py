"""gRPC message limits are set on purpose: a batch of 8 FP32 224x224 images is 4.8 MB > 4 MiB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from imgclf.bundle import load_bundle
from imgclf.export.triton import export_triton_repository
from imgclf.preprocessing import PreprocessConfig
from imgclf.serving.model_server.server import ModelServer, ModelServerSettings


@pytest.fixture
def repo_224(tiny_bundle: Path, tmp_path: Path) -> Path:
    bundle = load_bundle(tiny_bundle)
    model = onnx.load(tiny_bundle / "model.onnx")
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 224
    onnx.save(model, tiny_bundle / "model.onnx")
    bundle.manifest.preprocessing = PreprocessConfig(input_size=224, crop_pct=1.0).to_dict()
    bundle.add_artifact("onnx", tiny_bundle / "model.onnx", format="onnx", input_name="input")
    repo = tmp_path / "repo224"
    export_triton_repository(bundle, repo, max_batch_size=8)
    return repo


def start(repo: Path, max_message_bytes: int) -> ModelServer:
    settings = ModelServerSettings(
        repository=repo, grpc_port=0, http_port=None, max_message_bytes=max_message_bytes
    )
    server = ModelServer(settings)
    server.start()
    return server


@pytest.fixture
def batch() -> Iterator[grpcclient.InferInput]:
    data = np.zeros((8, 3, 224, 224), dtype=np.float32)
    data[:, 2] = 1.0  # blue
    tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    assert data.nbytes > 4 * 1024 * 1024
    yield tensor


def test_batch_of_8_fp32_224_passes_the_default_limit(
    repo_224: Path, batch: grpcclient.InferInput
) -> None:
    server = start(repo_224, 64 * 1024 * 1024)
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            result = client.infer(
                "colors", [batch], outputs=[grpcclient.InferRequestedOutput("logits")]
            )
        assert result.as_numpy("logits").argmax(axis=1).tolist() == [2] * 8
    finally:
        server.stop(grace_s=0)


def test_a_smaller_limit_is_enforced(repo_224: Path, batch: grpcclient.InferInput) -> None:
    server = start(repo_224, 2 * 1024 * 1024)
    try:
        with (
            grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client,
            pytest.raises(InferenceServerException) as info,
        ):
            client.infer("colors", [batch])
        assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    finally:
        server.stop(grace_s=0)
