"""``imgclf evaluate``: metrics, plots and a readable report for a bundle on any split or folder.

Examples::

    imgclf evaluate runs/clothing --data datasets/clothing-small              # the test split
    imgclf evaluate runs/clothing --data datasets/clothing-small --split all  # train/val/test gap
    imgclf evaluate --data new-photos/ --artifact onnx                        # the bundled model
    imgclf evaluate runs/new --data datasets/clothing-small --compare runs/old # paired test
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgclf.evaluation.runner import EvaluationRun

#: ``auto`` runs an exported model when the bundle has one, else the PyTorch weights.
ARTIFACTS = ("auto", "pytorch", "onnx", "onnx-int8", "tflite")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model bundle on a split or folder and write a report",
        description=(
            "Evaluate a model bundle: top-1/top-3 accuracy, loss, per-class precision/recall/F1, "
            "confusion matrices, training curves, the most confident mistakes and the "
            "train/validation/test gap, written as evaluation.json, report.html and report.md."
        ),
    )
    parser.add_argument(
        "bundle", nargs="?", default=None, help="bundle directory (default: the bundled model)"
    )
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        help="dataset root (train/validation/test folders) or one folder of class folders",
    )
    parser.add_argument(
        "--split",
        default=None,
        help=(
            "test, validation, train, all, a comma-separated list, or the name of another "
            "folder of class folders inside --data (default: test; a plain folder of class "
            "folders is evaluated whole)"
        ),
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report directory (default: BUNDLE/evaluation)"
    )
    parser.add_argument("--artifact", choices=ARTIFACTS, default="auto", help="model to run")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch")
    parser.add_argument(
        "--gallery-size",
        type=_non_negative_int,
        default=24,
        help="confident mistakes shown per split (0: no gallery)",
    )
    parser.add_argument("--threads", type=_positive_int, default=None, help="runtime threads")
    parser.add_argument(
        "--compare",
        metavar="OTHER",
        default=None,
        help=(
            "also run bundle OTHER on the same images and compare the two, paired: top-1 "
            "difference with a 95%% bootstrap interval and McNemar's exact test "
            "(written to comparison.json)"
        ),
    )
    parser.set_defaults(handler=run_evaluate)


def default_out_dir(bundle_root: Path | None, model_name: str) -> Path:
    """``BUNDLE/evaluation`` for a bundle given by path; ``./evaluation-<name>`` otherwise.

    The bundled model lives inside the installed package, which is no place for reports.
    """
    if bundle_root is None:
        return Path(f"evaluation-{model_name}")
    return bundle_root / "evaluation"


def run_evaluate(args: argparse.Namespace) -> int:
    """Handle ``imgclf evaluate``."""
    from imgclf.bundle import load_bundle
    from imgclf.evaluation.runner import run_evaluation

    bundle = load_bundle(args.bundle, verify=False)
    other = None
    if args.compare is not None:  # refused before the first model runs, not after
        from imgclf.evaluation.compare import column_order

        other = load_bundle(args.compare, verify=False)
        column_order(bundle.labels, other.labels)
    splits = [s.strip() for s in args.split.split(",") if s.strip()] if args.split else None
    given_root = bundle.root if args.bundle is not None else None
    out_dir = args.out or default_out_dir(given_root, bundle.manifest.name)
    run = run_evaluation(
        bundle,
        args.data,
        out_dir=out_dir,
        splits=splits,
        artifact=args.artifact,
        gallery_size=args.gallery_size,
        batch_size=args.batch_size,
        threads=args.threads,
        progress=sys.stderr.isatty(),
    )
    print(format_summary(run))
    if other is not None:
        from imgclf.evaluation.compare import compare_run

        comparisons, warnings = compare_run(
            run,
            bundle,
            other,
            artifact=args.artifact,
            batch_size=args.batch_size,
            threads=args.threads,
            progress=sys.stderr.isatty(),
        )
        print(f"compared with {args.compare} ({other.manifest.name}), paired on the same images:")
        for comparison in comparisons:
            print("  " + comparison.describe(other.manifest.name))
        for warning in warnings:
            print(f"  warning: {warning}")
    return 0


def format_summary(run: EvaluationRun) -> str:
    """The short table printed at the end of ``imgclf evaluate``."""
    width = max(len("split"), *(len(name) for name in run.results))
    lines = [
        f"{'split':<{width}}  {'images':>6}  {'top1':>7}  {'95% CI':>13}  {'top3':>7}  "
        f"{'loss':>7}  {'macro F1':>8}"
    ]
    for name, metrics in run.results.items():
        low, high = metrics.top1_ci95
        interval = f"{low:.1%}-{high:.1%}"
        lines.append(
            f"{name:<{width}}  {metrics.count:>6}  {metrics.top1:>7.2%}  {interval:>13}  "
            f"{metrics.top3:>7.2%}  {metrics.loss:>7.4f}  {metrics.macro_f1:>8.4f}"
        )
    if run.skipped:
        lines.append(f"skipped {run.skipped} unreadable or non-image files (listed in the report)")
    lines.append(f"artifact: {run.artifact}")
    lines.append(f"report: {run.report}")
    return "\n".join(lines)
