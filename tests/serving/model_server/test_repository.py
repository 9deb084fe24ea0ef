"""Repository loading: version policies, new versions picked up while serving, bad models."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
from onnx import numpy_helper
from tritonclient.utils import InferenceServerException

from imgclf.errors import ModelNotFoundError, ModelNotReadyError
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.model_server.server import ModelServer

RED = np.full((1, 32, 32, 3), (220, 30, 30), dtype=np.uint8)


def write_permuted_version(repository: Path, version: int) -> None:
    """A version answering ``green`` for red images (weights rotated), written atomically."""
    model = onnx.load(repository / "colors" / "1" / "model.onnx")
    weights = next(init for init in model.graph.initializer if init.name == "W")
    rotated = np.roll(np.eye(3, dtype=np.float32) * 8.0, 1, axis=1)
    weights.CopyFrom(numpy_helper.from_array(rotated, "W"))
    folder = repository / "colors" / str(version)
    folder.mkdir()
    onnx.save(model, folder / ".model.onnx.tmp")
    (folder / ".model.onnx.tmp").replace(folder / "model.onnx")


def infer_red(client: grpcclient.InferenceServerClient, version: str = "") -> tuple[str, str]:
    tensor = grpcclient.InferInput("pixels", list(RED.shape), "UINT8")
    tensor.set_data_from_numpy(RED)
    output = grpcclient.InferRequestedOutput("probabilities", class_count=1)
    result = client.infer("colors", [tensor], outputs=[output], model_version=version)
    label = result.as_numpy("probabilities")[0][0].decode().split(":")[2]
    return result.get_response().model_version, label


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_new_version_is_served_without_restart(model_server: ModelServer, repository: Path) -> None:
    with grpcclient.InferenceServerClient(f"127.0.0.1:{model_server.grpc_port}") as client:
        assert infer_red(client) == ("1", "red")
        write_permuted_version(repository, 2)
        wait_for(lambda: client.get_model_metadata("colors").versions == ["2"])
        assert infer_red(client) == ("2", "green")
        assert not client.is_model_ready("colors", "1")  # latest policy keeps one version

        config = repository / "colors" / "config.pbtxt"
        text = config.read_text().replace("latest: { num_versions: 1 }", "all: {}")
        config.write_text(text)
        wait_for(lambda: client.get_model_metadata("colors").versions == ["1", "2"])
        assert infer_red(client, "1") == ("1", "red")
        assert infer_red(client, "") == ("2", "green")  # no version: the latest


def test_specific_policy_and_removed_versions(repository: Path) -> None:
    write_permuted_version(repository, 2)
    write_permuted_version(repository, 3)
    config = repository / "colors" / "config.pbtxt"
    config.write_text(
        config.read_text().replace("latest: { num_versions: 1 }", "specific: { versions: [1, 3] }")
    )
    models = ModelRepository(repository)
    try:
        models.poll()
        assert models.versions("colors") == [1, 3]
        for child in (repository / "colors" / "3").iterdir():
            child.unlink()
        (repository / "colors" / "3").rmdir()
        models.poll()
        assert models.versions("colors") == [1]
        assert models.get("colors").version == 1
        with pytest.raises(ModelNotFoundError, match="available: \\[1\\]"):
            models.get("colors", "3")
    finally:
        models.close()


def test_a_broken_model_does_not_stop_the_others(
    model_server: ModelServer, repository: Path
) -> None:
    broken = repository / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nmax_batch_size: lots\n')
    (broken / "1" / "model.onnx").write_bytes(b"not onnx")
    models = model_server.repository
    wait_for(lambda: not models.is_ready())
    with pytest.raises(ModelNotReadyError, match="not a valid Triton model config"):
        models.get("broken")
    with grpcclient.InferenceServerClient(f"127.0.0.1:{model_server.grpc_port}") as client:
        assert infer_red(client) == ("1", "red")
        assert not client.is_server_ready()
        assert not client.is_model_ready("broken")
        with pytest.raises(InferenceServerException) as info:
            client.get_model_metadata("broken")
        assert info.value.status() == "StatusCode.UNAVAILABLE"

        # A valid config with a corrupt model file: still reported, still isolated.
        (broken / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\n')
        wait_for(lambda: "cannot load the model" in models._errors.get("broken", ""))
        assert infer_red(client) == ("1", "red")

        # An edit that breaks a loaded model's config keeps the loaded version serving.
        (repository / "colors" / "config.pbtxt").write_text("max_batch_size: [")
        wait_for(lambda: "colors" in models._errors)
        assert infer_red(client) == ("1", "red")


def test_missing_repository_is_not_ready(tmp_path: Path) -> None:
    models = ModelRepository(tmp_path / "nowhere")
    models.poll()
    assert not models.is_ready()
    with pytest.raises(ModelNotFoundError):
        models.get("colors")
