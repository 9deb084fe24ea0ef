"""The report: evaluation.json, figures, the mistakes gallery, HTML and Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.bundle import Manifest
from imgclf.data import DatasetProblem, ImageRecord
from imgclf.evaluation.metrics import compute_metrics
from imgclf.evaluation.report import REPORT_JSON, REPORT_MD, generalization_gaps, write_report
from imgclf.evaluation.results import SplitPredictions, worst_mistakes
from imgclf.preprocessing import PreprocessConfig

LABELS = ["cat", "dog & <wolf>"]  # a label that must be escaped in HTML


def _manifest(metrics: dict[str, dict[str, float]] | None = None) -> Manifest:
    return Manifest(
        name="pets",
        version="3",
        backbone="tf_efficientnet_lite0",
        labels=LABELS,
        preprocessing=PreprocessConfig(input_size=32).to_dict(),
        metrics=metrics or {},
    )


def _predictions(tmp_path: Path) -> SplitPredictions:
    """Four images: two right, one wrong at 0.9, one wrong at 0.6."""
    records = []
    for i, color in enumerate([(200, 0, 0), (0, 0, 200), (0, 200, 0), (90, 90, 90)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (40, 30), color).save(path)
        records.append(ImageRecord(path, [0, 1, 0, 1][i]))
    probs = np.array([[0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.6, 0.4]], dtype=np.float32)
    problem = DatasetProblem(tmp_path / "bad.jpg", "corrupt or truncated image", "test")
    return SplitPredictions(records, probs, [problem])


HISTORY = [
    {
        "epoch": 1,
        "stage": "head",
        "train_loss": 0.9,
        "train_acc": 0.6,
        "val_loss": 0.8,
        "val_acc": 0.65,
        "lr": 1e-3,
        "seconds": 2.0,
    },
    {
        "epoch": 2,
        "stage": "head",
        "train_loss": 0.7,
        "train_acc": 0.7,
        "val_loss": math.nan,
        "val_acc": 0.7,
        "lr": 1e-3,
        "seconds": 2.0,
    },
    {
        "epoch": 1,
        "stage": "finetune",
        "train_loss": 0.4,
        "train_acc": 0.85,
        "val_loss": 0.5,
        "val_acc": 0.8,
        "lr": 1e-4,
        "seconds": 5.0,
    },
]


def test_worst_mistakes_are_the_most_confident_wrong_predictions(tmp_path: Path) -> None:
    mistakes = worst_mistakes(_predictions(tmp_path), LABELS, limit=5)

    assert [m.path.name for m in mistakes] == ["img2.png", "img3.png"]
    assert mistakes[0].true_label == "cat"
    assert mistakes[0].predicted_label == "dog & <wolf>"
    assert mistakes[0].probability == pytest.approx(0.9)
    assert mistakes[0].true_probability == pytest.approx(0.1)
    assert len(worst_mistakes(_predictions(tmp_path), LABELS, limit=1)) == 1
    assert worst_mistakes(_predictions(tmp_path), LABELS, limit=0) == []


def test_gaps_use_recorded_metrics_for_splits_not_evaluated() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]])
    test = compute_metrics(probs, np.array([0, 1, 0, 1]), LABELS)  # top1 0.75
    recorded = {"train": {"top1": 0.95, "loss": 0.1}, "validation": {"top1": 0.9, "loss": 0.2}}

    gaps = {(g.first, g.second): g for g in generalization_gaps({"test": test}, recorded)}

    assert set(gaps) == {("train", "test"), ("validation", "test")}  # train->val adds nothing
    assert gaps["train", "test"].top1_drop == pytest.approx(0.95 - 0.75)
    assert gaps["train", "test"].loss_increase == pytest.approx(test.loss - 0.1)
    assert gaps["validation", "test"].source == "validation as recorded at training"


def test_gaps_between_evaluated_splits() -> None:
    perfect = compute_metrics(np.eye(2)[[0, 1]], np.array([0, 1]), LABELS)
    half = compute_metrics(np.eye(2)[[0, 0]], np.array([0, 1]), LABELS)

    (gap,) = generalization_gaps({"test": half, "train": perfect}, {})

    assert (gap.first, gap.second, gap.source) == ("train", "test", "evaluation")
    assert gap.top1_drop == pytest.approx(0.5)
    assert gap.loss_increase == pytest.approx(half.loss - perfect.loss)


def test_report_files_hold_the_numbers(tmp_path: Path) -> None:
    predictions = _predictions(tmp_path)
    metrics = compute_metrics(predictions.probs, predictions.labels, LABELS)
    out = tmp_path / "report"

    html_path = write_report(
        out,
        bundle_manifest=_manifest({"train": {"top1": 1.0, "loss": 0.05}}),
        results={"test": metrics},
        predictions={"test": predictions},
        history=HISTORY,
        artifact="onnx",
        data_root=tmp_path,
    )

    document = json.loads((out / REPORT_JSON).read_text())
    assert document["model"]["name"] == "pets"
    assert document["model"]["artifact"] == "onnx"
    split = document["splits"]["test"]
    assert split["top1"] == pytest.approx(0.5)
    assert split["skipped"] == 1
    assert split["confusion_matrix"] == [[1, 1], [1, 1]]
    assert document["gaps"] == [
        {
            "from": "train",
            "to": "test",
            "top1_drop": pytest.approx(0.5),
            "loss_increase": pytest.approx(metrics.loss - 0.05),
            "source": "train as recorded at training",
        }
    ]
    assert [m["predicted"] for m in document["mistakes"]["test"]] == ["dog & <wolf>", "cat"]
    assert document["skipped_files"][0]["reason"] == "corrupt or truncated image"
    assert document["history"][1]["val_loss"] is None  # NaN is not JSON
    for name in (
        "confusion_test.png",
        "per_class_f1.png",
        "training_curves.png",
        "mistakes_test.png",
        "mistakes/test/01.jpg",
        "mistakes/test/02.jpg",
    ):
        assert (out / name).stat().st_size > 500, name
    with Image.open(out / "confusion_test.png") as image:
        assert image.format == "PNG"

    html = html_path.read_text()
    assert html_path.name == "report.html"
    assert "dog &amp; &lt;wolf&gt;" in html and "<wolf>" not in html
    assert "50.00%" in html  # top-1
    assert f"{metrics.loss:.4f}" in html
    assert 'src="mistakes/test/01.jpg"' in html
    assert 'src="training_curves.png"' in html
    assert "bad.jpg" in html
    assert "tf_efficientnet_lite0" in html
    markdown = (out / REPORT_MD).read_text()
    assert "| test | 4 | 1 | 50.00% |" in markdown
    assert "![test mistakes](mistakes_test.png)" in markdown
    assert "| train -> test | +50.00 pts |" in markdown


def test_report_without_history_or_mistakes(tmp_path: Path) -> None:
    records = [ImageRecord(tmp_path / "a.png", 0), ImageRecord(tmp_path / "b.png", 1)]
    predictions = SplitPredictions(records, np.eye(2, dtype=np.float32))
    metrics = compute_metrics(predictions.probs, predictions.labels, LABELS)
    out = tmp_path / "report"
    (out / "mistakes" / "test").mkdir(parents=True)
    (out / "mistakes" / "test" / "01.jpg").write_bytes(b"stale")  # from an earlier report

    write_report(
        out,
        bundle_manifest=_manifest(),
        results={"test": metrics},
        predictions={"test": predictions},
    )

    document = json.loads((out / REPORT_JSON).read_text())
    assert document["figures"]["training_curves"] is None
    assert document["mistakes"] == {"test": []}
    assert document["gaps"] == []
    assert not (out / "training_curves.png").exists()
    assert not (out / "mistakes" / "test" / "01.jpg").exists()
    assert "No mistakes." in (out / "report.html").read_text()
