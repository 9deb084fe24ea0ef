"""``imgclf export``: a trained bundle to ONNX (fp32, int8), TFLite or a Triton repository.

Examples::

    imgclf export runs/clothing --format onnx --data datasets/clothing-small
    imgclf export runs/clothing --format onnx-int8 --data datasets/clothing-small
    imgclf export runs/clothing --format onnx-int8 --out dist/clothing-serving
    imgclf export --format triton --out model-repository   # the bundled model

The flags come from the option table in :mod:`imgclf.export.formats`; each format accepts only
its own options and refuses the others by name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from imgclf.export.formats import FORMATS, OPTIONS


def register(subparsers: Any) -> None:
    """Add the ``export`` command."""
    formats = "\n".join(
        f"  {fmt.name:<10} {fmt.description}\n"
        f"  {'':<10} options: {' '.join(OPTIONS[o].flag for o in fmt.options)}"
        for fmt in FORMATS.values()
    )
    parser = subparsers.add_parser(
        "export",
        help="export a bundle to ONNX (fp32, int8), TFLite or a Triton model repository",
        description=(
            "Export a trained bundle's model and register the new artifact (with its checksum, "
            "parity and accuracy numbers) in the bundle's manifest."
        ),
        epilog=f"formats:\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "bundle", nargs="?", type=Path, help="bundle directory (default: the bundled model)"
    )
    parser.add_argument("--format", "-f", required=True, help=f"one of: {', '.join(FORMATS)}")
    for option in OPTIONS.values():
        if option.type is None:
            parser.add_argument(
                option.flag, dest=option.name, action="store_true", default=argparse.SUPPRESS,
                help=option.help,
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, dest=option.name, type=option.type, metavar=option.metavar,
                choices=option.choices, default=argparse.SUPPRESS, help=option.help,
            )  # fmt: skip
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Handle ``imgclf export``: export, then print what was written."""
    from imgclf.export.api import export_bundle

    options = {name: getattr(args, name) for name in OPTIONS if hasattr(args, name)}
    result = export_bundle(args.bundle, args.format, **options)
    files = [p for p in result.path.rglob("*") if p.is_file()] if result.path.is_dir() else []
    size = sum(p.stat().st_size for p in files) if files else result.path.stat().st_size
    print(f"wrote {result.path} ({f'{len(files)} files, ' if files else ''}{size / 1e6:.2f} MB)")
    if result.info is not None:
        if result.info.metrics:
            print(f"metrics: {json.dumps(result.info.metrics)}")
        parity = result.info.details.get("parity")
        if parity:
            print(
                f"parity vs PyTorch on {parity['images']} images ({parity['images_from']}): "
                f"max |diff| {parity['max_abs_diff']:.2g}, "
                f"top-1 agreement {parity['top1_agreement']:.1%}"
            )
    if result.serving_bundle is not None:
        print(f"serving bundle: {result.serving_bundle}")
    return 0
