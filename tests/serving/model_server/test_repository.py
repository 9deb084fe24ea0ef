"""Repository loading: version policies, new versions picked up while serving, bad models.

A bad or half-copied new version never takes a model offline: the fallback tests drop a broken
version 2 next to a serving version 1 of a running model server, keep asking for inferences the
whole time (none may fail), check that the failure is reported with its reason, then complete
version 2 and check that the server switches to it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
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


def permuted_model(repository: Path) -> bytes:
    """A model answering ``green`` for red images (version 1's weights rotated)."""
    model = onnx.load(repository / "colors" / "1" / "model.onnx")
    weights = next(init for init in model.graph.initializer if init.name == "W")
    rotated = np.roll(np.eye(3, dtype=np.float32) * 8.0, 1, axis=1)
    weights.CopyFrom(numpy_helper.from_array(rotated, "W"))
    return bytes(model.SerializeToString())


def write_permuted_version(repository: Path, version: int) -> None:
    """A version answering ``green`` for red images, written atomically."""
    folder = repository / "colors" / str(version)
    folder.mkdir()
    (folder / ".model.onnx.tmp").write_bytes(permuted_model(repository))
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


class Prober:
    """Infers over gRPC in a loop and records every answer (version, label) or error."""

    def __init__(self, port: int) -> None:
        self.answers: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.answers.append(infer_red(self._client))
            except Exception as exc:  # any failure is what the test looks for
                self.errors.append(str(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


@pytest.fixture
def prober(model_server: ModelServer) -> Iterator[Prober]:
    running = Prober(model_server.grpc_port)
    wait_for(lambda: len(running.answers) > 0)
    yield running
    running.stop()


def mismatched_model(repository: Path) -> bytes:
    """A valid ONNX model whose input size does not match the repository's preprocessing."""
    model = onnx.load(repository / "colors" / "1" / "model.onnx")
    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_value = 64
    return model.SerializeToString()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("half-copied", "cannot load the model"),
        ("missing-file", "model file is missing"),
        ("corrupt", "cannot load the model"),
        ("wrong-model", "to match the preprocessing"),
    ],
)
def test_broken_new_version_keeps_the_last_good_one_serving(
    model_server: ModelServer, repository: Path, prober: Prober, case: str, reason: str
) -> None:
    good = permuted_model(repository)
    version_dir = repository / "colors" / "2"
    version_dir.mkdir()
    target = version_dir / "model.onnx"
    if case == "half-copied":
        target.write_bytes(good[: len(good) // 2])
    elif case == "corrupt":
        target.write_bytes(b"\x08\x07garbage" * 100)
    elif case == "wrong-model":
        target.write_bytes(mismatched_model(repository))

    http = httpx.Client(base_url=f"http://127.0.0.1:{model_server.http_port}", timeout=5)
    with http:
        wait_for(lambda: http.get("/v2/models/colors/versions/2/ready").status_code == 503)
        wait_for(lambda: reason in http.get("/v2/models/colors/versions/2/ready").text)
        seen = len(prober.answers)
        wait_for(lambda: len(prober.answers) > seen + 5)  # several polls later: still version 1
        assert http.get("/v2/models/colors/ready").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
        index = http.post("/v2/repository/index", json={}).json()
        assert [(row["version"], row["state"]) for row in index] == [
            ("1", "READY"),
            ("2", "UNAVAILABLE"),
        ]
        assert reason in index[1]["reason"]
        response = http.post("/v2/models/colors/versions/2/infer", json={"inputs": []})
        assert response.status_code == 503
        assert "failed to load" in response.json()["error"]
        with grpcclient.InferenceServerClient(f"127.0.0.1:{model_server.grpc_port}") as client:
            assert not client.is_model_ready("colors", "2")
            assert client.is_model_ready("colors")
            states = {(m.version, m.state) for m in client.get_model_repository_index().models}
            assert states == {("1", "READY"), ("2", "UNAVAILABLE")}

        # The copy completes (or the operator fixes the file): version 2 takes over.
        if case == "half-copied":
            with target.open("ab") as file:
                file.write(good[len(good) // 2 :])
        else:
            target.write_bytes(good)
        wait_for(lambda: prober.answers[-1] == ("2", "green"))
        wait_for(lambda: http.get("/v2/models/colors").json()["versions"] == ["2"])
        assert http.get("/v2/models/colors/versions/2/ready").status_code == 200
    assert prober.errors == []
    assert set(prober.answers) == {("1", "red"), ("2", "green")}
