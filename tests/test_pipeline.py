"""``imgclf train`` leaves a bundle that serves: training, then the ONNX and int8 exports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.bundle import Bundle, load_bundle
from imgclf.errors import ExportError

#: A tiny, quick run: 64-px inputs, head only, fp32 (bf16 is slow on CPUs without native support).
QUICK = ["--image-size", "64", "--epochs", "0", "--batch-size", "8", "--threads", "2"]


def _imgclf(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgclf", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


@pytest.mark.slow
def test_train_then_predict_and_serve_the_run(color_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    run = tmp_path / "run"
    trained = _imgclf(
        "train", str(color_dataset), "-o", str(run), *QUICK, "--no-bf16", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert f"exported onnx-int8: {run / 'model.int8.onnx'}" in trained.stdout
    assert f"next: imgclf serve -m {run}" in trained.stdout
    bundle = load_bundle(run)  # every artifact's checksum verified
    assert set(bundle.manifest.artifacts) == {"pytorch", "onnx", "onnx-int8"}
    int8 = bundle.manifest.artifacts["onnx-int8"]
    assert int8.metrics["val_top1_drop"] <= 1.0  # the accuracy check ran and passed
    assert int8.details["calibration"]["images_from"].startswith("train split of")
    photo = color_dataset / "test" / "green" / "green_000.jpg"
    predicted = _imgclf("predict", "-m", str(run), str(photo), "--format", "jsonl", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["class"] == "green"


@pytest.mark.slow
def test_no_export_keeps_only_the_weights(color_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from imgclf.pipeline import train_and_export
    from imgclf.training import TrainConfig

    config = TrainConfig(image_size=64, epochs=0, batch_size=8, threads=2, bf16=False)
    result = train_and_export(color_dataset, tmp_path / "run", config, export=False, report=False)
    assert result is not None
    assert list(result.bundle.manifest.artifacts) == ["pytorch"]
    assert result.exports.artifacts == [] and result.exports.refused == {}


def test_a_refused_int8_model_leaves_the_fp32_one_serving(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 accuracy check failing is reported, not fatal: the fp32 model serves."""
    from imgclf.export import api
    from imgclf.pipeline import export_for_serving

    def fake_export(bundle: Bundle, format: str, **options: object) -> api.ExportResult:
        if format == "onnx-int8":
            raise ExportError("int8 model refused: validation top-1 dropped 3.00 points")
        return api.ExportResult(format, bundle.root / "model.onnx")

    monkeypatch.setattr(api, "export_bundle", fake_export)
    exports = export_for_serving(load_bundle(tiny_bundle))
    assert exports.artifacts == ["onnx"]
    assert exports.refused == {
        "onnx-int8": "int8 model refused: validation top-1 dropped 3.00 points"
    }


def test_a_failed_fp32_export_fails_the_run(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imgclf.export import api
    from imgclf.pipeline import export_for_serving

    def fake_export(bundle: Bundle, format: str, **options: object) -> api.ExportResult:
        raise ExportError("ONNX parity check failed")

    monkeypatch.setattr(api, "export_bundle", fake_export)
    with pytest.raises(ExportError, match="parity"):
        export_for_serving(load_bundle(tiny_bundle))
