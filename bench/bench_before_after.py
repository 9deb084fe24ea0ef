"""Before/after: the serving, gateway and runtime benchmarks on two source trees, interleaved.

A structural change (such as one inference core under every transport) must not cost speed. This
runs ``bench_serving.py``, ``bench_gateway.py`` and ``bench_runtimes.py`` from this checkout with
``PYTHONPATH`` pointing at the *before* tree (e.g. ``git archive main``) and at this tree in
turn, alternating which goes first each round so both see the same machine noise, reads the
Markdown tables they print and reports the median of each headline figure per tree and the ratio
after/before. The benchmark scripts are the same for both trees, so every row is the same command.

Usage::

    .venv/bin/python bench/bench_before_after.py --before /tmp/main/src [--rounds 2] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from common import REPO, clothing_dir, command_line, markdown_table, update_docs

SECTION = "## Before/after: one inference core"
BUNDLED = REPO / "src" / "imgclf" / "models" / "clothing-lite0"


@dataclass(frozen=True)
class Bench:
    """One benchmark script: its arguments, the columns naming a row, the figures compared."""

    script: str
    args: tuple[str, ...]
    keys: tuple[str, ...]
    metrics: tuple[str, ...]


BENCHES = (
    Bench(
        "bench_serving.py",
        ("--requests", "300", "--ceiling-seconds", "3"),
        ("mode",),
        ("images/s", "p50 ms"),
    ),
    Bench("bench_gateway.py", ("--rounds", "1"), ("mode", "clients"), ("images/s", "p50 ms")),
    Bench(
        "bench_runtimes.py",
        ("--no-torch", "--bundle", str(BUNDLED), "--rounds", "2", "--iters", "20"),
        ("runtime",),
        ("p50 ms", "JPEG->label p50 ms", "batch 16 img/s", "cold start s"),
    ),
)

#: (bench script, row label, metric) -> tree ("before"/"after") -> values over rounds.
Figures = dict[tuple[str, str, str], dict[str, list[float]]]


def parse_tables(text: str, bench: Bench) -> dict[tuple[str, str], float]:
    """``(row label, metric) -> value`` from the Markdown tables a benchmark printed."""
    found: dict[tuple[str, str], float] = {}
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|-: "):
            continue
        row = dict(zip(header, cells, strict=False))
        if not all(key in row for key in bench.keys):
            continue
        label = " / ".join(row[key] for key in bench.keys)
        for metric in bench.metrics:
            try:
                found[(label, metric)] = float(row.get(metric, "-"))
            except ValueError:
                continue
    return found


def run_bench(bench: Bench, tree: Path) -> dict[tuple[str, str], float]:
    """Run one benchmark with ``tree`` first on the import path; its parsed figures."""
    env = {**os.environ, "PYTHONPATH": str(tree), "IMGCLF_CLOTHING_DIR": str(clothing_dir())}
    command = [sys.executable, str(REPO / "bench" / bench.script), *bench.args]
    done = subprocess.run(
        command, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{bench.script} failed on {tree}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return parse_tables(done.stdout, bench)


def measure(trees: dict[str, Path], rounds: int, record: Path) -> None:
    """Every benchmark on every tree, ``rounds`` times, alternating which tree goes first.

    Each run's figures are appended to ``record`` (JSON lines) as soon as it ends, so an
    interrupted measurement keeps what it finished.
    """
    for round_index in range(rounds):
        order = list(trees) if round_index % 2 == 0 else list(reversed(trees))
        for bench in BENCHES:
            for name in order:
                found = run_bench(bench, trees[name])
                with record.open("a", encoding="utf-8") as handle:
                    for (label, metric), value in found.items():
                        line = [bench.script, label, metric, name, value]
                        handle.write(json.dumps(line) + "\n")
                print(f"round {round_index + 1}: {bench.script} on {name} done", file=sys.stderr)


def read_record(record: Path) -> Figures:
    """The figures recorded so far, grouped by benchmark row and tree."""
    figures: Figures = {}
    for line in record.read_text(encoding="utf-8").splitlines():
        script, label, metric, tree, value = json.loads(line)
        figures.setdefault((script, label, metric), {}).setdefault(tree, []).append(value)
    return figures


def report_rows(figures: Figures) -> list[list[str]]:
    """One row per figure: medians before and after and their ratio."""
    rows = []
    for (script, label, metric), values in figures.items():
        if "before" not in values or "after" not in values:
            continue
        before, after = statistics.median(values["before"]), statistics.median(values["after"])
        ratio = f"{after / before:.2f}" if before else "-"
        rows.append([script, label, metric, f"{before:.1f}", f"{after:.1f}", ratio])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="src/ of the before tree")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per tree")
    parser.add_argument(
        "--record", type=Path, default=Path("before-after.jsonl"), help="figures, one per line"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="report what --record holds, measure nothing"
    )
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite '{SECTION}'")
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": REPO / "src"}
    load_before = os.getloadavg()[0]
    if not args.report_only:
        args.record.unlink(missing_ok=True)
        measure(trees, args.rounds, args.record)
    figures = read_record(args.record)
    load_after = os.getloadavg()[0]
    header = ["benchmark", "row", "figure", "before", "after", "after/before"]
    table = markdown_table(header, report_rows(figures))
    note = (
        f"Medians of up to {args.rounds} rounds per tree (of the runs in the record), the tree "
        "going first alternating by round; "
        "the benchmark scripts are this checkout's for both trees, so each row ran the same "
        f"command. Load average (1 min) before/after: {load_before:.1f}/{load_after:.1f}; the "
        "machine is shared, so read ratios, not absolute numbers."
    )
    print(table)
    print(note)
    if args.update_docs:
        update_docs(SECTION, f"{SECTION}\n\nCommand: `{command_line()}`\n\n{table}\n\n{note}\n")


if __name__ == "__main__":
    main()
