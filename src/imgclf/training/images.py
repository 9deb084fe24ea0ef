"""Decode a split once, keep it in memory, and serve augmented training batches from it.

Decoding JPEGs costs about as much as a forward pass of a small network, so every image is decoded
exactly once per run (in parallel threads; Pillow releases the GIL) and kept as uint8 pixels:

* ``eval_pixels``: the exact serving preprocessing (:func:`imgclf.preprocessing.resize_and_crop`
  after :func:`~imgclf.preprocessing.open_image`), used for features, validation and metrics, so
  the numbers in the manifest are the numbers serving will see. A photo smaller than the model
  input is kept as it is and resized when read (:class:`Pixels`): a 32 px CIFAR photo costs 3 KB
  instead of the 48 KB of its 128 px model input;
* ``train_images``: the image with its short side resized down to the pre-crop size (never up),
  from which random crops are taken every epoch; only kept when fine-tuning will run. A small
  photo's crop source is the very array its ``eval_pixels`` keep.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from imgclf.errors import ImgclfError
from imgclf.preprocessing import PreprocessConfig, open_image, resize_and_crop
from imgclf.progress import progress

log = logging.getLogger(__name__)


class Pixels:
    """A split's serving-identical uint8 model inputs, ``(N, S, S, 3)``, held in the least memory.

    A photo with at least ``S x S`` pixels is held as its model input (one row of ``rows``); a
    smaller one as the decoded photo itself, put through the same
    :func:`~imgclf.preprocessing.resize_and_crop` when read, which gives the very pixels that
    resizing it at decode time would have (a fraction of a millisecond for a small photo).
    Reading works as on an array: an index, a slice or an index array gives a uint8 ndarray, and
    ``np.asarray(pixels)`` all of it; :meth:`subset` gives a view without reading.
    """

    def __init__(
        self,
        config: PreprocessConfig,
        rows: np.ndarray,
        photos: Sequence[np.ndarray],
        where: np.ndarray,
    ) -> None:
        """Model inputs ``rows``, small ``photos``, and where each image is (row ``i >= 0``).

        ``where[k] = i >= 0``: image ``k`` is ``rows[i]``; ``where[k] = i < 0``: it is photo
        ``photos[-1 - i]``.
        """
        self.config = config
        self._rows = rows
        self._photos = list(photos)
        self._where = where

    @classmethod
    def from_array(cls, pixels: np.ndarray, config: PreprocessConfig) -> Pixels:
        """Pixels of model inputs already made, uint8 ``(N, S, S, 3)``."""
        return cls(config, pixels, [], np.arange(len(pixels), dtype=np.int64))

    def __len__(self) -> int:
        return len(self._where)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, S, S, 3)``, as the array these pixels stand for."""
        size = self.config.input_size
        return len(self), size, size, 3

    @property
    def nbytes(self) -> int:
        """Bytes held: the rows of large photos plus the small photos as they are."""
        return int(self._rows.nbytes) + sum(int(photo.nbytes) for photo in self._photos)

    def _model_input(self, where: int) -> np.ndarray:
        if where >= 0:
            row: np.ndarray = self._rows[where]
            return row
        photo = Image.fromarray(self._photos[-1 - where])
        return np.asarray(resize_and_crop(photo, self.config), dtype=np.uint8)

    def _images(self, key: Any) -> np.ndarray:
        """``where`` of the images ``key`` selects: an int, a slice or a 1-D index/mask array."""
        if key is Ellipsis or key is None or isinstance(key, tuple):
            raise TypeError(f"Pixels select images by an int, a slice or a 1-D array, not {key!r}")
        where: np.ndarray = np.asarray(self._where[key])
        if where.ndim > 1:
            raise TypeError("Pixels select images by a 1-D index array")
        return where

    def __getitem__(self, key: int | slice | np.ndarray | tuple[Any, ...]) -> np.ndarray:
        """The model inputs of ``key`` (like indexing an array), as a new uint8 array.

        The first part of ``key`` selects images (an int, a slice or a 1-D index or mask array);
        the rest, if any, ints and slices within their pixels (``pixels[:, :, ::-1]`` mirrors
        them). Other keys raise ``TypeError`` rather than mean something else than on an array.
        """
        if isinstance(key, tuple):  # images first, then the rest of the index on their pixels
            images, *rest = key
            if not all(isinstance(part, int | slice) for part in rest):
                raise TypeError("within the images, Pixels take ints and slices only")
            picked = self[images]  # one image (H, W, 3) or several (N, H, W, 3)
            return picked[tuple(rest)] if picked.ndim == 3 else picked[:, *rest]
        where = self._images(key)
        if np.ndim(where) == 0:
            return np.array(self._model_input(int(where)))
        if len(where) and where.min() >= 0:
            gathered: np.ndarray = self._rows[where]  # every one a row: one gather
            return gathered
        out = np.empty((len(where), *self.shape[1:]), dtype=np.uint8)
        for i, index in enumerate(where.tolist()):
            out[i] = self._model_input(index)
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """All the model inputs, for ``np.asarray`` (always a new array: made when read)."""
        if copy is False:
            raise ValueError("Pixels are made when read: they cannot be had without a copy")
        pixels = self[:]
        return pixels if dtype is None else pixels.astype(dtype)

    def subset(self, key: slice | np.ndarray) -> Pixels:
        """A view of the images ``key`` selects, sharing this one's memory (nothing is read)."""
        where = self._images(key)
        if np.ndim(where) == 0:
            raise TypeError("Pixels.subset takes a slice or a 1-D array, not an int")
        return Pixels(self.config, self._rows, self._photos, where)

    def emptied(self) -> Pixels:
        """No images, holding nothing: for freeing a split's pixels once they are not needed."""
        return Pixels.from_array(np.empty((0, *self.shape[1:]), dtype=np.uint8), self.config)


#: What the feature and prediction passes read pixels from: an array or :class:`Pixels`.
PixelRows = np.ndarray | Pixels


@dataclass
class DecodedSplit:
    """The images of one split, decoded once.

    Attributes:
        paths: Source file of each image.
        labels: Class index of each image, int64 ``(N,)``.
        eval_pixels: Serving-identical model inputs, uint8 ``(N, S, S, 3)`` when read.
        train_images: Short-side-resized images for random crops (empty if not kept).
        failed: Files that could not be decoded now (changed since they were checked), with why.
    """

    paths: list[Path]
    labels: np.ndarray
    eval_pixels: Pixels
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

    A large photo's worker writes its model input straight into the next free row of one
    preallocated uint8 array, whose pages are only touched row by row (rows left unused never
    take memory); a photo with fewer pixels than the model input is kept as it is (see
    :class:`Pixels`). Memory thus holds ``3 min(S^2, w h)`` bytes per image plus the crop sources;
    see docs/design.md, "Training memory". Files that fail now are reported in ``failed`` and
    left out, never fatal.
    """
    size = config.input_size
    rows = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    row_of = np.full(len(paths), -1, dtype=np.int64)
    photos: dict[int, np.ndarray] = {}
    next_row = itertools.count()
    lock = threading.Lock()

    def decode(index: int) -> np.ndarray | str | None:
        try:
            image = open_image(paths[index], draft_size=config.resize_size)
        except ImgclfError as exc:
            return str(exc)
        if image.width * image.height < size * size:
            photo = np.array(image, dtype=np.uint8)
            photos[index] = photo
            return photo if keep_train_images else None
        pixels = np.asarray(resize_and_crop(image, config), dtype=np.uint8)
        with lock:
            row = next(next_row)
        rows[row] = pixels
        row_of[index] = row
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
    where = row_of[kept]  # a row for each large photo, -1 for each small one
    small = where < 0
    where[small] = -1 - np.arange(int(small.sum()))  # the small photos, numbered in order
    used = len(where) - int(small.sum())
    rows = rows[:used] if used else np.empty((0, size, size, 3), dtype=np.uint8)
    sources = [r for r in results if isinstance(r, np.ndarray)]
    return DecodedSplit(
        [paths[i] for i in kept],
        np.asarray([labels[i] for i in kept], dtype=np.int64),
        Pixels(config, rows, [photos[i] for i in np.asarray(kept)[small]], where),
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
