"""The evaluation report: ``evaluation.json``, PNG figures, a mistakes gallery, HTML and Markdown.

:func:`write_report` lays out one directory::

    out_dir/
      evaluation.json              every metric per split, gaps, mistakes, skipped files, history
      report.html                  the report to open in a browser (links the files below)
      report.md                    the same, for a repository or a pull request
      confusion_<split>.png        row-normalised confusion matrix
      per_class_f1.png             F1 per class and split
      training_curves.png          loss and accuracy per epoch (when the history is known)
      mistakes_<split>.png         the most confident mistakes as one grid
      mistakes/<split>/NN.jpg      their thumbnails, shown in report.html
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgclf import __version__
from imgclf.bundle import Manifest
from imgclf.data import DatasetProblem
from imgclf.data.layout import SPLIT_ORDER
from imgclf.errors import InputError
from imgclf.evaluation import plots
from imgclf.evaluation.metrics import SplitMetrics
from imgclf.evaluation.render import render_html, render_markdown
from imgclf.evaluation.results import (
    GalleryItem,
    Gap,
    Mistake,
    ReportData,
    SplitPredictions,
    worst_mistakes,
)

REPORT_JSON = "evaluation.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
#: Longest side of gallery thumbnails, in pixels.
THUMBNAIL_SIZE = 160
#: Version of the evaluation.json layout.
REPORT_FORMAT_VERSION = 1


def generalization_gaps(
    results: Mapping[str, SplitMetrics], recorded: Mapping[str, Mapping[str, float]]
) -> list[Gap]:
    """Top-1 and loss differences between every pair of splits, earlier split first.

    Splits evaluated now take precedence; splits only the manifest knows (metrics recorded at
    training time) fill in, so evaluating ``test`` alone still shows the train/test gap.
    """
    headline: dict[str, tuple[float, float, str]] = {}
    for split, values in recorded.items():
        if "top1" in values and "loss" in values:
            headline[split] = (float(values["top1"]), float(values["loss"]), "training")
    for split, metrics in results.items():
        headline[split] = (metrics.top1, metrics.loss, "evaluation")
    order = [s for s in SPLIT_ORDER if s in headline] + [
        s for s in headline if s not in SPLIT_ORDER
    ]
    gaps = []
    for index, first in enumerate(order):
        for second in order[index + 1 :]:
            if first not in results and second not in results:
                continue  # both only recorded: nothing this evaluation adds
            top1_a, loss_a, source_a = headline[first]
            top1_b, loss_b, source_b = headline[second]
            recorded_splits = [
                s for s, src in ((first, source_a), (second, source_b)) if src != "evaluation"
            ]
            source = (
                f"{' and '.join(recorded_splits)} as recorded at training"
                if recorded_splits
                else "evaluation"
            )
            gaps.append(Gap(first, second, top1_a - top1_b, loss_b - loss_a, source))
    return gaps


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "split"


def _write_gallery(
    out_dir: Path, split: str, mistakes: Sequence[Mistake]
) -> tuple[list[GalleryItem], str | None]:
    """Thumbnails of the mistakes, and one grid PNG of them."""
    from imgclf.preprocessing import open_image

    folder = out_dir / "mistakes" / _slug(split)
    for stale in folder.glob("*.jpg"):
        stale.unlink()
    if mistakes:
        folder.mkdir(parents=True, exist_ok=True)
    items: list[GalleryItem] = []
    thumbnails = []
    for rank, mistake in enumerate(mistakes, start=1):
        try:
            image = open_image(mistake.path, draft_size=THUMBNAIL_SIZE)
        except (InputError, OSError):
            continue  # the file changed since it was evaluated; leave it out of the gallery
        image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        target = folder / f"{rank:02d}.jpg"
        image.save(target, format="JPEG", quality=85)
        items.append(GalleryItem(mistake, target.relative_to(out_dir).as_posix()))
        thumbnails.append(image)
    grid = out_dir / f"mistakes_{_slug(split)}.png"
    if not items:
        grid.unlink(missing_ok=True)
        return items, None
    titled = f"{split}: most confident mistakes"
    plots.plot_mistakes([item.mistake for item in items], thumbnails, grid, titled)
    return items, grid.name


def _write_figures(
    out_dir: Path,
    results: Mapping[str, SplitMetrics],
    history: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "confusion": {
            split: plots.plot_confusion(
                metrics, out_dir / f"confusion_{_slug(split)}.png", split
            ).name
            for split, metrics in results.items()
        },
        "per_class_f1": plots.plot_per_class_f1(results, out_dir / "per_class_f1.png").name,
        "training_curves": None,
        "mistakes": {},
    }
    if history:
        figures["training_curves"] = plots.plot_training_curves(
            history, out_dir / "training_curves.png"
        ).name
    return figures


def _document(data: ReportData, history: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    """The content of evaluation.json."""
    manifest = data.manifest
    return {
        "format_version": REPORT_FORMAT_VERSION,
        "created_at": data.created_at.isoformat(),
        "imgclf_version": __version__,
        "model": {
            "name": manifest.name,
            "version": manifest.version,
            "backbone": manifest.backbone,
            "labels": manifest.labels,
            "input_size": manifest.preprocess_config.input_size,
            "artifact": data.artifact,
            "created_at": manifest.created_at.isoformat(),
        },
        "data": {"root": str(data.data_root) if data.data_root else None, "notes": data.notes},
        "splits": {
            split: {**metrics.to_dict(), "skipped": data.skipped.get(split, 0)}
            for split, metrics in data.results.items()
        },
        "recorded_metrics": manifest.metrics,
        "gaps": [gap.to_dict() for gap in data.gaps],
        "mistakes": {
            split: [{**item.mistake.to_dict(), "thumbnail": item.thumbnail} for item in items]
            for split, items in data.gallery.items()
        },
        "skipped_files": [
            {"path": str(p.path), "reason": p.reason, "split": p.split} for p in data.problems
        ],
        "figures": data.figures,
        "history": [_json_safe(dict(row)) for row in history] if history else None,
    }


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinities (a diverged epoch) become null: strict JSON has no spelling for them."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def write_report(
    out_dir: str | Path,
    *,
    bundle_manifest: Manifest,
    results: Mapping[str, SplitMetrics],
    predictions: Mapping[str, SplitPredictions] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    gallery_size: int = 24,
    artifact: str | None = None,
    data_root: Path | None = None,
    problems: Sequence[DatasetProblem] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Write evaluation.json, the figures, the mistakes gallery, report.html and report.md.

    Args:
        out_dir: Report directory (created if needed; files from an earlier report are replaced).
        bundle_manifest: Manifest of the evaluated model (name, backbone, labels, recorded metrics).
        results: Split name -> metrics, in the order to show them.
        predictions: Split name -> predictions, for the mistakes gallery and skipped images.
        history: Per-epoch training history (``history.json``) for the training curves.
        gallery_size: Most confident mistakes shown per split (0 for none).
        artifact: The artifact that was evaluated (``onnx-int8``, ``pytorch``, ...).
        data_root: The data folder, as shown in the report.
        problems: Files skipped before evaluation.
        notes: Extra facts to show (e.g. how a split was carved).

    Returns:
        Path of report.html.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = predictions or {}
    all_problems = list(problems) + [p for pred in predictions.values() for p in pred.problems]
    data = ReportData(
        manifest=bundle_manifest,
        results=dict(results),
        artifact=artifact,
        data_root=data_root,
        created_at=datetime.now(UTC),
        skipped={split: sum(p.split == split for p in all_problems) for split in results},
        gaps=generalization_gaps(results, bundle_manifest.metrics),
        gallery={},
        problems=all_problems,
        notes=list(notes),
        figures=_write_figures(out, results, history),
        has_history=bool(history),
    )
    for split, split_predictions in predictions.items():
        mistakes = worst_mistakes(split_predictions, bundle_manifest.labels, gallery_size)
        data.gallery[split], grid = _write_gallery(out, split, mistakes)
        data.figures["mistakes"][split] = grid
    text = json.dumps(_document(data, history), indent=2, allow_nan=False)
    (out / REPORT_JSON).write_text(text + "\n", encoding="utf-8")
    (out / REPORT_MD).write_text(render_markdown(data), encoding="utf-8")
    html_path = out / REPORT_HTML
    html_path.write_text(render_html(data), encoding="utf-8")
    return html_path
