"""Decode a split once, keep it in memory, and serve augmented training batches from it.

Decoding JPEGs costs about as much as a forward pass of a small network, so every image is decoded
exactly once per run (in parallel threads; Pillow releases the GIL) and kept as uint8 pixels:

* ``eval_pixels``: the exact serving preprocessing (:func:`imgclf.preprocessing.resize_and_crop`
  after :func:`~imgclf.preprocessing.open_image`), used for features, validation and metrics, so
  the numbers in the manifest are the numbers serving will see;
* ``train_images``: the image with its short side resized to the pre-crop size, from which random
  crops are taken every epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from imgclf.errors import ImgclfError
from imgclf.preprocessing import PreprocessConfig, open_image, resize_and_crop

log = logging.getLogger(__name__)


@dataclass
class DecodedSplit:
    """The images of one split, decoded once.

    Attributes:
        paths: Source file of each image.
        labels: Class index of each image, int64 ``(N,)``.
        eval_pixels: Serving-identical model inputs, uint8 ``(N, S, S, 3)``.
        train_images: Short-side-resized images for random crops (empty if not kept).
        failed: Files that could not be decoded now (changed since they were checked), with why.
    """

    paths: list[Path]
    labels: np.ndarray
    eval_pixels: np.ndarray
    train_images: list[np.ndarray] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def _short_side_resize(image: Image.Image, size: int, config: PreprocessConfig) -> np.ndarray:
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    resample = Image.Resampling.BICUBIC if config.interpolation == "bicubic" else None
    resized = image.resize(new_size, resample or Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(resized, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one


def decode_split(
    paths: Sequence[Path],
    labels: Sequence[int],
    config: PreprocessConfig,
    *,
    keep_train_images: bool,
    workers: int = 4,
) -> DecodedSplit:
    """Decode images in parallel into serving-identical pixels (and crop sources if asked).

    Files that fail now are reported in ``failed`` and left out, never fatal.
    """

    def decode(path: Path) -> tuple[np.ndarray, np.ndarray | None] | str:
        try:
            image = open_image(path, draft_size=config.resize_size)
        except ImgclfError as exc:
            return str(exc)
        eval_pixels = np.asarray(resize_and_crop(image, config), dtype=np.uint8)
        crop_source = (
            _short_side_resize(image, config.resize_size, config) if keep_train_images else None
        )
        return eval_pixels, crop_source

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(decode, paths))
    kept_paths, kept_labels, pixels, sources, failed = [], [], [], [], []
    for path, label, result in zip(paths, labels, results, strict=True):
        if isinstance(result, str):
            log.warning("skipping %s: %s", path, result)
            failed.append((path, result))
            continue
        kept_paths.append(path)
        kept_labels.append(label)
        pixels.append(result[0])
        if result[1] is not None:
            sources.append(result[1])
    size = config.input_size
    stacked = np.stack(pixels) if pixels else np.zeros((0, size, size, 3), dtype=np.uint8)
    return DecodedSplit(
        kept_paths, np.asarray(kept_labels, dtype=np.int64), stacked, sources, failed
    )


def to_model_input(pixels: torch.Tensor, config: PreprocessConfig) -> torch.Tensor:
    """uint8 ``(N, H, W, 3)`` or ``(N, 3, H, W)`` pixels -> normalised float32 NCHW, channels-last.

    Same arithmetic as :func:`imgclf.preprocessing.normalize`.
    """
    if pixels.shape[-1] == 3:
        pixels = pixels.permute(0, 3, 1, 2)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    inv_std = 1.0 / (torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
    batch = (pixels.float() - mean) * inv_std
    return batch.contiguous(memory_format=torch.channels_last)


class Augmenter:
    """Random crops, flips and TrivialAugment on uint8 tensors, seeded per run."""

    def __init__(self, train_size: int, mode: str, crop_scale: float) -> None:
        ops: list[torch.nn.Module] = []
        if mode == "none":
            ops += [v2.Resize(train_size, antialias=True), v2.CenterCrop(train_size)]
        else:
            ops.append(v2.RandomResizedCrop(train_size, scale=(crop_scale, 1.0), antialias=True))
            ops.append(v2.RandomHorizontalFlip())
        if mode == "trivial":
            ops.append(v2.TrivialAugmentWide())
        self.transform = v2.Compose(ops)
        self.train_size = train_size

    def batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Augment each image (HWC uint8) into one uint8 ``(N, 3, S, S)`` batch."""
        out = torch.empty((len(images), 3, self.train_size, self.train_size), dtype=torch.uint8)
        for i, image in enumerate(images):
            out[i] = self.transform(torch.from_numpy(image).permute(2, 0, 1))
        return out
