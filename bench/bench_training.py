"""Training benchmark: head-only wall time and peak memory of ``imgclf train`` runs.

    python bench/bench_training.py [--runs head-intel,head-clothing,head-cifar] [--update-docs]
    python bench/bench_training.py --processes [--dataset clothing-small] [--epochs 3] [--repeats 1]

Each run is a real ``imgclf train`` subprocess (fp32 unless the CPU runs bf16 natively, which the
run decides and records), timed from start to exit; its peak resident memory is the child's own
``ru_maxrss`` (``os.wait4``), not the sum of the machine's. Runs:

* ``head-intel``, ``head-clothing``, ``head-cifar``: ``--epochs 0`` (head only) on the shared
  intel-scenes, clothing-small and cifar10-small copies;
* ``default-cifar``: the default recipe on cifar10-small with one fine-tuning epoch
  (``--epochs 1``): every buffer of the full run is allocated (decoded splits, crop sources,
  training activations, then the export's calibration), only the remaining epochs are skipped;
* ``recipe-cifar``, ``recipe-intel``: the default recipe, no options, on cifar10-small and
  intel-scenes, for the accuracy goals of the Intel and CIFAR systems; they are written to a
  section of their own ("Accuracy: the default recipe on Intel scenes and CIFAR-10").

Test top-1 comes with its 95% Wilson interval (from the manifest).

``--processes`` instead compares two layouts of the same run on the same CPUs: ``--nproc 2
--threads 1`` (two DistributedDataParallel processes, gloo) against ``--threads 2`` (one process),
each repeated ``--repeats`` times; it reports the median fine-tuning epoch time (training only,
from ``history.json``), the head stage's time (its feature extraction sharded over the processes),
the whole run's wall time and test top-1, and the ratio of the epoch medians.

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
#: The default recipe's accuracy on the other systems' datasets (``recipe-*`` runs).
RECIPE_SECTION = "## Accuracy: the default recipe on Intel scenes and CIFAR-10"
PROCESSES_SECTION = "## Training: 2 processes x 1 thread vs 1 process x 2 threads"
#: The two layouts ``--processes`` compares: name -> ``imgclf train`` options.
LAYOUTS = {
    "1 process x 2 threads": ("--threads", "2"),
    "2 processes x 1 thread": ("--nproc", "2", "--threads", "1"),
}
DATASETS = REPO / ".." / "shared" / "datasets"


@dataclass(frozen=True)
class Run:
    """One benchmarked ``imgclf train`` invocation and its goal."""

    name: str
    dataset: str
    options: tuple[str, ...]
    goal: str
    section: str = SECTION


RUNS = {
    run.name: run
    for run in (
        Run("head-intel", "intel-scenes", ("--epochs", "0"), "<= 8 min"),
        Run("head-clothing", "clothing-small", ("--epochs", "0"), "<= 3 min"),
        Run("head-cifar", "cifar10-small", ("--epochs", "0"), "peak < 2 GB"),
        Run("default-cifar", "cifar10-small", ("--epochs", "1"), "peak < 2 GB"),
        Run("recipe-cifar", "cifar10-small", (), ">= 92% in <= 60 min", RECIPE_SECTION),
        Run("recipe-intel", "intel-scenes", (), ">= 93.5% in <= 60 min", RECIPE_SECTION),
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
    epochs: str = "-"


def _load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def _manifest_facts(out: Path) -> tuple[str, str, str, str]:
    """Precision, serving size, test top-1 and epochs from the run's manifest."""
    path = out / "manifest.json"
    if not path.is_file():
        return "see log", "-", "- (stopped)", "-"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    training = manifest["training"]
    size = str(manifest["preprocessing"]["input_size"])
    epochs = f"{training['epochs_run']} of {training['epochs']}, best {training['best_epoch']}"
    test = manifest["metrics"].get("test", {})
    if "top1" not in test:
        return training["precision"]["name"], size, "-", epochs
    interval = f"{test['top1_ci95_low']:.1%}-{test['top1_ci95_high']:.1%}"
    return training["precision"]["name"], size, f"{test['top1']:.2%} ({interval})", epochs


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
    epochs = "-"
    if code == -signal.SIGKILL:
        precision, size, top1 = "see log", "-", f"stopped at {time_limit_s:.0f} s: {last_line[0]}"
    elif code != 0:
        sys.exit(f"{run.name} failed with exit code {code}")
    else:
        precision, size, top1, epochs = _manifest_facts(out)
    cpu = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss / 1024
    measured = Measured(run, wall, cpu, rss, load, precision, size, top1, epochs)
    print(f"# {run.name}: {measured}", file=sys.stderr, flush=True)
    return measured


def render(results: list[Measured], threads: int, section: str = SECTION) -> str:
    """The docs section: a table, the machine and the command."""
    import torch

    rows = [
        [
            m.run.name,
            m.run.dataset,
            " ".join(m.run.options),
            m.image_size,
            m.epochs,
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
    header = ["run", "dataset", "options", "px", "epochs", "precision", "wall", "CPU", "peak RSS"]
    header += ["test top-1 (95% CI)"]
    header += ["goal", "load avg before (1/5/15 min)"]
    return "\n".join(
        [
            section,
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


@dataclass
class LayoutRun:
    """One ``imgclf train`` run of a layout: its epoch times and results."""

    layout: str
    epoch_s: list[float]
    head_s: float
    wall_s: float
    test_top1: float
    load_before: str


def run_layout(layout: str, data: Path, options: list[str], out: Path) -> LayoutRun:
    """Train once with ``layout``'s options; read the epoch times from ``history.json``."""
    args = [sys.executable, "-m", "imgclf", "train", str(data), "-o", str(out)]
    args += [*LAYOUTS[layout], *options, "--no-report", "--no-export"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    load = _load_average()
    print(f"# {layout}: {' '.join(args[1:])} (load {load})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = subprocess.run(args, env=env, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{layout} failed with exit code {done.returncode}")
    history = json.loads((out / "history.json").read_text(encoding="utf-8"))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    epochs = [row["seconds"] for row in history if row["stage"] == "finetune"]
    head = next(row["seconds"] for row in history if row["stage"] == "head")
    top1 = manifest["metrics"]["test"]["top1"]
    return LayoutRun(layout, epochs, head, wall, top1, load)


def render_layouts(
    runs: list[LayoutRun], data: Path, options: list[str]
) -> tuple[str, dict[str, str]]:
    """The docs section for ``--processes`` and its facts."""
    import statistics

    import torch

    rows, medians = [], {}
    for layout in LAYOUTS:
        mine = [run for run in runs if run.layout == layout]
        epoch = statistics.median(s for run in mine for s in run.epoch_s)
        medians[layout] = epoch
        rows.append(
            [
                layout,
                str(sum(len(run.epoch_s) for run in mine)),
                f"{epoch:.1f} s",
                f"{statistics.median(run.head_s for run in mine):.1f} s",
                f"{statistics.median(run.wall_s for run in mine):.0f} s",
                " / ".join(f"{run.test_top1:.2%}" for run in mine),
                " ; ".join(run.load_before for run in mine),
            ]
        )
    one, two = medians["1 process x 2 threads"], medians["2 processes x 1 thread"]
    ratio = one / two
    header = ["layout", "epochs", "median epoch", "head stage", "median wall", "test top-1"]
    header += ["load avg before (1/5/15 min)"]
    text = "\n".join(
        [
            PROCESSES_SECTION,
            "",
            f"Command: `{command_line()}`",
            "",
            f"Dataset {data.name}, `imgclf train {' '.join(options)}`; CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()} ({os.cpu_count()} cores), torch "
            f"{torch.__version__}. Epoch = one fine-tuning pass over the training split "
            "(training steps only; validation excluded), from the run's history.json; head "
            "stage = feature extraction (sharded over the processes) and the head fit. "
            f"2 processes x 1 thread ran an epoch in {ratio:.2f}x the speed of 1 process x 2 "
            "threads (median epoch of 1 process / median epoch of 2 processes).",
            "",
            markdown_table(header, rows),
        ]
    )
    facts = {"ddp.epoch_speedup": f"{ratio:.2f}x"}
    return text, facts


def measure_processes(args: argparse.Namespace) -> None:
    """``--processes``: both layouts, ``--repeats`` times each, alternating."""
    data = Path(args.dataset)
    if not data.is_dir():
        data = DATASETS / args.dataset
    if not data.is_dir():
        sys.exit(f"dataset not found: {args.dataset}")
    options = ["--epochs", str(args.epochs), "--patience", str(args.epochs)]
    if args.image_size:
        options += ["--image-size", str(args.image_size)]
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-processes-") as workdir:
        for repeat in range(args.repeats):
            for index, layout in enumerate(LAYOUTS):
                out = Path(workdir) / f"{repeat}-{index}"
                runs.append(run_layout(layout, data, options, out))
    text, facts = render_layouts(runs, data, options)
    print(text)
    if args.update_docs:
        update_docs(PROCESSES_SECTION, text, facts)


def main() -> None:
    """Run the selected benchmarks, print the table, optionally update the docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="head-intel,head-clothing,head-cifar")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--processes",
        action="store_true",
        help="compare 2 processes x 1 thread with 1 process x 2 threads (epoch times)",
    )
    parser.add_argument("--dataset", default="clothing-small", help="--processes: the data")
    parser.add_argument("--epochs", type=int, default=3, help="--processes: epochs per run")
    parser.add_argument("--image-size", type=int, default=None, help="--processes: input size")
    parser.add_argument("--repeats", type=int, default=1, help="--processes: runs per layout")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="kill each run after this many seconds (peak memory so far is still measured)",
    )
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    if args.processes:
        measure_processes(args)
        return
    names = args.runs.split(",")
    unknown = set(names) - set(RUNS)
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}; choose from {sorted(RUNS)}")
    with tempfile.TemporaryDirectory(prefix="bench-training-") as workdir:
        results = [
            measure(RUNS[name], args.threads, Path(workdir), args.time_limit) for name in names
        ]
    for section in dict.fromkeys(m.run.section for m in results):
        text = render([m for m in results if m.run.section == section], args.threads, section)
        print(text)
        if args.update_docs:
            update_docs(section, text)


if __name__ == "__main__":
    main()
