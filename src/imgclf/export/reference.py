"""Images exports are checked and calibrated on: real dataset splits, or generated stand-ins.

Everything is preprocessed by :mod:`imgclf.preprocessing`, the code serving runs, so a parity or
accuracy number measured here is the one users get.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from imgclf.bundle import Bundle
from imgclf.errors import ConfigError, InputError
from imgclf.preprocessing import PreprocessConfig, load_pixels

if TYPE_CHECKING:
    from imgclf.data import DatasetSplits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceImages:
    """A batch of model-ready pixels and, for real data, their labels.

    Attributes:
        pixels: uint8 ``(N, H, W, 3)``, resized and cropped for the model.
        labels: Class indices in the bundle's label order (None for generated images).
        source: Where they came from, as recorded in the manifest.
    """

    pixels: np.ndarray
    labels: np.ndarray | None
    source: str


def resolve_data(bundle: Bundle, data: str | Path | None) -> Path | None:
    """The dataset to use: ``data`` if given, else the one the bundle was trained on if present.

    Raises:
        ConfigError: ``data`` was given but is not a directory.
    """
    if data is not None:
        path = Path(data)
        if not path.is_dir():
            raise ConfigError(f"--data {path}: not a directory of images")
        return path
    dataset = bundle.manifest.dataset
    if dataset is not None and dataset.source and Path(dataset.source).is_dir():
        return Path(dataset.source)
    return None


def generated_pixels(config: PreprocessConfig, count: int, seed: int = 0) -> ReferenceImages:
    """Smooth random colour images (blurred noise plus gradients), closer to photos than noise."""
    rng = np.random.default_rng(seed)
    size = config.input_size
    coarse = rng.integers(0, 256, size=(count, 8, 8, 3)).astype(np.float32)
    # Nearest-neighbour upsampling of an 8x8 grid gives flat regions and hard edges, like objects.
    blocks = np.repeat(np.repeat(coarse, -(-size // 8), axis=1), -(-size // 8), axis=2)
    blocks = blocks[:, :size, :size]
    ramp = np.linspace(-40.0, 40.0, size, dtype=np.float32)
    noise = rng.normal(0.0, 12.0, size=blocks.shape).astype(np.float32)
    pixels = blocks + ramp[None, :, None, None] + ramp[None, None, :, None] + noise
    return ReferenceImages(np.clip(pixels, 0, 255).astype(np.uint8), None, "generated")


def split_pixels(
    bundle: Bundle, data: Path, split: str, *, limit: int | None = None, seed: int = 0
) -> ReferenceImages:
    """Load (a seeded random subset of) one split of ``data``, labelled in the bundle's order.

    Args:
        bundle: The model, for its labels and preprocessing.
        data: Dataset folder (any layout :func:`imgclf.data.load_dataset` accepts).
        split: ``train``, ``validation`` or ``test``.
        limit: Keep at most this many images (a stratified-enough random sample).
        seed: Seed of the sample.

    Raises:
        ConfigError: The dataset lacks the split or its classes differ from the model's labels.
        DatasetError: The folder is not a usable dataset.
    """
    dataset = _load_dataset(Path(data).resolve())
    if dataset.classes != bundle.labels:
        raise ConfigError(
            f"{data}: dataset classes {dataset.classes} differ from the model's labels "
            f"{bundle.labels}; pass the dataset the model was trained on with --data"
        )
    records = dataset.splits.get(split)
    if not records:
        raise ConfigError(f"{data}: no {split!r} split (has: {', '.join(dataset.splits)})")
    if limit is not None and limit < len(records):
        chosen = np.random.default_rng(seed).choice(len(records), size=limit, replace=False)
        records = [records[i] for i in sorted(chosen)]
    config = bundle.preprocess_config
    pixels, labels = [], []
    for record in records:
        try:
            pixels.append(load_pixels(record.path, config))
        except InputError as exc:  # already reported by the dataset check; skip the stragglers
            log.warning("skipping %s: %s", record.path, exc)
            continue
        labels.append(record.label)
    if not pixels:
        raise ConfigError(f"{data}: no readable images in the {split!r} split")
    source = f"{split} split of {dataset.root}"
    return ReferenceImages(np.stack(pixels), np.asarray(labels, dtype=np.int64), source)


@functools.lru_cache(maxsize=4)
def _load_dataset(root: Path) -> DatasetSplits:
    """Load (and check) a dataset once per export run, however many splits are read from it."""
    from imgclf.data import load_dataset

    return load_dataset(root)


def reference_images(
    bundle: Bundle, data: Path | None, count: int, *, split: str = "validation"
) -> ReferenceImages:
    """``count`` images from ``data``'s split when a dataset is known, else generated ones."""
    if data is None:
        return generated_pixels(bundle.preprocess_config, count)
    return split_pixels(bundle, data, split, limit=count)
