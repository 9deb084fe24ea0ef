"""RemoteBackend against a real model server: same answers as the Predictor, metadata learned."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from imgclf.errors import ConfigError, InputError, ModelServerError, ModelServerUnavailableError
from imgclf.export.triton import export_triton_repository
from imgclf.inference.predictor import Predictor
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.gateway.client import RemoteBackend, parse_grpc_url
from imgclf.serving.model_server.grpc_service import InferenceServicer
from imgclf.serving.model_server.repository import ModelRepository

COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]


def pixel_batch(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.array([COLORS[i % 3] for i in range(count)], dtype=np.int16)[:, None, None, :]
    noisy = base + rng.integers(-25, 26, size=(count, 32, 32, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.fixture
def backend(grpc_servers: Any) -> Iterator[RemoteBackend]:
    _, port = grpc_servers.start()
    remote = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", timeout_s=5, retries=1)
    yield remote
    remote.close()


def test_backend_matches_the_predictor(backend: RemoteBackend, tiny_bundle: Path) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    assert isinstance(backend, InferenceBackend)
    assert backend.labels == predictor.labels
    assert backend.preprocess_config == predictor.preprocess_config
    assert (backend.model_name, backend.model_version) == ("colors", "1")
    assert backend.remote_model.input_datatype == "UINT8"
    assert backend.is_ready()
    pixels = pixel_batch(20)  # above max_batch_size 8: split into 3 requests
    probs = backend.infer(pixels)
    np.testing.assert_allclose(probs, predictor.run_pixels(pixels), rtol=1e-5, atol=1e-6)
    assert probs.argmax(axis=1).tolist() == [i % 3 for i in range(20)]
    assert backend.infer(np.zeros((0, 32, 32, 3), dtype=np.uint8)).shape == (0, 3)


def test_wrong_pixels_are_an_input_error(backend: RemoteBackend) -> None:
    with pytest.raises(InputError, match="expected uint8 pixels"):
        backend.infer(np.zeros((1, 32, 32, 3), dtype=np.float32))
    with pytest.raises(InputError, match="expected uint8 pixels"):
        backend.infer(np.zeros((1, 64, 64, 3), dtype=np.uint8))


class TritonLikeServicer(InferenceServicer):
    """Offers only the ONNX model's FP32 input and logits, as NVIDIA Triton would."""

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        response = super().ModelMetadata(request, context)
        for field in (response.inputs, response.outputs):
            del field[1:]
        return response


def test_plain_triton_gets_fp32_and_logits(grpc_servers: Any, tiny_bundle: Path) -> None:
    _, port = grpc_servers.start(TritonLikeServicer)
    remote = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}")
    try:
        model = remote.remote_model
        assert (model.input_name, model.input_datatype, model.output_name) == (
            "input",
            "FP32",
            "logits",
        )
        pixels = pixel_batch(5, seed=3)
        expected = Predictor.from_bundle(tiny_bundle).run_pixels(pixels)
        np.testing.assert_allclose(remote.infer(pixels), expected, rtol=1e-5, atol=1e-6)
    finally:
        remote.close()


def test_model_choice_with_several_models(
    grpc_servers: Any, tiny_bundle: Path, repository: Path, models: ModelRepository
) -> None:
    export_triton_repository(tiny_bundle, repository, model_name="shades")
    models.poll()
    _, port = grpc_servers.start()
    with pytest.raises(ConfigError, match=r"serves \['colors', 'shades'\]; choose one"):
        RemoteBackend.from_url(f"grpc://127.0.0.1:{port}")
    remote = RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", model_name="shades")
    try:
        assert remote.model_name == "shades"
        assert remote.infer(pixel_batch(3)).argmax(axis=1).tolist() == [0, 1, 2]
    finally:
        remote.close()
    with pytest.raises(ModelServerError, match="unknown model") as info:
        RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", model_name="hats")
    assert type(info.value) is ModelServerError  # not unavailable, not too slow: 502


def test_new_version_is_followed(
    backend: RemoteBackend, tiny_bundle: Path, repository: Path, models: ModelRepository
) -> None:
    assert backend.model_version == "1"
    export_triton_repository(tiny_bundle, repository, version=2)
    models.poll()
    backend.infer(pixel_batch(1))
    assert backend.model_version == "2"


def test_config_without_imgclf_parameters_is_refused(
    grpc_servers: Any, repository: Path, models: ModelRepository
) -> None:
    config = repository / "colors" / "config.pbtxt"
    text = config.read_text()
    config.write_text(text[: text.index("parameters [")])
    models.poll()
    _, port = grpc_servers.start()
    with pytest.raises(ConfigError, match=r"imgclf\.labels"):
        RemoteBackend.from_url(f"grpc://127.0.0.1:{port}")


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("grpc://127.0.0.1:8001", "dns:///127.0.0.1:8001"),
        ("model:9000", "dns:///model:9000"),
        ("grpc://[::1]:1", "dns:///[::1]:1"),
    ],
)
def test_url_parsing(url: str, target: str) -> None:
    assert parse_grpc_url(url) == target


@pytest.mark.parametrize("url", ["http://a:1", "grpc://a", "grpc://a:x", "grpc://a:1/path", ""])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="grpc://HOST:PORT"):
        parse_grpc_url(url)


def test_nothing_listening_is_503_after_wait(grpc_servers: Any) -> None:
    server, port = grpc_servers.start()
    server.stop(0).wait()
    started = time.monotonic()
    with pytest.raises(ModelServerUnavailableError, match=r"did not answer within 0\.5 s"):
        RemoteBackend.from_url(f"grpc://127.0.0.1:{port}", wait_s=0.5)
    assert time.monotonic() - started < 3
