"""What ``imgclf data inspect`` shows: classes, counts per split and class, imbalance, problems."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgclf.data.dataset import DatasetSplits


def imbalance_ratio(counts: dict[str, int]) -> float | None:
    """Largest class count over the smallest; None when a class has no images (infinite)."""
    if not counts or min(counts.values()) == 0:
        return None
    return max(counts.values()) / min(counts.values())


def _shown_path(dataset: DatasetSplits, path: Path) -> str:
    try:
        return str(path.relative_to(dataset.root))
    except ValueError:
        return str(path)


def build_report(dataset: DatasetSplits) -> dict[str, Any]:
    """A JSON-serialisable description of a loaded dataset."""
    counts = {split: dataset.counts(split) for split in dataset.splits}
    return {
        "root": str(dataset.root),
        "classes": list(dataset.classes),
        "splits": {split: len(records) for split, records in dataset.splits.items()},
        "carved": list(dataset.carved),
        "counts": counts,
        "imbalance": {split: imbalance_ratio(per_class) for split, per_class in counts.items()},
        "problems": [
            {"path": _shown_path(dataset, p.path), "split": p.split, "reason": p.reason}
            for p in dataset.problems
        ],
    }


def format_report(report: dict[str, Any]) -> str:
    """Render :func:`build_report` output as a plain-text table for people."""
    splits = list(report["splits"])
    lines = [
        f"dataset   {report['root']}",
        f"classes   {len(report['classes'])}: {', '.join(report['classes'])}",
    ]
    if report["carved"]:
        lines.append(
            f"split     {', '.join(report['carved'])} made by a seeded stratified split "
            "(no folder for it)"
        )
    lines.append("")
    lines.extend(_count_table(report, splits))
    problems = report["problems"]
    lines.append("")
    lines.append(f"problems  {len(problems) or 'none'}" + (" files skipped:" if problems else ""))
    lines.extend(f"  {p['path']}: {p['reason']}" for p in problems)
    return "\n".join(lines)


def _count_table(report: dict[str, Any], splits: list[str]) -> list[str]:
    first = max([len("imbalance"), *(len(name) for name in report["classes"])])
    widths = [max(len(split), 7) for split in splits]

    def row(label: str, cells: list[str]) -> str:
        padded = (cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        return f"{label.ljust(first)}  " + "  ".join(padded)

    lines = [row("class", splits)]
    for name in report["classes"]:
        lines.append(row(name, [str(report["counts"][split][name]) for split in splits]))
    lines.append(row("total", [str(report["splits"][split]) for split in splits]))
    ratios = [report["imbalance"][split] for split in splits]
    lines.append(row("imbalance", ["inf" if r is None else f"{r:.2f}" for r in ratios]))
    lines.append(f"{'':{first}}  (imbalance = largest class / smallest class)")
    return lines
