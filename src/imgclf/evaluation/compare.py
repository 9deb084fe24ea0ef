"""Two models on the same images: which is better, and by more than the noise of the split?

Each model's top-1 has its own interval, but two models scored on the same photos get most of them
right or wrong together, so comparing those intervals says little (two models 1 point apart on
372 photos have overlapping intervals whatever their real difference). The paired view counts the
photos on which they *disagree* about being right:

- **McNemar's exact test**: if the models were equally good, each photo only one of them gets
  right would be a fair coin's flip; the two-sided p-value is how often a fair coin splits that
  many flips at least this unevenly.
- **Paired bootstrap interval** of the top-1 difference: the photos resampled with replacement,
  each keeping both models' outcomes (a multinomial over right/right-only-this/right-only-other),
  2.5th to 97.5th percentile of the difference over :data:`BOOTSTRAP_ROUNDS` rounds, seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.errors import BundleError, DatasetError
from imgclf.evaluation.results import SplitPredictions
from imgclf.evaluation.splits import carving_settings

if TYPE_CHECKING:
    from imgclf.bundle import Bundle
    from imgclf.evaluation.runner import EvaluationRun

#: Bootstrap resamples of the paired difference.
BOOTSTRAP_ROUNDS = 10_000


@dataclass(frozen=True)
class PairedComparison:
    """Two models on the same images of one split.

    Attributes:
        split: The split compared.
        count: Images both models read (the unreadable ones are left out of both).
        top1: This model's top-1 on them.
        other_top1: The other model's top-1 on them.
        only_this: Images this model gets right and the other wrong.
        only_other: Images the other model gets right and this one wrong.
        p_value: Two-sided exact McNemar p-value of ``only_this`` against ``only_other``.
        difference_ci95: 95% paired bootstrap interval of ``top1 - other_top1``.
    """

    split: str
    count: int
    top1: float
    other_top1: float
    only_this: int
    only_other: int
    p_value: float
    difference_ci95: tuple[float, float]

    @property
    def difference(self) -> float:
        """``top1 - other_top1``."""
        return self.top1 - self.other_top1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (``comparison.json``)."""
        return {
            "split": self.split,
            "count": self.count,
            "top1": self.top1,
            "other_top1": self.other_top1,
            "difference": self.difference,
            "difference_ci95": list(self.difference_ci95),
            "only_this": self.only_this,
            "only_other": self.only_other,
            "mcnemar_p": self.p_value,
        }

    def describe(self, other_name: str) -> str:
        """One line for the console."""
        low, high = self.difference_ci95
        return (
            f"{self.split}: {self.count} images, {self.top1:.2%} vs {other_name} "
            f"{self.other_top1:.2%}: {100 * self.difference:+.2f} points "
            f"(95% CI {100 * low:+.2f} to {100 * high:+.2f}); right only here "
            f"{self.only_this}, only there {self.only_other}; McNemar p = {self.p_value:.3g}"
        )


def mcnemar_exact(only_this: int, only_other: int) -> float:
    """Two-sided exact McNemar p-value: the discordant images as a fair coin's flips."""
    flips = only_this + only_other
    if flips == 0:
        return 1.0
    tail = sum(math.comb(flips, k) for k in range(min(only_this, only_other) + 1))
    return min(1.0, float(2 * tail / 2**flips))


def paired_bootstrap_interval(
    count: int, only_this: int, only_other: int, *, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float]:
    """95% interval of the top-1 difference, resampling images with both outcomes kept."""
    if count <= 0:
        return 0.0, 0.0
    shares = [only_this / count, only_other / count, 1 - (only_this + only_other) / count]
    draws = np.random.default_rng(seed).multinomial(count, shares, size=rounds)
    differences = (draws[:, 0] - draws[:, 1]) / count
    low, high = np.percentile(differences, [2.5, 97.5])
    return float(low), float(high)


def column_order(labels: list[str], other_labels: list[str]) -> list[int]:
    """The other model's output column for each of this model's classes, matched by name.

    Raises:
        BundleError: The two models do not classify the same classes.
    """
    if sorted(labels) != sorted(other_labels):
        missing = sorted(set(labels) ^ set(other_labels))
        raise BundleError(
            "cannot compare models with different classes "
            f"(in one and not the other: {', '.join(missing)})"
        )
    return [other_labels.index(name) for name in labels]


def compare_predictions(
    this: SplitPredictions,
    other: SplitPredictions,
    order: list[int],
    split: str,
) -> PairedComparison:
    """Pair two models' predictions of one split by image path.

    ``order`` maps this model's classes to the other's output columns (:func:`column_order`).
    Images only one of them could read are left out of both.

    Raises:
        DatasetError: No image was read by both.
    """
    other_rows: dict[Path, int] = {record.path: i for i, record in enumerate(other.records)}
    mine = [i for i, record in enumerate(this.records) if record.path in other_rows]
    if not mine:
        raise DatasetError(f"split {split!r}: no image was read by both models; nothing to compare")
    theirs = [other_rows[this.records[i].path] for i in mine]
    labels = this.labels[mine]
    right = this.probs[mine].argmax(axis=1) == labels
    other_right = other.probs[theirs][:, order].argmax(axis=1) == labels
    count = len(mine)
    only_this = int((right & ~other_right).sum())
    only_other = int((other_right & ~right).sum())
    return PairedComparison(
        split=split,
        count=count,
        top1=float(right.mean()),
        other_top1=float(other_right.mean()),
        only_this=only_this,
        only_other=only_other,
        p_value=mcnemar_exact(only_this, only_other),
        difference_ci95=paired_bootstrap_interval(count, only_this, only_other),
    )


def compare_run(
    run: EvaluationRun,
    this: Bundle,
    other: Bundle,
    *,
    artifact: str = "auto",
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
) -> tuple[list[PairedComparison], list[str]]:
    """Run ``other`` on the images ``run`` evaluated; compare it split by split.

    Writes ``comparison.json`` next to the run's report. Returns the comparisons and the
    warnings about them (:func:`split_warnings`).

    Raises:
        BundleError: ``other`` cannot be opened or classifies other classes.
        DatasetError: A split has no image both models could read.
    """
    from imgclf.evaluation.runner import ModelRunner

    order = column_order(this.labels, other.labels)
    runner = ModelRunner.open(other, artifact, threads=threads)
    comparisons = []
    skipped = 0
    for name, records in run.data.splits.items():
        theirs = runner.predict(records, batch_size=batch_size, split=name, progress=progress)
        skipped += len(theirs.problems)
        comparisons.append(compare_predictions(run.predictions[name], theirs, order, name))
    warnings = split_warnings(run, this, other)
    document = {
        "this": {
            "name": this.manifest.name,
            "version": this.manifest.version,
            "artifact": run.artifact,
        },
        "other": {
            "name": other.manifest.name,
            "version": other.manifest.version,
            "artifact": runner.artifact,
            "root": str(other.root),
            "unreadable_images": skipped,
        },
        "splits": [comparison.to_dict() for comparison in comparisons],
        "warnings": warnings,
    }
    path = run.report.parent / "comparison.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return comparisons, warnings


def split_warnings(run: EvaluationRun, this: Bundle, other: Bundle) -> list[str]:
    """Why the comparison may favour ``other``.

    Splits carved from a folder follow this model's seed and fractions; ``other``, trained with
    other ones, may have trained on some of these images.
    """
    if run.data.carved_with is None:
        return []
    theirs = carving_settings(other.manifest.training)
    if theirs == run.data.carved_with:
        return []
    return [
        f"the splits were carved with {run.data.carved_with}, but {other.manifest.name} was "
        f"trained on a split carved with {theirs}: some of these images may be in its training "
        "data, which favours it"
    ]
