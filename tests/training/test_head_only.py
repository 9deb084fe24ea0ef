"""Head-only training is one pass per split, and its metrics equal a fresh evaluation's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
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
    """Count images through the network per pass name (``embed`` and ``predict_probs``)."""
    seen: Counter[str] = Counter()

    def counted(function: Callable[..., Any], name: str) -> Callable[..., Any]:
        def wrapper(model: Any, pixels: np.ndarray, *args: Any, **kwargs: Any) -> Any:
            seen[f"{name} {kwargs.get('desc')}"] += len(pixels)
            return function(model, pixels, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(trainer, "embed", counted(trainer.embed, "embed"))
    monkeypatch.setattr(trainer, "predict_probs", counted(trainer.predict_probs, "forward"))
    return seen


def test_head_only_reads_each_split_once(
    color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_passes(monkeypatch)
    config = TrainConfig(**HEAD_ONLY, bf16=False)
    result = trainer.train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    assert set(result.metrics) == {"validation", "test"}
    assert seen == {
        "embed features train 1/1": 36,
        "embed features validation 1/1": 36,
        "embed evaluate test": 36,
    }


def test_flipped_pass_and_train_evaluation_only_on_request(
    color_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_passes(monkeypatch)
    config = TrainConfig(**HEAD_ONLY, bf16=False, head_flip=True, eval_train=True)
    result = trainer.train(color_dataset, tmp_path / "run", config, report=False)
    assert result is not None
    assert set(result.metrics) == {"train", "validation", "test"}
    assert seen == {
        "embed features train 1/2": 36,
        "embed features train 2/2 (flipped)": 36,
        "embed features validation 1/1": 36,
        "embed evaluate test": 36,
    }  # train and validation metrics reuse the head stage's features


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
        "precision: fp32 (--no-bf16 given)",
        "features train 1/1: 36/36 img",
        "features validation 1/1: 36/36 img",
        "head fit: 3/3 fit",
        "epoch 1/1: 5/5 batch",
        "validate 1/1: 36/36 img",
        "evaluate test: 36/36 img",
    ):
        assert any(line.startswith(phase) for line in lines), (phase, done.stderr)
    assert "bundle:" in done.stdout and "decode" not in done.stdout


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
