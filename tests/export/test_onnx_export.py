"""ONNX fp32 and int8 exports of a real Lite0 bundle: round trips, parity, recorded checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.bundle import load_bundle
from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.export.api import export_bundle
from imgclf.export.checks import run_batched
from imgclf.export.onnx_export import torch_logits
from imgclf.export.reference import generated_pixels
from imgclf.inference import Predictor

pytestmark = pytest.mark.slow
LABELS = ["blue", "green", "red"]  # the fixture bundle's classes
onnx = pytest.importorskip("onnx")


def test_onnx_round_trip_matches_pytorch(onnx_bundle: Path, tmp_path: Path) -> None:
    from imgclf.backbones import load_torch_model

    bundle = load_bundle(onnx_bundle)
    info = bundle.manifest.artifacts["onnx"]
    parity = info.details["parity"]
    assert parity["passed"] is True
    assert parity["images"] == 12
    assert parity["images_from"].startswith("validation split of")
    assert parity["top1_agreement"] == 1.0
    assert info.input_name == "input" and info.output_name == "logits"
    # Independent check on generated images and a batch size the export never saw.
    pixels = generated_pixels(bundle.preprocess_config, 5, seed=7).pixels
    model = load_torch_model(bundle)
    expected = run_batched(lambda b: torch_logits(model, b), pixels, bundle.preprocess_config)
    predictor = Predictor.from_bundle(onnx_bundle, artifact="onnx")
    probs = predictor.run_pixels(pixels)
    exp = np.exp(expected - expected.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, exp / exp.sum(axis=1, keepdims=True), rtol=1e-3, atol=1e-5)


def test_onnx_graph_has_dynamic_batch_and_metadata(onnx_bundle: Path) -> None:
    model = onnx.load(str(onnx_bundle / "model.onnx"))
    onnx.checker.check_model(model)
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input"
    assert isinstance(dims[0], str) and dims[1:] == [3, 64, 64]
    assert [o.name for o in model.graph.output] == ["logits"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["imgclf.labels"]) == LABELS
    assert json.loads(meta["imgclf.preprocessing"])["input_size"] == 64


def test_predictor_classifies_real_images(onnx_bundle: Path, colour_data: Path) -> None:
    predictor = Predictor.from_bundle(onnx_bundle)
    for label in LABELS:
        for path in sorted((colour_data / "test" / label).iterdir())[:2]:
            assert predictor.predict(path).label == label


def test_int8_export_records_its_accuracy_drop(onnx_bundle: Path, colour_data: Path) -> None:
    result = export_bundle(onnx_bundle, "onnx-int8", data=colour_data, calibration_images=12)
    info = load_bundle(onnx_bundle).manifest.artifacts["onnx-int8"]
    assert result.info == info
    assert info.precision == "int8"
    assert info.metrics["val_top1_fp32"] == 100.0
    assert info.metrics["val_top1_drop"] <= 1.0
    assert info.metrics["val_top1_drop"] == pytest.approx(
        info.metrics["val_top1_fp32"] - info.metrics["val_top1_int8"]
    )
    assert info.details["calibration"]["images"] == 12
    kept = info.details["fp32_nodes"]
    assert len(kept) == 2  # the stem convolution and the classifier
    assert info.bytes < 0.4 * load_bundle(onnx_bundle).manifest.artifacts["onnx"].bytes
    model = onnx.load(str(onnx_bundle / "model.int8.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    by_name = {node.name: node for node in model.graph.node}
    stem = by_name[kept[0]]
    assert stem.op_type == "Conv" and stem.input[0] == model.graph.input[0].name  # not dequantised
    assert by_name[kept[1]].op_type in ("Gemm", "MatMul")
    assert "imgclf.labels" in {p.key for p in model.metadata_props}
    predictor = Predictor.from_bundle(onnx_bundle)
    assert predictor.artifact == "onnx-int8"
    assert predictor.predict(next((colour_data / "test" / "red").iterdir())).label == "red"


def test_histogram_calibration_uses_equal_batches(onnx_bundle: Path, colour_data: Path) -> None:
    """Percentile calibration on 20 images: one full batch of 16 is used, the rest dropped."""
    export_bundle(
        onnx_bundle,
        "onnx-int8",
        data=colour_data,
        calibration_images=20,
        calibration_method="percentile",
        force=True,
    )
    info = load_bundle(onnx_bundle).manifest.artifacts["onnx-int8"]
    assert info.details["calibration"] == {
        "method": "percentile",
        "images": 16,
        "images_from": info.details["calibration"]["images_from"],
    }


def test_calibration_holds_one_batch_of_activations_at_a_time(
    onnx_bundle: Path,
    make_dataset: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The calibrator folds each batch into its histograms before the next one runs.

    Given every batch at once, ONNX Runtime keeps all their activations (19.5 GB for 304 images
    of Lite0 at 224 px); batch by batch it holds one batch's.
    """
    from onnxruntime.quantization.calibrate import HistogramCalibrater

    batches_per_collection: list[int] = []
    collect = HistogramCalibrater.collect_data

    def counting(self: HistogramCalibrater, reader: object) -> None:
        seen: list[object] = []
        original = reader.get_next  # type: ignore[attr-defined]

        def get_next() -> object:
            batch = original()
            if batch is not None:
                seen.append(batch)
            return batch

        reader.get_next = get_next  # type: ignore[attr-defined]
        collect(self, reader)
        reader.get_next = original  # type: ignore[attr-defined]
        batches_per_collection.append(len(seen))

    monkeypatch.setattr(HistogramCalibrater, "collect_data", counting)
    data = make_dataset(tmp_path / "data", per_class=16)  # 48 training images
    export_bundle(onnx_bundle, "onnx-int8", data=data, calibration_images=12, force=True)
    assert batches_per_collection == [1]  # a batch of 12
    batches_per_collection.clear()
    export_bundle(onnx_bundle, "onnx-int8", data=data, calibration_images=48, force=True)
    assert batches_per_collection == [1, 1, 1]  # three batches of 16, one at a time


def test_int8_needs_data(onnx_bundle: Path) -> None:
    with pytest.raises(ConfigError, match="int8 export needs images: pass --data"):
        export_bundle(onnx_bundle, "onnx-int8")


def test_dataset_with_other_classes_is_refused(
    onnx_bundle: Path, tmp_path: Path, make_colour_image: Callable[..., Image.Image]
) -> None:
    other = tmp_path / "other"
    for split in ("train", "validation"):
        for name in ("cat", "dog"):
            (other / split / name).mkdir(parents=True)
            make_colour_image((120, 120, 120), 0).save(other / split / name / "0.jpg")
    with pytest.raises(ConfigError, match="differ from the model's labels"):
        export_bundle(onnx_bundle, "onnx-int8", data=other)


def test_serving_bundle_holds_only_the_artifact(onnx_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving"
    result = export_bundle(onnx_bundle, "onnx", out=out, parity_images=4)
    assert result.serving_bundle == out
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    served = load_bundle(out)  # verifies checksums
    assert list(served.manifest.artifacts) == ["onnx"]
    assert served.manifest.artifacts["onnx"].details["parity"]["passed"] is True
    assert served.labels == LABELS
    assert Predictor.from_bundle(out).artifact == "onnx"
    (out / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError):
        Predictor.from_bundle(out)


def test_serving_bundle_refuses_a_foreign_folder(onnx_bundle: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "my-documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(ConfigError, match="not a model bundle"):
        export_bundle(onnx_bundle, "onnx", out=foreign, parity_images=2)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_export_from_serving_bundle_is_refused(onnx_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving"
    export_bundle(onnx_bundle, "onnx", out=out, parity_images=2)
    with pytest.raises(BundleError, match="no PyTorch weights"):
        export_bundle(out, "onnx")


def test_corrupt_weights_are_refused(torch_bundle: Path) -> None:
    (torch_bundle / "model.pt").write_bytes(b"not a state dict")
    with pytest.raises(ChecksumMismatchError):
        export_bundle(torch_bundle, "onnx")


def test_weights_for_another_model_are_a_bundle_error(torch_bundle: Path) -> None:
    import torch

    bundle = load_bundle(torch_bundle)
    torch.save({"weight": torch.zeros(3)}, torch_bundle / "model.pt")
    bundle.add_artifact("pytorch", torch_bundle / "model.pt", format="pytorch")
    with pytest.raises(BundleError, match="do not fit tf_efficientnet_lite0"):
        export_bundle(torch_bundle, "onnx")


def test_int8_exports_fp32_first_when_missing(torch_bundle: Path, colour_data: Path) -> None:
    export_bundle(torch_bundle, "onnx-int8", data=colour_data, calibration_images=6)
    artifacts = load_bundle(torch_bundle).manifest.artifacts
    assert {"pytorch", "onnx", "onnx-int8"} <= set(artifacts)


def test_exported_files_get_the_umask_permissions(
    onnx_bundle: Path,
    colour_data: Path,
    tmp_path: Path,
    set_umask: Callable[[int], object],
    modes: Callable[[Path], dict[str, int]],
) -> None:
    """Bundles and serving bundles copied into images are read by unprivileged users."""
    out = tmp_path / "serving"
    set_umask(0o022)
    export_bundle(onnx_bundle, "onnx", out=out, parity_images=2)
    export_bundle(onnx_bundle, "onnx-int8", data=colour_data, calibration_images=6)
    written = modes(onnx_bundle)
    for name in ("model.onnx", "model.int8.onnx", "manifest.json"):
        assert written[name] == 0o644, f"{name}: {written[name]:o}"
    assert modes(out) == {".": 0o755, "manifest.json": 0o644, "model.onnx": 0o644}
