"""Head-only training is one pass per split, and its metrics equal a fresh evaluation's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imgclf.backbones import load_torch_model
from imgclf.evaluation import compute_metrics
from imgclf.training import trainer
from imgclf.training.finetune import predict_probs
from imgclf.training.images import decode_split
from imgclf.training.recipe import TrainConfig

HEAD_ONLY = {"image_size": 64, "batch_size": 8, "epochs": 0, "workers": 2, "threads": 2}
SRC = Path(__file__).resolve().parents[2] / "src"


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count images through the network per pass name (feature extractors and ``predict_probs``).

    Every extractor is ONNX Runtime's here (fp32 on a CPU), which the counts check too.
    """
    seen: Counter[str] = Counter()
    make = trainer.feature_extractor

    class Counted:
        def __init__(self, extract: Any) -> None:
            self.extract, self.engine = extract, extract.engine

        def __call__(self, pixels: np.ndarray, **options: Any) -> Any:
            seen[f"{self.engine} {options.get('desc')}"] += len(pixels)
            return self.extract(pixels, **options)

    def counted_extractor(*args: Any, **kwargs: Any) -> Counted:
        return Counted(make(*args, **kwargs))

    def counted_forward(model: Any, pixels: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        seen[f"forward {kwargs.get('desc')}"] += len(pixels)
        return predict_probs(model, pixels, *args, **kwargs)

    monkeypatch.setattr(trainer, "feature_extractor", counted_extractor)
    monkeypatch.setattr(trainer, "predict_probs", counted_forward)
    return seen


@pytest.mark.slow  # trains a model: seconds to minutes
def test_head_only_reads_each_split_once(
    color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_passes(monkeypatch)
    config = TrainConfig(**HEAD_ONLY, bf16=False)
    result = trainer.train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    assert set(result.metrics) == {"validation", "test"}
    assert seen == {
        "onnxruntime features train 1/1": 36,
        "onnxruntime features validation 1/1": 36,
        "onnxruntime evaluate test": 36,
    }


@pytest.mark.slow  # trains a model: seconds to minutes
def test_flipped_pass_and_train_evaluation_only_on_request(
    color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_passes(monkeypatch)
    config = TrainConfig(**HEAD_ONLY, bf16=False, head_flip=True, eval_train=True)
    result = trainer.train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    assert set(result.metrics) == {"train", "validation", "test"}
    assert seen == {
        "onnxruntime features train 1/2": 36,
        "onnxruntime features train 2/2 (flipped)": 36,
        "onnxruntime features validation 1/1": 36,
        "onnxruntime evaluate test": 36,
    }  # train and validation metrics reuse the head stage's features


@pytest.mark.slow  # trains a model: seconds to minutes
def test_reused_features_give_the_metrics_of_a_fresh_evaluation(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    # Noisy colours so the head is not perfect and the loss is not trivially ~0.
    data = write_color_dataset(tmp_path / "data", per_class=10, size=(40, 40))
    config = TrainConfig(**HEAD_ONLY, bf16=False, eval_train=True)
    result = trainer.train(data, tmp_path / "run", config, report=False)
    assert result is not None
    bundle = result.bundle
    model = load_torch_model(bundle)
    preprocess = bundle.preprocess_config
    for split in ("train", "validation", "test"):
        paths = sorted((data / split).glob("*/*.jpg"))
        labels = [bundle.labels.index(p.parent.name) for p in paths]
        decoded = decode_split(paths, labels, preprocess, keep_train_images=False, workers=2)
        probs = predict_probs(model, decoded.eval_pixels, preprocess, trainer.pick_device())
        fresh = compute_metrics(probs, decoded.labels, bundle.labels).summary()
        recorded = bundle.manifest.metrics[split]
        assert recorded.keys() == fresh.keys()
        for key, value in fresh.items():
            assert recorded[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (split, key)


@pytest.mark.slow  # trains a model: seconds to minutes
def test_cli_names_every_phase_in_plain_lines(color_dataset: Path, tmp_path: Path) -> None:
    """A real ``imgclf train`` with stderr in a log: readable phase lines, results on stdout."""
    out = tmp_path / "run"
    args = ["train", str(color_dataset), "-o", str(out), "--image-size", "64", "--epochs", "1"]
    args += ["--batch-size", "8", "--threads", "2", "--no-report", "--no-bf16"]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "imgclf", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    for phase in (
        "decode 1/3 splits (train): 36/36 img",
        "decode 3/3 splits (test): 36/36 img",
        "features: onnxruntime fp32 (--no-bf16 given)",
        "features train 1/1: 36/36 img",
        "features validation 1/1: 36/36 img",
        "head fit: 300/300 step",
        "epoch 1/1: 5/5 batch",
        "validate 1/1: 36/36 img",
        "evaluate test: 36/36 img",
    ):
        assert any(line.startswith(phase) for line in lines), (phase, done.stderr)
    assert "bundle:" in done.stdout and "decode" not in done.stdout


@pytest.mark.slow  # trains a model: seconds to minutes
@pytest.mark.parametrize(("eval_train", "kept"), [(False, 0), (True, 36)])
def test_train_pixels_are_freed_before_fine_tuning_unless_evaluated(
    color_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    eval_train: bool,
    kept: int,
) -> None:
    seen: list[int] = []
    finetune = trainer._finetune

    def spy(model: Any, prep: trainer.Prepared, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(prep.splits["train"].eval_pixels))
        return finetune(model, prep, *args, **kwargs)

    monkeypatch.setattr(trainer, "_finetune", spy)
    config = TrainConfig(**{**HEAD_ONLY, "epochs": 1}, bf16=False, eval_train=eval_train)
    result = trainer.train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    assert seen == [kept]
    assert ("train" in result.metrics) is eval_train


@pytest.mark.slow  # builds a backbone and exports it to ONNX (8-10 s on a busy machine)
def test_onnx_features_equal_torch_features_and_flip_alike(color_dataset: Path) -> None:
    """ONNX Runtime computes the head stage's features on a CPU; they are torch's features."""
    import torch

    from imgclf.backbones import create_model, default_preprocess_config
    from imgclf.training.head import OnnxFeatures, TorchFeatures, feature_extractor

    preprocess = default_preprocess_config("efficientnet_lite0", 64)
    model = create_model("efficientnet_lite0", 3, pretrained=False).eval()
    paths = sorted((color_dataset / "train").glob("*/*.jpg"))[:6]
    pixels = decode_split(paths, [0] * len(paths), preprocess, keep_train_images=False).eval_pixels
    cpu = torch.device("cpu")
    extract = feature_extractor(model, preprocess, cpu)
    assert isinstance(extract, OnnxFeatures) and extract.engine == "onnxruntime"
    reference = TorchFeatures(model, preprocess, cpu)
    for flip in (False, True):
        ours = extract(pixels, flip=flip, desc="features")
        theirs = reference(pixels, flip=flip, desc="features")
        assert ours.shape == theirs.shape == (6, model.num_features)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    mirrored = extract(pixels[:, :, ::-1].copy(), desc="features")
    torch.testing.assert_close(mirrored, extract(pixels, flip=True, desc="features"))


def test_features_fall_back_to_torch_when_the_network_does_not_export(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    from imgclf.backbones import create_model, default_preprocess_config
    from imgclf.errors import ExportError
    from imgclf.training import head

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ExportError("torch could not export X to ONNX: unsupported op")

    monkeypatch.setattr(head, "torch_to_onnx", refuse)
    preprocess = default_preprocess_config("efficientnet_lite0", 64)
    model = create_model("efficientnet_lite0", 3, pretrained=False).eval()
    cpu = torch.device("cpu")
    with caplog.at_level("WARNING", logger=head.__name__):
        assert head.feature_extractor(model, preprocess, cpu).engine == "torch"
    assert "unsupported op" in caplog.text


@pytest.mark.slow  # builds a backbone and exports it to ONNX (8-10 s on a busy machine)
def test_reduced_precision_runs_in_torch_and_races_onnx_runtime_fp32(
    color_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 must beat the fp32 engine really used on a CPU: ONNX Runtime, not torch."""
    import torch

    from imgclf.backbones import create_model, default_preprocess_config
    from imgclf.training import head
    from imgclf.training.precision import Precision

    preprocess = default_preprocess_config("efficientnet_lite0", 32)
    model = create_model("efficientnet_lite0", 3, pretrained=False).eval()
    cpu = torch.device("cpu")
    onnx = head.onnx_features(model, preprocess, cpu)
    assert onnx is not None
    calls: list[str] = []
    real = onnx.__call__

    class Spy:
        engine, precision = onnx.engine, onnx.precision

        def __call__(self, pixels: np.ndarray, **options: Any) -> Any:
            calls.append(f"onnx {len(pixels)} {options.get('desc')!r}")
            return real(pixels, **options)

    probe = head.probe_for(model, np.zeros((20, 32, 32, 3), np.uint8), preprocess, cpu, Spy())
    assert probe(None) > 0 and calls == ["onnx 16 ''"]  # fp32 timed on ONNX Runtime, no bar
    assert probe(torch.bfloat16) > 0 and len(calls) == 1  # bf16 in torch
    bf16 = Precision("bf16", "test")
    assert head.feature_extractor(model, preprocess, cpu, bf16, onnx).engine == "torch"
    chosen = head.feature_extractor(model, preprocess, cpu, Precision("fp32", "test"), onnx)
    assert chosen is onnx and chosen.precision.reason == "test"
