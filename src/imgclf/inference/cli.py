"""``imgclf predict``: classify files, folders and URLs from the command line.

Examples::

    imgclf predict shirt.jpg                        # the bundled clothing model
    imgclf predict --model runs/clothing photos/ --format csv > predictions.csv
    imgclf predict https://example.com/hat.jpg --top-k 3 --format jsonl
    imgclf predict -m s3://models/clothing/v3/ s3://photos/2026/ -o results/      # Parquet
    imgclf predict -m runs/clothing manifest.parquet --engine ray --address auto -o results/

Unreadable inputs are reported in place (an ``ERROR`` row in the table, an ``error`` field in JSON
lines, CSV and Parquet) and the run continues; the exit status is 1 if any input failed, 0
otherwise. With ``-o`` a Parquet directory, ``.jsonl`` or ``.csv`` is appended to, and inputs it
already holds are skipped (a re-run resumes). See :mod:`imgclf.inference.bulk`.
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
    from imgclf.inference.batch import InputItem, PredictResult
    from imgclf.inference.bundle_source import FetchOptions
    from imgclf.inference.predictor import Predictor

OUTPUT_FORMATS = ("table", "jsonl", "csv", "parquet")
ENGINES = ("local", "ray")
#: Show a progress bar (on stderr) from this many inputs up.
PROGRESS_FROM = 20


def positive_int(text: str) -> int:
    """An argparse type for counts that must be at least 1."""
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
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image file, folder, URL, s3://bucket/prefix/, or a manifest (.parquet, .csv, "
        ".jsonl with a path or url column)",
    )
    parser.add_argument(
        "--model",
        "-m",
        help="bundle directory, .tar.gz, s3://bucket/prefix/ or https://host/bundle.tar.gz"
        "[#sha256=HEX] (default: the bundled clothing model)",
    )
    parser.add_argument("--model-cache", type=Path, help="cache for a remote --model")
    parser.add_argument(
        "--artifact",
        default="auto",
        help="artifact to run: auto (default), onnx-int8, onnx, tflite",
    )
    parser.add_argument("--top-k", "-k", type=positive_int, default=3, help="classes per image")
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        help="output format (default: by the -o suffix, a directory is Parquet; else table)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        help="runtime threads (default: the CPUs this process may use)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=32, help="images per batch")
    parser.add_argument(
        "--output",
        "-o",
        help="write rows here: a Parquet directory or s3://bucket/prefix/, .jsonl or .csv "
        "(appended; inputs already written are skipped)",
    )
    _add_engine_options(parser)
    parser.set_defaults(handler=run_predict)


def _add_engine_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine", choices=ENGINES, default="local", help="local (default) or a Ray cluster"
    )
    group.add_argument(
        "--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: local Ray)"
    )
    group.add_argument(
        "--actors", default="1:4", help="Ray actors, N or MIN:MAX (autoscaled; default 1:4)"
    )
    group.add_argument(
        "--actor-cpus", type=positive_int, default=1, help="CPUs (and threads) per Ray actor"
    )


def run_predict(args: argparse.Namespace) -> int:
    """Handle ``imgclf predict``."""
    from imgclf.errors import ConfigError
    from imgclf.inference.bulk import expand_sources, output_format

    bulk_format = output_format(args.output, args.format)
    if args.format == "parquet" and args.output is None:
        raise ConfigError("--format parquet writes a dataset directory: give -o DIR")
    if args.engine == "ray" and (args.output is None or bulk_format is None):
        raise ConfigError("--engine ray writes rows to -o: a directory (Parquet), .jsonl or .csv")
    items = expand_sources(args.inputs)
    if not items:
        print("imgclf predict: no images found in the given folders", file=sys.stderr)
        return 1
    if args.output is not None and bulk_format is not None:
        return _run_bulk(args, items, bulk_format)
    return _run_streaming(args, items)


def _fetch_options(args: argparse.Namespace) -> FetchOptions:
    from imgclf.inference.bundle_source import FetchOptions

    if args.model_cache is None:
        return FetchOptions(artifact=args.artifact)
    return FetchOptions(artifact=args.artifact, cache_dir=args.model_cache)


def _run_bulk(args: argparse.Namespace, items: list[InputItem], fmt: str) -> int:
    """Rows appended to ``-o``, skipping inputs it already has (both engines)."""
    if args.engine == "ray":
        from imgclf.inference.ray_engine import RayOptions, parse_actors, run_ray

        low, high = parse_actors(args.actors)
        options = RayOptions(
            address=args.address, min_actors=low, max_actors=high, actor_cpus=args.actor_cpus,
            batch_size=args.batch_size,
            model_cache=None if args.model_cache is None else str(args.model_cache),
        )  # fmt: skip
        summary = run_ray(
            args.model, items, args.output, fmt,
            artifact=args.artifact, top_k=args.top_k, options=options,
        )  # fmt: skip
    else:
        from imgclf.inference.bulk import predict_to_output

        predictor = _open_predictor(args)
        summary = predict_to_output(
            predictor, items, args.output, fmt, top_k=args.top_k, batch_size=args.batch_size
        )
    print(
        f"imgclf predict: {summary.written} rows written to {args.output} "
        f"({summary.skipped} already there, {summary.failed} failed)",
        file=sys.stderr,
    )
    return 1 if summary.failed else 0


def _open_predictor(args: argparse.Namespace) -> Predictor:
    from imgclf.inference.bundle_source import fetch_bundle
    from imgclf.inference.predictor import Predictor

    root = fetch_bundle(args.model, options=_fetch_options(args))
    return Predictor.from_bundle(root, artifact=args.artifact, threads=args.threads)


def _run_streaming(args: argparse.Namespace, items: list[InputItem]) -> int:
    """Today's path: results in order to stdout (or a file), as a table, JSON lines or CSV."""
    from imgclf.inference.batch import predict_many
    from imgclf.inference.bulk import source_fetcher

    predictor = _open_predictor(args)
    results = predict_many(
        predictor, items, top_k=args.top_k, batch_size=args.batch_size, fetch=source_fetcher()
    )
    if len(items) >= PROGRESS_FROM:
        from imgclf.progress import progress

        # On stderr: stdout carries only the results (a terminal bar, else plain lines).
        results = progress(results, desc="predict", total=len(items), unit="img")
    width = max(len(item.name) for item in items)
    model = (predictor.name, predictor.version)
    fmt = args.format or "table"
    if args.output is not None:
        with Path(args.output).open("w", encoding="utf-8", newline="") as out:
            failed = write_results(results, fmt, out, width, model)
    else:
        failed = write_results(results, fmt, sys.stdout, width, model)
    if failed:
        print(f"imgclf predict: {failed} of {len(items)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


def write_results(
    results: Iterable[PredictResult],
    fmt: str,
    out: TextIO,
    width: int = 20,
    model: tuple[str, str] = ("", ""),
) -> int:
    """Write results as they arrive in ``fmt``; returns how many inputs failed.

    JSON lines and CSV carry the bulk row fields (:data:`imgclf.inference.bulk.ROW_FIELDS`) of
    ``model`` (name, version); CSV holds ``top_k`` as JSON text.
    """
    from imgclf.inference.bulk import ROW_FIELDS, result_row

    failed = 0
    writer = csv.DictWriter(out, ROW_FIELDS) if fmt == "csv" else None
    if writer is not None:
        writer.writeheader()
    elif fmt == "table":
        out.write(f"{'INPUT':<{width}}  {'CLASS':<12} {'PROB':>6}  TOP-K\n")
    for result in results:
        failed += not result.ok
        row = result_row(result, *model)
        if fmt == "jsonl":
            out.write(json.dumps(row) + "\n")
        elif writer is not None:
            writer.writerow({**row, "top_k": json.dumps(row["top_k"])})
        else:
            out.write(_table_row(result, width) + "\n")
        out.flush()
    return failed


def _table_row(result: PredictResult, width: int) -> str:
    prediction = result.prediction
    if prediction is None:
        return f"{result.input:<{width}}  ERROR: {result.error}"
    top_k = ", ".join(f"{s.label} {s.probability:.3f}" for s in prediction.top_k)
    return (
        f"{result.input:<{width}}  {prediction.label:<12} {prediction.probability:>6.3f}  {top_k}"
    )
