"""What ``imgclf data inspect`` shows: classes, counts per split and class, imbalance, problems.

It also finds byte-identical files: a copy of a test image in train inflates the test score, and
the same image under two classes is a labelling mistake.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from imgclf.data.checks import default_workers
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


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def find_duplicates(dataset: DatasetSplits) -> list[dict[str, Any]]:
    """Groups of byte-identical images, flagged when they span splits or classes.

    Returns:
        One entry per group: ``paths`` (relative to the root), ``files`` (each path with its
        ``split`` and ``class``: a carved split's files sit in another split's folder, so the
        path alone does not say), ``splits``, ``classes``, ``across_splits`` (leaks between
        splits) and ``conflicting_labels``.
    """
    located = [
        (record.path, split, dataset.classes[record.label])
        for split, records in dataset.splits.items()
        for record in records
    ]
    with ThreadPoolExecutor(max_workers=default_workers()) as pool:
        digests = list(pool.map(_file_sha256, [path for path, _, _ in located]))
    groups: dict[str, list[tuple[Path, str, str]]] = defaultdict(list)
    for digest, item in zip(digests, located, strict=True):
        groups[digest].append(item)
    duplicates = []
    for members in groups.values():
        if len(members) < 2:
            continue
        splits = sorted({split for _, split, _ in members})
        classes = sorted({name for _, _, name in members})
        files = sorted(
            (
                {"path": _shown_path(dataset, path), "split": split, "class": name}
                for path, split, name in members
            ),
            key=lambda file: file["path"],
        )
        duplicates.append(
            {
                "paths": [file["path"] for file in files],
                "files": files,
                "splits": splits,
                "classes": classes,
                "across_splits": len(splits) > 1,
                "conflicting_labels": len(classes) > 1,
            }
        )
    return sorted(duplicates, key=lambda group: group["paths"])


def build_report(dataset: DatasetSplits, *, duplicates: bool = True) -> dict[str, Any]:
    """A JSON-serialisable description of a loaded dataset.

    Args:
        dataset: The loaded dataset.
        duplicates: Also hash every image to find identical files (reads every byte once).
    """
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
        "duplicates": find_duplicates(dataset) if duplicates else None,
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
    if report["duplicates"] is not None:
        lines.extend(_duplicate_lines(report["duplicates"], report["carved"]))
    return "\n".join(lines)


def _duplicate_lines(duplicates: list[dict[str, Any]], carved: list[str]) -> list[str]:
    if not duplicates:
        return ["duplicates none"]
    across = sum(group["across_splits"] for group in duplicates)
    conflicting = sum(group["conflicting_labels"] for group in duplicates)
    lines = [
        f"duplicates {len(duplicates)} groups of identical files ({across} across splits, "
        f"{conflicting} with different classes):"
    ]
    for group in duplicates:
        flags = [
            flag
            for flag, present in (
                ("across splits", group["across_splits"]),
                ("different classes", group["conflicting_labels"]),
            )
            if present
        ]
        suffix = f"  [{', '.join(flags)}]" if flags else ""
        files = (_file_with_split(file, carved) for file in group["files"])
        lines.append(f"  {' = '.join(files)}{suffix}")
    return lines


def _file_with_split(file: dict[str, str], carved: list[str]) -> str:
    """``train/cat/a.jpg (validation, carved)``: the split a file is in, not just its folder."""
    split = file["split"]
    return f"{file['path']} ({split}{', carved' if split in carved else ''})"


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
