"""Running a bundle's model over images, and the whole evaluation from bundle to report.

The model runs through the same code serving uses: ONNX and TFLite artifacts through
:class:`~imgclf.inference.predictor.Predictor`, the PyTorch weights through
:func:`~imgclf.backbones.load_torch_model`; both are fed pixels from
:func:`imgclf.preprocessing.load_pixels`, exactly as in training-time validation and in serving.
An image that cannot be read is skipped and reported with its reason, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.bundle import Bundle, load_bundle, verify_artifact
from imgclf.data import DatasetProblem, DatasetSplits, ImageRecord
from imgclf.errors import BundleError, DatasetError, InputError
from imgclf.evaluation.metrics import SplitMetrics, compute_metrics
from imgclf.evaluation.report import write_report
from imgclf.evaluation.results import SplitPredictions
from imgclf.evaluation.splits import (
    EvaluationData,
    from_dataset_splits,
    from_records,
    load_evaluation_data,
)
from imgclf.preprocessing import PreprocessConfig, load_pixels, normalize

log = logging.getLogger(__name__)

#: Training writes its per-epoch history here, inside the bundle directory.
HISTORY_NAME = "history.json"
#: Threads decoding images while the model runs.
DECODE_WORKERS = 2

Probabilities = Callable[[np.ndarray], np.ndarray]


@dataclass
class ModelRunner:
    """One opened model: uint8 pixel batches in, probabilities out.

    Attributes:
        artifact: The artifact key that runs (``pytorch``, ``onnx``, ``onnx-int8``, ...).
        config: Preprocessing the model expects.
        num_classes: Number of outputs.
    """

    artifact: str
    config: PreprocessConfig
    num_classes: int
    probabilities: Probabilities

    @classmethod
    def open(
        cls, bundle: Bundle, artifact: str = "auto", *, threads: int | None = None
    ) -> ModelRunner:
        """Open a bundle's artifact; ``auto`` prefers an exported model, else the PyTorch weights.

        Raises:
            BundleError: The artifact is missing, corrupt or cannot be loaded.
            ConfigError: ``pytorch`` was asked for without the ``train`` extra installed.
        """
        key = _choose_artifact(bundle, artifact)
        if key == "pytorch":
            verify_artifact(bundle.root, key, bundle.manifest.artifacts[key])
            run = _torch_probabilities(bundle)
        else:
            from imgclf.inference.predictor import Predictor

            predictor = Predictor.from_bundle(bundle.root, artifact=key, threads=threads)
            run = predictor.run_pixels
        return cls(key, bundle.preprocess_config, len(bundle.labels), run)

    def predict(
        self,
        records: Sequence[ImageRecord],
        *,
        batch_size: int = 32,
        split: str | None = None,
        progress: bool = False,
    ) -> SplitPredictions:
        """Predict every readable image; unreadable ones are returned as problems."""
        probs, readable, problems = self.predict_rows(
            records, batch_size=batch_size, split=split, progress=progress
        )
        kept = [record for record, ok in zip(records, readable, strict=True) if ok]
        return SplitPredictions(kept, probs[readable], problems)

    def predict_rows(
        self,
        records: Sequence[ImageRecord],
        *,
        batch_size: int = 32,
        split: str | None = None,
        progress: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, list[DatasetProblem]]:
        """Probabilities ``(N, C)`` (NaN rows where unreadable), the readable mask, problems."""
        from tqdm.auto import tqdm

        step = max(1, batch_size)
        probs = np.full((len(records), self.num_classes), np.nan, dtype=np.float32)
        readable = np.zeros(len(records), dtype=bool)
        problems: list[DatasetProblem] = []
        bar = tqdm(total=len(records), unit="img", desc=split, disable=not progress, leave=False)
        with ThreadPoolExecutor(DECODE_WORKERS) as pool, bar:
            for start in range(0, len(records), step):
                batch = records[start : start + step]
                rows: list[int] = []
                pixels: list[np.ndarray] = []
                for offset, loaded in enumerate(pool.map(self._load, batch)):
                    if isinstance(loaded, str):
                        problems.append(DatasetProblem(batch[offset].path, loaded, split))
                    else:
                        rows.append(start + offset)
                        pixels.append(loaded)
                if pixels:
                    probs[rows] = self.probabilities(np.stack(pixels))
                    readable[rows] = True
                bar.update(len(batch))
        for problem in problems:
            log.warning("skipping %s: %s", problem.path, problem.reason)
        return probs, readable, problems

    def _load(self, record: ImageRecord) -> np.ndarray | str:
        """Model-ready pixels, or why the image cannot be read."""
        try:
            return load_pixels(record.path, self.config)
        except InputError as exc:
            message = str(exc)
            prefix = f"{record.path}: "
            return message[len(prefix) :] if message.startswith(prefix) else message
        except OSError as exc:
            return f"cannot read file ({exc.strerror or exc})"


def _choose_artifact(bundle: Bundle, artifact: str) -> str:
    """Resolve ``auto``; check an explicit choice exists."""
    if artifact != "auto":
        bundle.artifact_path(artifact)  # raises a BundleError listing what exists
        return artifact
    from imgclf.inference.predictor import select_artifact

    try:
        return select_artifact(bundle, "auto")
    except BundleError:
        if "pytorch" in bundle.manifest.artifacts:
            return "pytorch"
        raise


def _torch_probabilities(bundle: Bundle) -> Probabilities:
    """A function running the bundle's PyTorch weights on uint8 pixels."""
    import torch

    from imgclf.backbones import load_torch_model

    model = load_torch_model(bundle)
    config = bundle.preprocess_config

    def run(pixels: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(normalize(pixels, config))
        with torch.inference_mode():
            return torch.softmax(model(batch).float(), dim=1).numpy()

    return run


def predict_records(
    bundle: Bundle | str | Path | None,
    records: Sequence[ImageRecord],
    *,
    artifact: str = "auto",
    batch_size: int = 32,
) -> np.ndarray:
    """Class probabilities for each record, in order.

    Args:
        bundle: A loaded bundle, a bundle directory, or None for the bundled model.
        records: Images to classify (their labels are not used).
        artifact: ``auto`` (an exported model if the bundle has one, else the PyTorch weights),
            ``pytorch``, ``onnx``, ``onnx-int8`` or ``tflite``.
        batch_size: Images per model call.

    Returns:
        float32 ``(len(records), C)``. Rows of images that could not be read are NaN (each is
        logged with its reason).

    Raises:
        BundleError: The bundle or artifact cannot be used.
    """
    runner = ModelRunner.open(_as_bundle(bundle), artifact)
    probs, _, _ = runner.predict_rows(records, batch_size=batch_size)
    return probs


def _as_bundle(bundle: Bundle | str | Path | None) -> Bundle:
    # Artifacts are checksummed when opened, so only the one that runs is read twice.
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=False)


def read_history(bundle_root: Path) -> list[dict[str, Any]] | None:
    """The per-epoch training history saved next to the manifest, if there is a usable one."""
    path = bundle_root / HISTORY_NAME
    if not path.is_file():
        return None
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("%s: cannot read the training history (%s); curves are left out", path, exc)
        return None
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        log.warning("%s: expected a list of per-epoch objects; curves are left out", path)
        return None
    return history


@dataclass
class EvaluationRun:
    """Everything one evaluation produced.

    Attributes:
        results: Split name -> metrics.
        predictions: Split name -> predictions.
        data: The images evaluated and the files skipped.
        artifact: The artifact that ran.
        report: Path of ``report.html``.
    """

    results: dict[str, SplitMetrics]
    predictions: dict[str, SplitPredictions]
    data: EvaluationData
    artifact: str
    report: Path

    @property
    def skipped(self) -> int:
        """Files skipped, before (not images) or during (unreadable) the evaluation."""
        return len(self.data.problems) + sum(len(p.problems) for p in self.predictions.values())


DataSource = str | Path | DatasetSplits | Mapping[str, Sequence[ImageRecord]]


def _evaluation_data(
    source: DataSource, bundle: Bundle, splits: Sequence[str] | None
) -> EvaluationData:
    if isinstance(source, DatasetSplits):
        return from_dataset_splits(source, bundle.labels, splits)
    if isinstance(source, Mapping):
        return from_records(source, bundle.labels, splits)
    return load_evaluation_data(source, bundle.labels, splits, training=bundle.manifest.training)


def _predict_split(
    runner: ModelRunner,
    name: str,
    records: Sequence[ImageRecord],
    batch_size: int,
    progress: bool,
) -> SplitPredictions:
    """Predict one split; a split with no readable image is an error, not an empty result."""
    if not records:
        raise DatasetError(f"split {name!r} has no images to evaluate")
    predictions = runner.predict(records, batch_size=batch_size, split=name, progress=progress)
    if not predictions.records:
        first = predictions.problems[0]
        raise DatasetError(
            f"split {name!r}: none of its {len(records)} images could be read "
            f"(first: {first.path}: {first.reason})"
        )
    return predictions


def run_evaluation(
    bundle: Bundle | str | Path | None,
    data: DataSource,
    *,
    out_dir: str | Path,
    splits: Sequence[str] | None = None,
    artifact: str = "auto",
    gallery_size: int = 24,
    batch_size: int = 32,
    threads: int | None = None,
    progress: bool = False,
) -> EvaluationRun:
    """Evaluate a bundle and write the report; see :func:`evaluate_bundle` for the arguments.

    Raises:
        BundleError: The bundle or artifact cannot be used.
        DatasetError: The data cannot be used, or a split has no readable image.
    """
    loaded = _as_bundle(bundle)
    evaluation_data = _evaluation_data(data, loaded, splits)
    runner = ModelRunner.open(loaded, artifact, threads=threads)
    predictions = {
        name: _predict_split(runner, name, records, batch_size, progress)
        for name, records in evaluation_data.splits.items()
    }
    results = {
        name: compute_metrics(split.probs, split.labels, loaded.labels)
        for name, split in predictions.items()
    }
    report = write_report(
        out_dir,
        bundle_manifest=loaded.manifest,
        results=results,
        predictions=predictions,
        history=read_history(loaded.root),
        gallery_size=gallery_size,
        artifact=runner.artifact,
        data_root=evaluation_data.root,
        problems=evaluation_data.problems,
        notes=evaluation_data.notes,
    )
    return EvaluationRun(results, predictions, evaluation_data, runner.artifact, report)


def evaluate_bundle(
    bundle: Bundle | str | Path | None,
    data_root_or_splits: DataSource,
    *,
    splits: Sequence[str] | None = None,
    out_dir: str | Path,
    artifact: str = "auto",
    gallery_size: int = 24,
    batch_size: int = 32,
) -> dict[str, SplitMetrics]:
    """Evaluate a bundle on a dataset and write ``evaluation.json``, plots and reports.

    Args:
        bundle: A loaded bundle, a bundle directory, or None for the bundled model.
        data_root_or_splits: A dataset root or folder of class folders
            (:func:`~imgclf.evaluation.splits.load_evaluation_data`), a loaded
            :class:`~imgclf.data.DatasetSplits`, or split name -> records labelled with the
            model's label indices.
        splits: Split names or ``["all"]``; None means ``test`` (or the whole folder when
            ``data_root_or_splits`` is one folder of class folders).
        out_dir: Where the report goes (created if needed).
        artifact: ``auto``, ``pytorch``, ``onnx``, ``onnx-int8`` or ``tflite``.
        gallery_size: Most confident mistakes shown per split.
        batch_size: Images per model call.

    Returns:
        Split name -> metrics.

    Raises:
        BundleError: The bundle or artifact cannot be used.
        DatasetError: The data cannot be used, or a split has no readable image.
    """
    return run_evaluation(
        bundle,
        data_root_or_splits,
        out_dir=out_dir,
        splits=splits,
        artifact=artifact,
        gallery_size=gallery_size,
        batch_size=batch_size,
    ).results
