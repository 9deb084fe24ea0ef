"""Input resolution from the photos themselves, so 32 px images do not train at 224 px.

An ImageNet backbone recognises objects best near the scale it was pretrained at, so small photos
are upscaled, but a 32 px CIFAR photo blown up to 224 px costs 49 times its pixels in every pass
and memory for no new detail. The rule: take the backbone's pretrained size, unless the photos'
median short side is under half of it; then use :data:`UPSCALE` times that side (rounded up to a
multiple of 32, at least :data:`MIN_SIZE`). ``--image-size`` overrides it; the chosen size is
saved in the bundle's preprocessing and the reason in ``manifest.training["image_size_reason"]``.
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
