"""Helpers shared by the benchmark scripts: data location, tables, and docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"


def clothing_dir() -> Path:
    """The clothing-small dataset: ``$IMGCLF_CLOTHING_DIR`` or ``../shared`` beside the repo."""
    env = os.environ.get("IMGCLF_CLOTHING_DIR")
    return Path(env) if env else REPO / ".." / "shared" / "datasets" / "clothing-small"


def pick_images(count: int, split: str = "test") -> list[Path]:
    """The first images of each class of a split, interleaved across classes."""
    folder = clothing_dir() / split
    if not folder.is_dir():
        sys.exit(f"clothing dataset not found at {folder}; set IMGCLF_CLOTHING_DIR")
    per_class = [sorted(d.glob("*.jpg")) for d in sorted(folder.iterdir()) if d.is_dir()]
    interleaved = [p for group in zip(*per_class, strict=False) for p in group]
    return interleaved[:count]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def command_line() -> str:
    """The command that is running, as written in the docs it produces."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return " ".join([".venv/bin/python", str(shown), *sys.argv[1:]])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def update_docs(section: str, text: str) -> None:
    """Replace one ``## section`` of docs/benchmarks.md (heading included in ``text``)."""
    content = DOCS.read_text(encoding="utf-8")
    pattern = re.compile(rf"{re.escape(section)}\n.*?(?=\n## |\Z)", re.DOTALL)
    if not pattern.search(content):
        sys.exit(f"{DOCS} has no '{section}' section")
    DOCS.write_text(pattern.sub(lambda _: text.rstrip() + "\n", content, count=1), "utf-8")
