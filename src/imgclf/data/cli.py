"""``imgclf data``: inspect a dataset folder, download a known dataset.

Examples::

    imgclf data download clothing-small --dest datasets/clothing-small
    imgclf data inspect datasets/clothing-small
    imgclf data inspect my-photos/ --val-fraction 0.15 --test-fraction 0.15 --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from imgclf.data.sources import KNOWN_DATASETS


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``data`` command with its ``inspect`` and ``download`` subcommands."""
    parser = subparsers.add_parser(
        "data", help="inspect or download datasets", description="Inspect or download datasets."
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=lambda _args: _print_help(parser))
    _register_inspect(commands)
    _register_download(commands)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _register_inspect(commands: Any) -> None:
    parser = commands.add_parser(
        "inspect",
        help="classes, counts per split and class, imbalance and unreadable files",
        description=(
            "Load a dataset the way training does and report its classes, image counts per split "
            "and class, class imbalance (largest / smallest class), every file that would be "
            "skipped, with the reason, and identical files (across splits: leakage; across "
            "classes: a labelling mistake). Splits missing from the folders are made with the same "
            "seeded stratified split training uses."
        ),
    )
    parser.add_argument("dir", type=Path, help="dataset folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--val-fraction", type=_fraction, default=0.1, help="validation share when split here"
    )
    parser.add_argument(
        "--test-fraction", type=_fraction, default=0.1, help="test share for one-folder datasets"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    parser.add_argument(
        "--no-check", action="store_true", help="do not decode images (faster, finds less)"
    )
    parser.add_argument(
        "--no-duplicates", action="store_true", help="do not look for identical files"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any file is skipped or identical files span splits or classes",
    )
    parser.set_defaults(handler=run_inspect)


def _register_download(commands: Any) -> None:
    listing = "; ".join(f"{s.name}: {s.description} ({s.license})" for s in KNOWN_DATASETS.values())
    parser = commands.add_parser(
        "download",
        help="download a known public dataset, verified",
        description=(
            "Download a known dataset from its source, verify its file counts and content "
            f"digest, and unpack it. Known datasets: {listing}."
        ),
    )
    parser.add_argument("name", choices=sorted(KNOWN_DATASETS), help="dataset to download")
    parser.add_argument(
        "--dest", type=Path, default=None, help="folder to create (default: datasets/NAME)"
    )
    parser.add_argument("--url", default=None, help="download from this mirror instead")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for the server (default 60)"
    )
    parser.set_defaults(handler=run_download)


@contextlib.contextmanager
def _quiet_file_warnings(enabled: bool) -> Iterator[None]:
    """Silence per-file warnings while ``inspect`` lists the same problems in its report."""
    data_logger = logging.getLogger("imgclf.data")
    previous = data_logger.level
    if enabled:
        data_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        data_logger.setLevel(previous)


def run_inspect(args: argparse.Namespace) -> int:
    """Handler of ``imgclf data inspect``."""
    from imgclf.data.dataset import load_dataset
    from imgclf.data.report import build_report, format_report

    with _quiet_file_warnings(not getattr(args, "verbose", 0)):
        dataset = load_dataset(
            args.dir,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            check_images=not args.no_check,
        )
    report = build_report(dataset, duplicates=not args.no_duplicates)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    leaks = [
        group
        for group in report["duplicates"] or []
        if group["across_splits"] or group["conflicting_labels"]
    ]
    return 1 if args.strict and (dataset.problems or leaks) else 0


def run_download(args: argparse.Namespace) -> int:
    """Handler of ``imgclf data download``."""
    from imgclf.data.download import download_dataset

    path = download_dataset(
        args.name, args.dest, url=args.url, force=args.force, timeout=args.timeout
    )
    print(f"{args.name}: verified, at {path}")
    print(f"next: imgclf data inspect {path}")
    return 0
