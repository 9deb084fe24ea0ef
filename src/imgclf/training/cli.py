"""``imgclf train``'s options, and the training half of the command.

The command itself (train, then export for serving) is :func:`imgclf.pipeline.run_train_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, get_args

from imgclf.preprocessing import CropMode
from imgclf.training.recipe import TrainConfig

if TYPE_CHECKING:
    from imgclf.training.trainer import TrainResult

#: Flag defaults are the recipe's (importing the recipe does not import torch).
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def register(subparsers: Any) -> None:
    """Add the ``train`` command."""
    parser = subparsers.add_parser(
        "train",
        help="train a classifier on folders of labelled photos",
        description=(
            "Transfer learning from ImageNet: fits a head on cached features of the frozen "
            "backbone, then fine-tunes, keeping the best epoch on validation. Writes a model "
            "bundle (manifest.json, model.pt, history.json) and an evaluation report, then "
            "exports it to ONNX and calibrated int8 (refused if it loses more than 1 point of "
            "validation top-1), so `imgclf serve -m OUT` runs it at once."
        ),
    )
    parser.add_argument(
        "data", help="dataset folder (train/validation/test or one folder per class)"
    )
    parser.add_argument("-o", "--out", default="runs/model", help="bundle folder to write")
    parser.add_argument(
        "--backbone",
        default=_DEFAULTS["backbone"],
        help="lite0, lite1, lite2 or any timm model name",
    )
    parser.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="start from random weights instead of ImageNet",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=_DEFAULTS["epochs"],
        help="maximum fine-tuning epochs (0: head only; default: 8, more for small photos "
        "trained below the backbone's size)",
    )
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"])
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="evaluation/serving input size (default: the backbone's, or 4x the photos' "
        "median short side when that is smaller, e.g. 128 for 32 px photos)",
    )
    parser.add_argument(
        "--train-size",
        type=int,
        default=None,
        help="fine-tuning input size (default: 80%% of --image-size)",
    )
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=1.0,
        help="share of the short side the serving centre crop keeps (default 1.0)",
    )
    parser.add_argument(
        "--crop-mode",
        choices=get_args(CropMode),
        default=_DEFAULTS["crop_mode"],
        help="serving resize: keep the aspect ratio and centre-crop, or squash the whole image "
        "to a square (default: the backbone's, center for the Lite family)",
    )
    parser.add_argument("--lr", type=float, default=_DEFAULTS["lr"], help="peak learning rate")
    parser.add_argument("--freeze-blocks", type=int, default=_DEFAULTS["freeze_blocks"])
    parser.add_argument(
        "--augment", choices=("trivial", "light", "none"), default=_DEFAULTS["augment"]
    )
    parser.add_argument(
        "--ema-decay",
        type=float,
        default=_DEFAULTS["ema_decay"],
        help="keep and ship a moving average of the weights with this decay (0: off)",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=_DEFAULTS["patience"],
        help="early stopping: epochs without a better validation score (default: 3 of every 8 "
        "epochs of the schedule)",
    )
    parser.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (per process with --nproc; default: an equal share of the CPUs)",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train with N processes on this machine (DistributedDataParallel: gloo on CPUs, "
        "NCCL with one GPU each), started by torch's elastic launcher; several machines: "
        "torchrun (docs/deployment.md)",
    )
    parser.add_argument(
        "--workers", type=int, default=_DEFAULTS["workers"], help="image decoding threads"
    )
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reduced-precision feature extraction: --bf16 forces it, --no-bf16 forces fp32; "
        "default: only where the device runs it natively and a short timing shows it faster",
    )
    parser.add_argument(
        "--head-flip",
        action="store_true",
        help="also embed mirrored training images for the head fit (a second pass)",
    )
    parser.add_argument(
        "--eval-train",
        action="store_true",
        help="also evaluate the training split at the end (slow on large datasets)",
    )
    parser.add_argument("--name", default=None, help="model name (default: the dataset folder)")
    parser.add_argument("--version", dest="model_version", default="1", help="model version")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint.pt"
    )
    parser.add_argument(
        "--auto-resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt when it exists, else start afresh (for jobs that "
        "restart themselves: Kubernetes, torchrun --max-restarts)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="EPOCHS",
        help="stop after this many epochs in this run (continue later with --resume)",
    )
    parser.add_argument(
        "--no-report", dest="report", action="store_false", help="skip the evaluation report"
    )
    parser.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        help="keep only the PyTorch weights: skip the ONNX and int8 exports that let "
        "`imgclf serve -m OUT` and `imgclf predict -m OUT` run the bundle",
    )
    # No handler here: imgclf.cli sets imgclf.pipeline.run_train_command, which exports after
    # training (a stage never imports the stages after it, so training cannot export).


def train_from_args(args: argparse.Namespace) -> TrainResult | None:
    """Run :func:`imgclf.training.trainer.train` with the options of ``imgclf train``."""
    from imgclf.training.trainer import train

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options = {k: v for k, v in vars(args).items() if k in fields}
    config = TrainConfig(**options, version=args.model_version)
    return train(
        args.data,
        args.out,
        config,
        resume="auto" if args.auto_resume else args.resume,
        report=args.report,
        stop_after=args.stop_after,
    )


def print_train_result(result: TrainResult) -> None:
    """Print where the bundle is, its metrics per split, the time taken and the report."""
    print(f"bundle: {result.bundle.root}")
    print(f"{'split':<12}{'top1':>8}{'top3':>8}{'loss':>8}")
    for split, metrics in result.metrics.items():
        print(f"{split:<12}{metrics['top1']:>8.4f}{metrics['top3']:>8.4f}{metrics['loss']:>8.4f}")
    print(f"training time: {result.seconds / 60:.1f} min")
    if result.report is not None:
        print(f"report: {result.report}")
