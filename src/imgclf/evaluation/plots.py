"""The report's figures, drawn with matplotlib's object API and saved as PNG.

Figures are built from :class:`matplotlib.figure.Figure` directly, never through ``pyplot``: no
global state, no GUI backend, safe in servers and threads (PNGs are rendered by Agg).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.evaluation.metrics import SplitMetrics
from imgclf.evaluation.results import Mistake

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

DPI = 110
#: Confusion matrices with more classes than this are drawn without numbers in the cells.
MAX_ANNOTATED_CLASSES = 25
STAGE_COLORS = ("#f2f2f2", "#ffffff")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def normalized_confusion(confusion: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (each row: where images of that class went); empty rows 0."""
    totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    out = np.zeros(confusion.shape, dtype=np.float64)
    np.divide(confusion, totals, out=out, where=totals > 0)
    return out


def plot_confusion(metrics: SplitMetrics, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix with percentages (and counts) in the cells."""
    names = metrics.class_names
    rates = normalized_confusion(metrics.confusion)
    side = max(4.5, 0.55 * len(names) + 2.5)
    figure = _figure(side + 1.0, side)
    axes = figure.subplots()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"{title}: top-1 {metrics.top1:.1%} on {metrics.count} images")
    if len(names) <= MAX_ANNOTATED_CLASSES:
        _annotate_cells(axes, rates, metrics.confusion)
    return _save(figure, path)


def _annotate_cells(axes: Axes, rates: np.ndarray, counts: np.ndarray) -> None:
    size = 8 if len(rates) <= 12 else 6
    for (row, col), rate in np.ndenumerate(rates):
        if counts[row, col] == 0:
            continue
        axes.text(
            col,
            row,
            f"{rate:.0%}\n{counts[row, col]}",
            ha="center",
            va="center",
            fontsize=size,
            color="white" if rate > 0.5 else "black",
        )


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    """Values of ``key`` per epoch, NaN where missing."""
    values = [row.get(key) for row in history]
    return np.array([float(v) if isinstance(v, int | float) else math.nan for v in values])


def stage_spans(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
    """``(stage, first, last)`` epoch positions (1-based) of each run of equal stages."""
    spans: list[tuple[str, int, int]] = []
    for position, row in enumerate(history, start=1):
        stage = str(row.get("stage", "train"))
        if spans and spans[-1][0] == stage:
            spans[-1] = (stage, spans[-1][1], position)
        else:
            spans.append((stage, position, position))
    return spans


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Loss and accuracy per epoch, train and validation, with the training stages shaded."""
    from matplotlib.ticker import MaxNLocator

    epochs = np.arange(1, len(history) + 1)
    figure = _figure(10.0, 4.0)
    loss_axes, acc_axes = figure.subplots(1, 2)
    panels = ((loss_axes, "loss", "loss"), (acc_axes, "acc", "accuracy"))
    for axes, key, label in panels:
        for split, style in (("train", "-o"), ("val", "-s")):
            values = _series(history, f"{split}_{key}")
            if np.isfinite(values).any():
                name = "train" if split == "train" else "validation"
                axes.plot(epochs, values, style, markersize=3, label=name)
        _shade_stages(axes, history)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch (all stages)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    loss_axes.set_title("loss per epoch", pad=16)
    acc_axes.set_title("accuracy per epoch", pad=16)
    return _save(figure, path)


def _shade_stages(axes: Axes, history: Sequence[Mapping[str, Any]]) -> None:
    for index, (stage, first, last) in enumerate(stage_spans(history)):
        axes.axvspan(first - 0.5, last + 0.5, color=STAGE_COLORS[index % 2], zorder=0)
        if index > 0:
            axes.axvline(first - 0.5, color="gray", linestyle="--", linewidth=1)
        axes.text(
            (first + last) / 2,
            1.0,
            stage,
            transform=axes.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="dimgray",
        )


def plot_per_class_f1(results: Mapping[str, SplitMetrics], path: Path) -> Path:
    """Horizontal bars of each class's F1, one bar per split."""
    names = next(iter(results.values())).class_names
    figure = _figure(7.0, max(3.0, 0.22 * len(names) * len(results) + 0.25 * len(names) + 1.0))
    axes = figure.subplots()
    height = 0.8 / len(results)
    positions = np.arange(len(names))
    for index, (split, metrics) in enumerate(results.items()):
        scores = [item.f1 for item in metrics.per_class]
        offset = (index - (len(results) - 1) / 2) * height
        bars = axes.barh(positions + offset, scores, height=height, label=split)
        axes.bar_label(bars, fmt="%.2f", padding=2, fontsize=7)
    axes.set_yticks(positions, names)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.08)
    axes.set_xlabel("F1")
    axes.set_title("F1 per class")
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save(figure, path)


def plot_mistakes(
    mistakes: Sequence[Mistake], thumbnails: Sequence[Image.Image], path: Path, title: str
) -> Path:
    """A grid of the most confident mistakes, each captioned true / predicted / probability."""
    columns = min(6, len(mistakes))
    rows = math.ceil(len(mistakes) / columns)
    figure = _figure(2.1 * columns, 2.45 * rows + 0.4)
    figure.suptitle(title)
    grid = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axes in grid:
        axes.axis("off")
    for axes, mistake, thumbnail in zip(grid, mistakes, thumbnails, strict=False):
        axes.imshow(np.asarray(thumbnail))
        axes.set_title(
            f"true: {mistake.true_label}\npred: {mistake.predicted_label} "
            f"({mistake.probability:.0%})",
            fontsize=8,
        )
    return _save(figure, path)
