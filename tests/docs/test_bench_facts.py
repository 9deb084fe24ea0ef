"""Numbers the benchmarks produce are quoted from their recorded facts, never typed twice.

README and the docs quote a benchmark's number as ``<!-- bench:KEY -->VALUE<!-- /bench -->``;
the benchmark records KEY -> VALUE in docs/benchmarks.json when it rewrites its section of
docs/benchmarks.md, and rewrites the quotes (``bench/common.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_common() -> ModuleType:
    """bench/common.py, loaded from its file (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_common()


@pytest.mark.parametrize("doc", common.FACT_DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_quoted_numbers_are_the_recorded_ones(doc: Path) -> None:
    facts = common.all_facts()
    for match in common.QUOTE.finditer(doc.read_text(encoding="utf-8")):
        key, value = match.groups()
        assert key in facts, f"{doc.name} quotes {key!r}, which no benchmark records"
        assert value == facts[key], f"{doc.name} says {value!r} for {key}, the bench {facts[key]!r}"


def test_the_headline_is_quoted() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    quoted = {key for key, _ in common.QUOTE.findall(readme)}
    assert {"accuracy.test_top1", "runtimes.int8_size_mb", "serving.rest_ips"} <= quoted


def test_update_docs_rewrites_quotes_and_keeps_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    docs.write_text(
        "# B\n\n## Speed\n\nold table 9 ms\n\n"
        f"{common.NOTES_MARK}\n\nNotes: <!-- bench:speed.p50 -->9<!-- /bench --> ms.\n\n"
        "## Other\n\nuntouched\n"
    )
    readme.write_text(
        "Fast: <!-- bench:speed.p50 -->9<!-- /bench --> ms, <!-- bench:x -->1<!-- /bench -->.\n"
    )
    monkeypatch.setattr(common, "DOCS", docs)
    monkeypatch.setattr(common, "FACTS", tmp_path / "benchmarks.json")
    monkeypatch.setattr(common, "FACT_DOCS", (readme, docs))

    common.update_docs("## Speed", "## Speed\n\nnew table 5 ms\n", {"speed.p50": "5"})

    assert json.loads((tmp_path / "benchmarks.json").read_text()) == {
        "## Speed": {"speed.p50": "5"}
    }
    assert readme.read_text() == (
        "Fast: <!-- bench:speed.p50 -->5<!-- /bench --> ms, <!-- bench:x -->1<!-- /bench -->.\n"
    )
    text = docs.read_text()
    assert "new table 5 ms" in text and "old table" not in text
    assert "Notes: <!-- bench:speed.p50 -->5<!-- /bench --> ms." in text  # kept, and updated
    assert text.endswith("## Other\n\nuntouched\n")
