"""Predictions of one split, the mistakes worth looking at first, and what a report shows.

The report data classes live here, below both :mod:`~imgclf.evaluation.report` (which builds
them and writes the files) and :mod:`~imgclf.evaluation.render` (which turns them into HTML and
Markdown), so neither of those imports the other's caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.bundle import Manifest
from imgclf.data import DatasetProblem, ImageRecord
from imgclf.evaluation.metrics import SplitMetrics


@dataclass
class SplitPredictions:
    """What a model predicted for the readable images of one split.

    Attributes:
        records: The images that were read, aligned with ``probs``.
        probs: Class probabilities, shape ``(len(records), C)``.
        problems: Images that could not be read, with the reason; not in ``records``.
    """

    records: list[ImageRecord]
    probs: np.ndarray
    problems: list[DatasetProblem] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """True label of each record, int64 ``(N,)``."""
        return np.fromiter((r.label for r in self.records), dtype=np.int64, count=len(self.records))

    @property
    def paths(self) -> list[Path]:
        """Path of each record."""
        return [record.path for record in self.records]


@dataclass(frozen=True)
class Mistake:
    """A wrong prediction, for the gallery.

    Attributes:
        path: The image.
        true_label: Its class.
        predicted_label: The class the model chose.
        probability: The probability the model gave its (wrong) choice.
        true_probability: The probability the model gave the right class.
    """

    path: Path
    true_label: str
    predicted_label: str
    probability: float
    true_probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "path": str(self.path),
            "true": self.true_label,
            "predicted": self.predicted_label,
            "probability": self.probability,
            "true_probability": self.true_probability,
        }


def worst_mistakes(
    predictions: SplitPredictions, class_names: list[str], limit: int
) -> list[Mistake]:
    """The ``limit`` most confident wrong predictions, most confident first.

    Confident mistakes are the most informative ones: mislabelled images, ambiguous classes, or
    a shortcut the model learned.
    """
    if limit <= 0 or not predictions.records:
        return []
    probs = predictions.probs
    labels = predictions.labels
    predicted = probs.argmax(axis=1)
    confidence = probs[np.arange(len(labels)), predicted]
    wrong = np.flatnonzero(predicted != labels)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
    return [
        Mistake(
            path=predictions.records[i].path,
            true_label=class_names[labels[i]],
            predicted_label=class_names[predicted[i]],
            probability=float(confidence[i]),
            true_probability=float(probs[i, labels[i]]),
        )
        for i in order
    ]


@dataclass(frozen=True)
class GalleryItem:
    """A mistake and its thumbnail file (relative to the report directory)."""

    mistake: Mistake
    thumbnail: str


@dataclass(frozen=True)
class Gap:
    """How much worse the model does on a later split than on an earlier one.

    Attributes:
        first: The earlier split (e.g. ``train``).
        second: The later split (e.g. ``test``).
        top1_drop: ``top1(first) - top1(second)``; positive means worse on ``second``.
        loss_increase: ``loss(second) - loss(first)``; positive means worse on ``second``.
        source: Where the numbers come from: ``evaluation`` when both splits were evaluated
            here, otherwise which split's numbers are the ones recorded in the bundle manifest
            at training (e.g. ``train as recorded at training``).
    """

    first: str
    second: str
    top1_drop: float
    loss_increase: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "from": self.first,
            "to": self.second,
            "top1_drop": self.top1_drop,
            "loss_increase": self.loss_increase,
            "source": self.source,
        }


@dataclass
class ReportData:
    """Everything the HTML and Markdown renderers show."""

    manifest: Manifest
    results: dict[str, SplitMetrics]
    artifact: str | None
    data_root: Path | None
    created_at: datetime
    skipped: dict[str, int]
    gaps: list[Gap]
    gallery: dict[str, list[GalleryItem]]
    problems: list[DatasetProblem]
    notes: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    has_history: bool = False
