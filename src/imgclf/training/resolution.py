"""Input size and schedule length from the photos themselves: 32 px images do not train at 224.

An ImageNet backbone recognises objects best near the scale it was pretrained at, so small photos
are upscaled, but a 32 px CIFAR photo blown up to 224 px costs 49 times its pixels in every pass
and memory for no new detail. The rule: take the backbone's pretrained size, unless the photos'
median short side is under half of it; then use :data:`UPSCALE` times that side (rounded up to a
multiple of 32, at least :data:`MIN_SIZE`). ``--image-size`` overrides it; the chosen size is
saved in the bundle's preprocessing and the reason in ``manifest.training["image_size_reason"]``.

The pixels a smaller input saves are spent on a longer schedule: the default fine-tunes for
:data:`BASE_EPOCHS` epochs at the backbone's size, and for as many more as keep the pixels seen
the same at a smaller size (24 epochs at 128 px for a 224 px backbone). Measured on the
cifar10-small validation split at equal compute, 9 epochs at 128 px reached 87.2% top-1 and 3
epochs at 224 px 80.5% (docs/benchmarks.md). ``--epochs`` overrides it; the count and the reason
are saved in ``manifest.training["epochs"]`` and ``["epochs_reason"]``. Early stopping's default
patience grows with the schedule (:func:`default_patience`): validation top-1 is noisy while the
learning rate is high, and a 24-epoch schedule stopped by the default of 3 ended at its 15th
epoch, before the cosine decay it was chosen for.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

#: How much small photos are upscaled: enough for the backbone's receptive fields and strides.
UPSCALE = 4
#: Never below this size (five stride-2 stages leave a 3x3 map at 96 px).
MIN_SIZE = 96
#: Fine-tuning epochs at the backbone's own input size.
BASE_EPOCHS = 8
#: Never more than this by default: decoding, augmenting and each layer's fixed cost per image
#: do not shrink with its pixels, so a very small input would make the schedule slower, not equal.
MAX_EPOCHS = 4 * BASE_EPOCHS
#: Default early-stopping patience per epoch of the schedule: 3 of the default 8.
PATIENCE_SHARE = 3 / 8
#: Photos whose headers are read to find the typical size (evenly spread over the list).
SAMPLE = 200


def median_short_side(paths: Sequence[Path], sample: int = SAMPLE) -> int | None:
    """Median short side of up to ``sample`` photos (headers only); None if none can be read."""
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError):  # unreadable files are reported by decoding, later
            continue
    return round(statistics.median(sides)) if sides else None


def choose_image_size(short_side: int | None, backbone_size: int) -> tuple[int, str]:
    """The serving/evaluation input size for photos of this median short side, and why."""
    if short_side is None:
        return backbone_size, f"the backbone's pretrained size, {backbone_size} px"
    if short_side * 2 >= backbone_size or short_side * UPSCALE >= backbone_size:
        return backbone_size, (
            f"the backbone's pretrained size, {backbone_size} px; the photos' median short "
            f"side is {short_side} px"
        )
    size = max(MIN_SIZE, math.ceil(short_side * UPSCALE / 32) * 32)
    size = min(size, backbone_size)
    saved = (backbone_size / size) ** 2
    return size, (
        f"{UPSCALE}x the photos' median short side of {short_side} px, instead of the "
        f"backbone's {backbone_size} px ({saved:.1f}x fewer pixels per image)"
    )


def choose_epochs(image_size: int, backbone_size: int) -> tuple[int, str]:
    """Default fine-tuning epochs at this input size, and why.

    The pixels of :data:`BASE_EPOCHS` epochs at the backbone's size, at most :data:`MAX_EPOCHS`.
    """
    if image_size >= backbone_size:
        return BASE_EPOCHS, f"the default {BASE_EPOCHS} at the backbone's size or above"
    ratio = (backbone_size / image_size) ** 2
    epochs = min(MAX_EPOCHS, round(BASE_EPOCHS * ratio))
    capped = f", at most {MAX_EPOCHS}" if epochs == MAX_EPOCHS else ""
    return epochs, (
        f"{BASE_EPOCHS} epochs' pixels at the backbone's {backbone_size} px, spent at "
        f"{image_size} px ({ratio:.1f}x fewer pixels per image{capped})"
    )


def default_patience(epochs: int) -> int:
    """Early-stopping patience for a schedule of ``epochs``: :data:`PATIENCE_SHARE` of it, >= 3."""
    return max(3, round(epochs * PATIENCE_SHARE))
