"""Training benchmark: head-only wall time and peak memory of ``imgclf train`` runs.

    python bench/bench_training.py [--runs head-intel,head-clothing,head-cifar] [--update-docs]

Each run is a real ``imgclf train`` subprocess (fp32 unless the CPU runs bf16 natively, which the
run decides and records), timed from start to exit; its peak resident memory is the child's own
``ru_maxrss`` (``os.wait4``), not the sum of the machine's. Runs:

* ``head-intel``, ``head-clothing``, ``head-cifar``: ``--epochs 0`` (head only) on the shared
  intel-scenes, clothing-small and cifar10-small copies;
* ``default-cifar``: the default recipe on cifar10-small with one fine-tuning epoch
  (``--epochs 1``): every buffer of the full run is allocated (decoded splits, crop sources,
  training activations, then the export's calibration), only the remaining epochs are skipped.

Test top-1 comes with its 95% Wilson interval (from the manifest).

The table names the CPU's capability (``torch.backends.cpu.get_cpu_capability()``), the thread
count and the load average before each run (the machine is shared; wall times are noisy under
load, so the child's CPU time is recorded too). ``--update-docs`` rewrites the "Training: head-only
time and memory" section of docs/benchmarks.md with the command that produced it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, command_line, markdown_table, update_docs

SECTION = "## Training: head-only time and memory"
DATASETS = REPO / ".." / "shared" / "datasets"


@dataclass(frozen=True)
class Run:
    """One benchmarked ``imgclf train`` invocation and its goal."""

    name: str
    dataset: str
    options: tuple[str, ...]
    goal: str


RUNS = {
    run.name: run
    for run in (
        Run("head-intel", "intel-scenes", ("--epochs", "0"), "<= 8 min"),
        Run("head-clothing", "clothing-small", ("--epochs", "0"), "<= 3 min"),
        Run("head-cifar", "cifar10-small", ("--epochs", "0"), "peak < 2 GB"),
        Run("default-cifar", "cifar10-small", ("--epochs", "1"), "peak < 2 GB"),
    )
}


@dataclass
class Measured:
    """What one run gave."""

    run: Run
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    load_before: str
    precision: str
    image_size: str
    test_top1: str


def _load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def _manifest_facts(out: Path) -> tuple[str, str, str]:
    """Precision, serving size and test top-1 from the run's manifest (or its checkpoint run)."""
    path = out / "manifest.json"
    if not path.is_file():
        return "see log", "-", "- (stopped)"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    precision = manifest["training"]["precision"]
    size = str(manifest["preprocessing"]["input_size"])
    test = manifest["metrics"].get("test", {})
    if "top1" not in test:
        return precision["name"], size, "-"
    interval = f"{test['top1_ci95_low']:.1%}-{test['top1_ci95_high']:.1%}"
    return precision["name"], size, f"{test['top1']:.2%} ({interval})"


def _echo_stderr(child: subprocess.Popen[str]) -> list[str]:
    """Copy the child's stderr to ours in a thread; the returned list holds its last line."""
    last = [""]

    def pump() -> None:
        assert child.stderr is not None
        for line in child.stderr:
            sys.stderr.write(line)
            last[0] = line.split(" [")[0].strip()

    threading.Thread(target=pump, daemon=True).start()
    return last


def measure(run: Run, threads: int, workdir: Path, time_limit_s: float | None) -> Measured:
    """Run one ``imgclf train`` subprocess; wall time and its own peak RSS.

    With ``time_limit_s`` the child is killed at the limit: its peak RSS so far is still its own
    (``wait4``), and the table says where it was stopped.
    """
    out = workdir / run.name
    args = [sys.executable, "-m", "imgclf", "train", str(DATASETS / run.dataset), "-o", str(out)]
    args += ["--threads", str(threads), "--no-report", *run.options]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    load = _load_average()
    print(f"# {run.name}: {' '.join(args[1:])} (load {load})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    child = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    last_line = _echo_stderr(child)
    timer = threading.Timer(time_limit_s, child.kill) if time_limit_s else None
    if timer is not None:
        timer.start()
    _, status, usage = os.wait4(child.pid, 0)  # the child's own rusage, even when killed
    wall = time.perf_counter() - start
    if timer is not None:
        timer.cancel()
    code = os.waitstatus_to_exitcode(status)
    if code == -signal.SIGKILL:
        precision, size, top1 = "see log", "-", f"stopped at {time_limit_s:.0f} s: {last_line[0]}"
    elif code != 0:
        sys.exit(f"{run.name} failed with exit code {code}")
    else:
        precision, size, top1 = _manifest_facts(out)
    cpu = usage.ru_utime + usage.ru_stime
    measured = Measured(run, wall, cpu, usage.ru_maxrss / 1024, load, precision, size, top1)
    print(f"# {run.name}: {measured}", file=sys.stderr, flush=True)
    return measured


def render(results: list[Measured], threads: int) -> str:
    """The docs section: a table, the machine and the command."""
    import torch

    rows = [
        [
            m.run.name,
            m.run.dataset,
            " ".join(m.run.options),
            m.image_size,
            m.precision,
            f"{m.wall_s / 60:.1f} min",
            f"{m.cpu_s / 60:.1f} min",
            f"{m.peak_rss_mb / 1024:.2f} GB",
            m.test_top1,
            m.run.goal,
            m.load_before,
        ]
        for m in results
    ]
    header = ["run", "dataset", "options", "px", "precision", "wall", "CPU", "peak RSS"]
    header += ["test top-1 (95% CI)"]
    header += ["goal", "load avg before (1/5/15 min)"]
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command_line()}`",
            "",
            f"CPU capability {torch.backends.cpu.get_cpu_capability()} ({os.cpu_count()} cores), "
            f"{threads} torch threads, torch {torch.__version__}. Each run is one `imgclf train` "
            "subprocess; CPU is its user + system time (all threads): on a shared machine the wall "
            "time grows with the load, while CPU / threads estimates the wall time on a quiet "
            "one. Peak RSS is that process's own maximum resident set.",
            "",
            markdown_table(header, rows),
        ]
    )


def main() -> None:
    """Run the selected benchmarks, print the table, optionally update the docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="head-intel,head-clothing,head-cifar")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="kill each run after this many seconds (peak memory so far is still measured)",
    )
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    names = args.runs.split(",")
    unknown = set(names) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {sorted(RUNS)}")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as workdir:
        results = [
            measure(RUNS[name], args.threads, Path(workdir), args.time_limit) for name in names
        ]
    text = render(results, args.threads)
    print(text)
    if args.update_docs:
        update_docs(SECTION, text)


if __name__ == "__main__":
    main()
