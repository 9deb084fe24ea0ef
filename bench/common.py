"""Helpers shared by the benchmark scripts: data location, tables, and docs/benchmarks.md.

Numbers a benchmark produces are quoted in prose (README's headline, the notes under a table) as
``<!-- bench:KEY -->VALUE<!-- /bench -->``. The benchmark records its facts (KEY -> VALUE as
shown) in docs/benchmarks.json when it rewrites its section, and rewrites every such quote in
:data:`FACT_DOCS` from them, so a headline cannot disagree with the table it summarises;
tests/docs/test_bench_facts.py checks the quotes against the JSON. Hand-written notes below a
section's generated part (after :data:`NOTES_MARK`) survive ``--update-docs``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks.md"
FACTS = REPO / "docs" / "benchmarks.json"
#: Documents whose ``<!-- bench:KEY -->`` quotes the benchmarks rewrite.
FACT_DOCS = (
    REPO / "README.md",
    DOCS,
    REPO / "docs" / "deployment.md",
    REPO / "deploy" / "lambda" / "README.md",
)
QUOTE = re.compile(r"<!-- bench:([\w.-]+) -->(.*?)<!-- /bench -->", re.DOTALL)
#: A section's text from this line on is hand-written and kept when the benchmark rewrites it.
NOTES_MARK = "<!-- notes: kept by --update-docs -->"


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


def update_docs(section: str, text: str, facts: Mapping[str, str] | None = None) -> None:
    """Replace one ``## section`` of docs/benchmarks.md (heading included in ``text``).

    The section's hand-written notes (from :data:`NOTES_MARK` on) are kept. With ``facts``, they
    become the section's entry in docs/benchmarks.json and every quote of them is rewritten.
    """
    content = DOCS.read_text(encoding="utf-8")
    pattern = re.compile(rf"{re.escape(section)}\n.*?(?=\n## |\Z)", re.DOTALL)
    match = pattern.search(content)
    if not match:
        sys.exit(f"{DOCS} has no '{section}' section")
    notes = match.group(0).partition(NOTES_MARK)
    new = text.rstrip() + "\n" + (f"\n{NOTES_MARK}{notes[2]}" if notes[1] else "")
    DOCS.write_text(pattern.sub(lambda _: new.rstrip() + "\n", content, count=1), "utf-8")
    if facts is not None:
        record_facts(section, facts)


def load_facts() -> dict[str, dict[str, str]]:
    """docs/benchmarks.json: section heading -> {KEY: VALUE as quoted}."""
    if not FACTS.exists():
        return {}
    loaded: dict[str, dict[str, str]] = json.loads(FACTS.read_text(encoding="utf-8"))
    return loaded


def all_facts() -> dict[str, str]:
    """Every recorded fact, KEY -> VALUE (keys are unique across sections)."""
    return {key: value for facts in load_facts().values() for key, value in facts.items()}


def apply_facts(text: str, facts: Mapping[str, str]) -> str:
    """``text`` with each ``<!-- bench:KEY -->`` quote of a known KEY set to its value."""

    def quote(match: re.Match[str]) -> str:
        key = match.group(1)
        value = facts.get(key, match.group(2))
        return f"<!-- bench:{key} -->{value}<!-- /bench -->"

    return QUOTE.sub(quote, text)


def record_facts(section: str, facts: Mapping[str, str]) -> None:
    """Record a section's facts in docs/benchmarks.json and rewrite their quotes everywhere."""
    recorded = load_facts()
    recorded[section] = dict(facts)
    FACTS.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    every = all_facts()
    for doc in FACT_DOCS:
        text = doc.read_text(encoding="utf-8")
        updated = apply_facts(text, every)
        if updated != text:
            doc.write_text(updated, encoding="utf-8")
