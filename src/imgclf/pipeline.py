"""Train, then export: a run whose bundle ``imgclf serve`` and ``imgclf predict`` run at once.

The stages import only the stages before them (data -> training -> evaluation -> export ->
inference -> serving), so training cannot export its own bundle; chaining the two is this module's
job, above both. ``imgclf train`` runs :func:`run_train_command` (wired in :mod:`imgclf.cli`).

Example::

    from imgclf.pipeline import train_and_export
    from imgclf.training import TrainConfig

    result = train_and_export("datasets/clothing-small", "runs/clothing", TrainConfig(epochs=0))
    print(result.exports.artifacts)   # ['onnx', 'onnx-int8']
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from imgclf.bundle import Bundle
from imgclf.errors import ExportError

if TYPE_CHECKING:
    from imgclf.data import DatasetSplits
    from imgclf.export.api import ExportResult
    from imgclf.training.recipe import TrainConfig
    from imgclf.training.trainer import TrainResult

log = logging.getLogger(__name__)

#: What a finished run exports, in order: fp32 ONNX (checked against PyTorch), then int8
#: calibrated on the training images and refused if it loses more than 1 point of validation top-1.
SERVING_FORMATS: tuple[str, ...] = ("onnx", "onnx-int8")


@dataclass
class ServingExports:
    """The artifacts a run exported for serving.

    Attributes:
        results: One entry per format exported, in :data:`SERVING_FORMATS` order.
        refused: Format -> why it was not kept (an int8 model failing its accuracy check); the
            formats exported before it still serve.
    """

    results: list[ExportResult] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def artifacts(self) -> list[str]:
        """The bundle artifact keys written (``onnx``, ``onnx-int8``)."""
        return [result.format for result in self.results]


@dataclass
class PipelineResult:
    """What :func:`train_and_export` produced: the training run and its exports."""

    training: TrainResult
    exports: ServingExports

    @property
    def bundle(self) -> Bundle:
        """The trained bundle, with its exported artifacts registered."""
        return self.training.bundle


def export_for_serving(
    bundle: Bundle, data: str | Path | None = None, formats: tuple[str, ...] = SERVING_FORMATS
) -> ServingExports:
    """Export a trained bundle to each of ``formats`` so it serves without another step.

    Args:
        bundle: A bundle with PyTorch weights (what :func:`imgclf.training.train` writes).
        data: The dataset it was trained on, for parity, calibration and the accuracy check
            (default: the folder recorded in its manifest).
        formats: Export formats, in order; later ones may build on earlier ones.

    Raises:
        ExportError: A format other than the last failed (nothing later could be built on it).
        ConfigError: The export options or the dataset are unusable.
    """
    from imgclf.export.api import export_bundle

    exports = ServingExports()
    options = {} if data is None else {"data": Path(data)}
    for index, name in enumerate(formats):
        try:
            exports.results.append(export_bundle(bundle, name, **options))
        except ExportError as exc:
            if index < len(formats) - 1:
                raise
            # The fp32 model serves; an int8 model that failed its check is not worth a failed run.
            log.warning("%s export not kept: %s", name, exc)
            exports.refused[name] = str(exc)
    return exports


def train_and_export(
    data: str | Path | DatasetSplits,
    out: str | Path,
    config: TrainConfig,
    *,
    export: bool = True,
    resume: bool | Literal["auto"] = False,
    report: bool = True,
    stop_after: int | None = None,
) -> PipelineResult | None:
    """Train a bundle (:func:`imgclf.training.train`), then export it for serving.

    Args:
        data: Dataset folder or loaded splits.
        out: Bundle folder to write.
        config: The training recipe.
        export: Export :data:`SERVING_FORMATS` after training (False: PyTorch weights only).
        resume: Continue an interrupted run from ``out`` (``"auto"``: when there is one).
        report: Also write the evaluation report.
        stop_after: Stop after this many fine-tuning epochs (then nothing is exported).

    Returns:
        The result, or None when ``stop_after`` stopped the run early.
    """
    from imgclf.training.trainer import train

    training = train(data, out, config, resume=resume, report=report, stop_after=stop_after)
    if training is None:
        return None
    source = data if isinstance(data, str | Path) else data.root
    exports = export_for_serving(training.bundle, source) if export else ServingExports()
    return PipelineResult(training, exports)


def run_train_command(args: argparse.Namespace) -> int:
    """Handle ``imgclf train``: train and print the metrics, then export unless ``--no-export``.

    With ``--nproc N`` (N > 1) this process only launches N processes that each run the same
    command (:mod:`imgclf.training.launch`); rank 0 of them prints, writes and exports.
    """
    from imgclf.training.cli import print_train_result, train_from_args
    from imgclf.training.launch import launch, launched, process_rank

    if args.nproc not in (None, 1) and not launched():
        return launch(
            args.command_line,
            args.nproc,
            threads=args.threads,
            batch_size=args.batch_size,
            verbose=args.verbose > 0,
        )
    training = train_from_args(args)
    if process_rank() != 0:
        return 0  # rank 0 reports and exports
    if training is None:
        print(f"stopped after {args.stop_after} epoch(s); continue with --resume")
        return 0
    print_train_result(training)
    root = training.bundle.root
    if not args.export:
        print(f"not exported (--no-export): imgclf export {root} --format onnx-int8")
        return 0
    exports = export_for_serving(training.bundle, args.data)
    for result in exports.results:
        print(f"exported {result.format}: {result.path}")
    for name, reason in exports.refused.items():
        print(f"not exported {name}: {reason}")
    print(f"next: imgclf serve -m {root}   or   imgclf predict -m {root} PHOTO")
    return 0
