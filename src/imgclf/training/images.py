"""Decode a split once, keep it in memory, and serve augmented training batches from it.

Decoding JPEGs costs about as much as a forward pass of a small network, so every image is decoded
exactly once per run (in parallel threads; Pillow releases the GIL) and kept as uint8 pixels:

* ``eval_pixels``: the exact serving preprocessing (:func:`imgclf.preprocessing.resize_and_crop`
  after :func:`~imgclf.preprocessing.open_image`), used for features, validation and metrics, so
  the numbers in the manifest are the numbers serving will see;
* ``train_images``: the image with its short side resized down to the pre-crop size (never up),
  from which random crops are taken every epoch; only kept when fine-tuning will run.
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
from imgclf.progress import progress

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
    """The image with its short side at ``size``, or as it is when already that small or smaller.

    Upscaling a crop source gains nothing (the random crop is resized to the training size
    anyway) and would cost ``(size / short side)^2`` times the memory: 49x for 32 px photos at 224.
    """
    width, height = image.size
    if min(width, height) <= size:
        return np.array(image, dtype=np.uint8)  # a writable copy: torch.from_numpy needs one
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    resample = Image.Resampling.BICUBIC if config.interpolation == "bicubic" else None
    resized = image.resize(new_size, resample or Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.array(resized, dtype=np.uint8)


def decode_split(
    paths: Sequence[Path],
    labels: Sequence[int],
    config: PreprocessConfig,
    *,
    keep_train_images: bool,
    workers: int = 4,
    desc: str = "decode",
) -> DecodedSplit:
    """Decode images in parallel into serving-identical pixels (and crop sources if asked).

    Each worker writes its image straight into one preallocated uint8 array, so memory never
    holds more than the final ``N x S x S x 3`` bytes (plus the crop sources); see
    docs/design.md, "Training memory". Files that fail now are reported in ``failed`` and left
    out, never fatal.
    """
    size = config.input_size
    pixels = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def decode(index: int) -> np.ndarray | str | None:
        try:
            image = open_image(paths[index], draft_size=config.resize_size)
        except ImgclfError as exc:
            return str(exc)
        pixels[index] = np.asarray(resize_and_crop(image, config), dtype=np.uint8)
        return _short_side_resize(image, config.resize_size, config) if keep_train_images else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            progress(pool.map(decode, range(len(paths))), desc=desc, total=len(paths), unit="img")
        )
    kept: list[int] = []
    failed: list[tuple[Path, str]] = []
    for index, result in enumerate(results):
        if isinstance(result, str):
            log.warning("skipping %s: %s", paths[index], result)
            failed.append((paths[index], result))
        else:
            kept.append(index)
    if failed:  # close the gaps in place: no second copy of the array
        for row, index in enumerate(kept):
            pixels[row] = pixels[index]
        pixels = pixels[: len(kept)]
    sources = [r for r in results if isinstance(r, np.ndarray)]
    return DecodedSplit(
        [paths[i] for i in kept],
        np.asarray([labels[i] for i in kept], dtype=np.int64),
        pixels,
        sources,
        failed,
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
