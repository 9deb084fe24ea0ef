"""``imgclf predict``: classify files, folders and URLs from the command line.

Examples::

    imgclf predict shirt.jpg                        # the bundled clothing model
    imgclf predict --model runs/clothing photos/ --format csv > predictions.csv
    imgclf predict https://example.com/hat.jpg --top-k 3 --format jsonl

Unreadable inputs are reported in place (an ``ERROR`` row in the table, an ``error`` field in JSON
lines and CSV) and the run continues; the exit status is 1 if any input failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from imgclf.inference.batch import PredictResult

OUTPUT_FORMATS = ("table", "jsonl", "csv")
#: Show a progress bar (on stderr) from this many inputs up.
PROGRESS_FROM = 20


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``predict`` command."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images (files, folders, http(s) URLs)",
        description=(
            "Classify images with a model bundle. Folders are searched recursively for image "
            "files. Inputs that cannot be read are reported and skipped; the exit status is 1 "
            "if any failed."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file, folder or URL")
    parser.add_argument(
        "--model", "-m", type=Path, help="bundle directory (default: the bundled clothing model)"
    )
    parser.add_argument(
        "--artifact",
        default="auto",
        help="artifact to run: auto (default), onnx-int8, onnx, tflite",
    )
    parser.add_argument("--top-k", "-k", type=_positive, default=3, help="classes per image")
    parser.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="table", help="output format (default table)"
    )
    parser.add_argument("--threads", type=_positive, help="runtime threads (default: all cores)")
    parser.add_argument("--batch-size", type=_positive, default=32, help="images per batch")
    parser.add_argument("--output", "-o", type=Path, help="write results here instead of stdout")
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    """Handle ``imgclf predict``."""
    from imgclf.inference.batch import expand_inputs, predict_many
    from imgclf.inference.predictor import Predictor

    predictor = Predictor.from_bundle(args.model, artifact=args.artifact, threads=args.threads)
    items = expand_inputs(args.inputs)
    if not items:
        print("imgclf predict: no images found in the given folders", file=sys.stderr)
        return 1
    results = predict_many(predictor, items, top_k=args.top_k, batch_size=args.batch_size)
    if len(items) >= PROGRESS_FROM:
        from imgclf.progress import progress

        # On stderr: stdout carries only the results (a terminal bar, else plain lines).
        results = progress(results, desc="predict", total=len(items), unit="img")
    width = max(len(item.name) for item in items)
    if args.output is not None:
        with args.output.open("w", encoding="utf-8", newline="") as out:
            failed = write_results(results, args.format, out, width)
    else:
        failed = write_results(results, args.format, sys.stdout, width)
    if failed:
        print(f"imgclf predict: {failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def write_results(results: Iterable[PredictResult], fmt: str, out: TextIO, width: int = 20) -> int:
    """Write results as they arrive in ``fmt``; returns how many inputs failed."""
    failed = 0
    writer = csv.writer(out) if fmt == "csv" else None
    if writer is not None:
        writer.writerow(["input", "class", "probability", "top_k", "error"])
    elif fmt == "table":
        out.write(f"{'INPUT':<{width}}  {'CLASS':<12} {'PROB':>6}  TOP-K\n")
    for result in results:
        failed += not result.ok
        if fmt == "jsonl":
            out.write(json.dumps(result.to_dict()) + "\n")
        elif writer is not None:
            writer.writerow(_csv_row(result))
        else:
            out.write(_table_row(result, width) + "\n")
        out.flush()
    return failed


def _csv_row(result: PredictResult) -> list[str]:
    prediction = result.prediction
    if prediction is None:
        return [result.input, "", "", "", result.error or ""]
    top_k = ";".join(f"{s.label}:{s.probability:.4f}" for s in prediction.top_k)
    return [result.input, prediction.label, f"{prediction.probability:.4f}", top_k, ""]


def _table_row(result: PredictResult, width: int) -> str:
    prediction = result.prediction
    if prediction is None:
        return f"{result.input:<{width}}  ERROR: {result.error}"
    top_k = ", ".join(f"{s.label} {s.probability:.3f}" for s in prediction.top_k)
    return (
        f"{result.input:<{width}}  {prediction.label:<12} {prediction.probability:>6.3f}  {top_k}"
    )
