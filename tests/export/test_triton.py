"""The Triton model repository export: layout, and a config.pbtxt Triton's own schema accepts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imgclf.bundle import load_bundle
from imgclf.errors import BundleError, ConfigError, ExportError
from imgclf.export.triton import export_triton, export_triton_repository
from imgtools import COLORS, encode_image, make_image

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
text_format = pytest.importorskip("google.protobuf.text_format")


def parse_config(model_dir: Path) -> object:
    config = model_config_pb2.ModelConfig()
    # Triton's own message definition: an unknown field or bad enum value fails here.
    text_format.Parse((model_dir / "config.pbtxt").read_text(encoding="utf-8"), config)
    return config


def test_layout_and_config_match_triton_schema(tiny_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    model_dir = export_triton_repository(tiny_bundle, repo, max_batch_size=8)

    assert model_dir == repo / "colors"
    onnx_bytes = (tiny_bundle / "model.onnx").read_bytes()
    assert (model_dir / "1" / "model.onnx").read_bytes() == onnx_bytes
    assert (model_dir / "labels.txt").read_text().splitlines() == ["red", "green", "blue"]
    meta = json.loads((model_dir / "imgclf.json").read_text())
    assert meta["preprocessing"]["input_size"] == 32
    assert meta["labels"] == ["red", "green", "blue"]

    config = parse_config(model_dir)
    assert config.name == "colors"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 8
    (inp,) = config.input
    assert (inp.name, inp.data_type, list(inp.dims)) == (
        "input",
        model_config_pb2.TYPE_FP32,
        [3, 32, 32],
    )
    (out,) = config.output
    assert (out.name, out.data_type, list(out.dims)) == ("logits", model_config_pb2.TYPE_FP32, [3])
    assert out.label_filename == "labels.txt"
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert config.version_policy.latest.num_versions == 1
    params = config.parameters
    assert json.loads(params["imgclf.labels"].string_value) == ["red", "green", "blue"]
    assert json.loads(params["imgclf.preprocessing"].string_value)["input_size"] == 32


def test_second_version_is_added_beside_the_first(tiny_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_triton_repository(tiny_bundle, repo, model_name="m", version=1)
    export_triton_repository(tiny_bundle, repo, model_name="m", version=2, max_batch_size=0)
    assert sorted(p.name for p in (repo / "m").iterdir() if p.is_dir()) == ["1", "2"]
    config = parse_config(repo / "m")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 3, 32, 32]  # batch dim kept when batching is off
    assert not config.HasField("dynamic_batching")


def test_unusual_label_text_survives_the_config(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    bundle.manifest.labels = ['rouge "vif"', "vert\\clair", "bleu ciel é"]
    bundle.save()
    model_dir = export_triton_repository(tiny_bundle, tmp_path / "repo")
    labels = json.loads(parse_config(model_dir).parameters["imgclf.labels"].string_value)
    assert labels == ['rouge "vif"', "vert\\clair", "bleu ciel é"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model_name": "../escape"}, "model name"),
        ({"version": 0}, "version"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"artifact": "tflite"}, "artifact"),
    ],
)
def test_bad_options_are_refused(
    tiny_bundle: Path, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        export_triton_repository(tiny_bundle, tmp_path / "repo", **options)  # type: ignore[arg-type]
    assert not (tmp_path / "repo").exists()


def test_missing_artifact_says_how_to_create_it(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="imgclf export"):
        export_triton_repository(tiny_bundle, tmp_path / "repo", artifact="onnx-int8")


def test_auto_prefers_int8_when_the_bundle_has_it(tiny_bundle: Path, tmp_path: Path) -> None:
    export_triton_repository(tiny_bundle, tmp_path / "a", artifact="auto")
    assert json.loads((tmp_path / "a" / "colors" / "imgclf.json").read_text())["artifact"] == "onnx"
    bundle = load_bundle(tiny_bundle)
    (tiny_bundle / "model.int8.onnx").write_bytes((tiny_bundle / "model.onnx").read_bytes())
    bundle.add_artifact("onnx-int8", tiny_bundle / "model.int8.onnx", format="onnx")
    export_triton_repository(tiny_bundle, tmp_path / "b", artifact="auto")
    meta = json.loads((tmp_path / "b" / "colors" / "imgclf.json").read_text())
    assert meta["artifact"] == "onnx-int8"


def test_fixed_batch_model_needs_batching_off(tmp_path: Path, tiny_bundle: Path) -> None:
    import onnx

    path = tiny_bundle / "model.onnx"
    model = onnx.load(path)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, path)
    bundle = load_bundle(tiny_bundle, verify=False)
    with pytest.raises(ExportError, match="fixed batch dimension"):
        export_triton_repository(bundle, tmp_path / "repo", max_batch_size=4)


def test_format_table_entry_point_needs_out(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--out DIR"):
        export_triton(tiny_bundle)
    model_dir = export_triton(tiny_bundle, out=tmp_path / "repo", version=3, max_batch_size=4)
    assert (model_dir / "3" / "model.onnx").is_file()
    assert parse_config(model_dir).max_batch_size == 4


def test_export_cli_writes_a_triton_repository(tiny_bundle: Path, tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from imgclf.cli import main

    repo = tmp_path / "repo"
    code = main(
        [
            "export",
            str(tiny_bundle),
            "--format",
            "triton",
            "--out",
            str(repo),
            "--model-name",
            "colors",
            "--version",
            "3",
            "--max-batch-size",
            "4",
        ]
    )
    assert code == 0
    config = model_config_pb2.ModelConfig()
    text_format.Parse((repo / "colors" / "config.pbtxt").read_text(), config)
    assert (config.name, config.max_batch_size) == ("colors", 4)
    assert (repo / "colors" / "3" / "model.onnx").is_file()
    assert (repo / "colors" / "labels.txt").read_text().split() == ["red", "green", "blue"]


def test_export_cli_triton_rejects_options_it_does_not_take(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgclf.cli import main

    code = main(
        [
            "export",
            str(tiny_bundle),
            "--format",
            "triton",
            "--out",
            str(tmp_path),
            "--calibration-images",
            "5",
        ]
    )
    assert code == 2
    assert "does not accept --calibration-images" in capsys.readouterr().err


def test_bundled_model_exports_by_cli_and_serves_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundled model has only an int8 ONNX model: ``auto`` exports it and a server runs it."""
    grpcclient = pytest.importorskip("tritonclient.grpc")
    from imgclf.bundle import default_bundle_path
    from imgclf.cli import main
    from imgclf.inference import Predictor
    from imgclf.preprocessing import load_pixels
    from imgclf.serving.model_server.server import ModelServer, ModelServerSettings

    bundled = load_bundle(default_bundle_path())
    assert set(bundled.manifest.artifacts) == {"onnx-int8"}  # what makes this test meaningful
    repo = tmp_path / "repo"
    assert main(["export", "--format", "triton", "--out", str(repo)]) == 0
    assert "clothing-lite0 (4 files" in capsys.readouterr().out
    model_dir = repo / bundled.manifest.name
    served = model_dir / "1" / "model.onnx"
    assert served.read_bytes() == bundled.artifact_path("onnx-int8").read_bytes()
    assert json.loads((model_dir / "imgclf.json").read_text())["artifact"] == "onnx-int8"
    assert parse_config(model_dir).max_batch_size == 8

    predictor = Predictor.from_bundle(threads=1)
    pixels = np.stack(
        [load_pixels(encode_image(make_image(c, (96, 128), seed=i)), predictor.preprocess_config)
         for i, c in enumerate(COLORS.values())]
    )  # fmt: skip
    server = ModelServer(
        ModelServerSettings(repository=repo, grpc_port=0, http_port=None, poll_interval_s=0)
    )
    server.start()
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
            assert client.is_model_ready(bundled.manifest.name)
            tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
            tensor.set_data_from_numpy(pixels)
            output = grpcclient.InferRequestedOutput("probabilities")
            result = client.infer(bundled.manifest.name, [tensor], outputs=[output])
            probs = result.as_numpy("probabilities")
    finally:
        server.stop(grace_s=0)
    np.testing.assert_allclose(probs, predictor.run_pixels(pixels), atol=1e-5)


def test_bundled_model_explicit_fp32_choice_is_refused_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imgclf.cli import main

    code = main(["export", "--format", "triton", "--out", str(tmp_path), "--artifact", "onnx"])
    assert code == 2
    assert "no 'onnx' artifact (available: onnx-int8)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_auto_order_is_the_predictors() -> None:
    from imgclf.export.triton import TRITON_ARTIFACTS
    from imgclf.inference import AUTO_ARTIFACTS

    assert [k for k in AUTO_ARTIFACTS if k in TRITON_ARTIFACTS] == list(TRITON_ARTIFACTS)


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)]
)
def test_repository_files_get_the_umask_permissions(
    tiny_bundle: Path,
    tmp_path: Path,
    set_umask: Callable[[int], object],
    modes: Callable[[Path], dict[str, int]],
    umask: int,
    file_mode: int,
    dir_mode: int,
) -> None:
    """A repository mounted into a container running as another user must be readable."""
    repo = tmp_path / "repo"
    set_umask(umask)
    export_triton_repository(tiny_bundle, repo, model_name="m", version=1)
    export_triton_repository(tiny_bundle, repo, model_name="m", version=2)  # rewrites shared files
    found = modes(repo)
    assert sorted(found) == [
        ".", "m", "m/1", "m/1/model.onnx", "m/2", "m/2/model.onnx",
        "m/config.pbtxt", "m/imgclf.json", "m/labels.txt",
    ]  # fmt: skip
    for name, mode in found.items():
        expected = dir_mode if (repo / name).is_dir() else file_mode
        assert mode == expected, f"{name}: {mode:o} instead of {expected:o}"
