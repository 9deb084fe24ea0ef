"""What one image may cost to decode: pixels, memory, JPEG scans, frames and wall-clock time.

The size of an encoded image says little about what decoding it costs: a 47 KB 16-bit PNG near
the pixel cap needs hundreds of megabytes, and a 500 KB progressive JPEG whose scans repeat
thousands of times takes minutes. :class:`ImageBudget` bounds each cost before or while the image
is decoded, using only what the headers (and, for JPEG, one pass over the markers) say:

- **pixels**: width x height, as declared (:class:`~imgclf.errors.ImageTooLargeError`, 413);
- **decode memory**: pixels x the bytes per pixel Pillow stores for the mode, plus the copies the
  conversion to RGB makes (16-bit greyscale, alpha compositing); only the first frame of an
  animation is ever decoded, so frames add nothing beyond it (413);
- **JPEG scans**: progressive JPEGs are decoded scan by scan and each scan revisits the whole
  image, so the scan count is capped before libjpeg sees the data (422);
- **frames**: animations and multi-page files declaring more frames than the cap (422);
- **time**: a deadline checked each time the decoder reads more input, so a slow image gives up
  its thread when the deadline passes (422).

:class:`DecodeMemoryPool` shares a memory allowance between the threads that decode at the same
time: each decode reserves its estimate first, so the sum of what is being decoded stays bounded
whatever mix of images arrives together. :class:`DecodeLane` says which images within the budget
are still costly (much memory, or a JPEG with many scans), so a server can decode them apart
from ordinary photos.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from PIL import Image

from imgclf.errors import ImageTooCostlyError, ImageTooLargeError, OverloadedError

#: Default cap on declared pixels: 24 MP (a 6000x4000 camera photo). Pillow's own limit is about
#: 89 MP (warning) and 179 MP (error); a 6000x6000 PNG of 35 KB already costs ~127 MB to decode.
DEFAULT_MAX_PIXELS = 24_000_000
#: Default cap on the memory one decode may need (a 24 MP RGB image is 96 MB in Pillow).
DEFAULT_MAX_DECODE_BYTES = 128 * 1024 * 1024
#: Encoders write about 10 scans (mozjpeg, Photoshop); libjpeg-turbo's djpeg suggests refusing
#: hundreds. Each scan costs a pass over the whole image, so the cap bounds the decode time.
DEFAULT_MAX_JPEG_SCANS = 64
#: Scans x pixels of a JPEG: libjpeg spends a few ns per pixel per scan even at a reduced draft
#: scale, so this bounds a progressive JPEG's decode to about a second (a 24 MP photo with 16
#: scans fits).
DEFAULT_MAX_JPEG_SCAN_PIXELS = 400_000_000
#: Frames or pages declared by an animation or a multi-page file (only the first is decoded).
DEFAULT_MAX_FRAMES = 1000
#: Wall-clock time one image may take to decode.
DEFAULT_DECODE_TIMEOUT_S = 5.0

_SOS = b"\xff\xda"
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7: no length field
_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ONE_BYTE = frozenset({"1", "L", "P"})


@dataclass(frozen=True)
class ImageBudget:
    """Limits on what decoding one image may cost; ``None`` switches a limit off.

    Attributes:
        max_pixels: Declared width x height.
        max_decode_bytes: Estimated memory to decode the image and convert it to RGB.
        max_jpeg_scans: Scans in a JPEG (progressive JPEGs have one per refinement pass).
        max_jpeg_scan_pixels: Scans x declared pixels of a JPEG (the work libjpeg does).
        max_frames: Frames or pages an animation or a multi-page file may declare.
        timeout_s: Wall-clock time to decode, from the first byte read to the RGB image.
    """

    max_pixels: int | None = DEFAULT_MAX_PIXELS
    max_decode_bytes: int | None = DEFAULT_MAX_DECODE_BYTES
    max_jpeg_scans: int | None = DEFAULT_MAX_JPEG_SCANS
    max_jpeg_scan_pixels: int | None = DEFAULT_MAX_JPEG_SCAN_PIXELS
    max_frames: int | None = DEFAULT_MAX_FRAMES
    timeout_s: float | None = DEFAULT_DECODE_TIMEOUT_S

    @classmethod
    def pixels_only(cls, max_pixels: int | None) -> ImageBudget:
        """Only the pixel cap (local files: training, evaluation, dataset checks)."""
        return cls(max_pixels, None, None, None, None, None)

    def deadline(self) -> float | None:
        """The monotonic time by which a decode starting now must be done, or None."""
        return None if self.timeout_s is None else time.monotonic() + self.timeout_s


def count_jpeg_scans(data: bytes) -> int:
    """Count the scans (SOS markers) of a JPEG in one pass over its bytes.

    The segments before the first scan are walked by their lengths, so an embedded thumbnail in
    an EXIF segment is not counted; after it, entropy-coded data never contains ``FF DA`` (an
    ``FF`` byte there is always followed by ``00`` or a restart marker), so a plain count finds
    exactly the scan headers.
    """
    pos = 2  # after SOI
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return 0  # not a marker where one must be: let the decoder report the corruption
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _STANDALONE_MARKERS:
            pos += 2
        elif marker == 0xDA:
            return data.count(_SOS, pos)
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return 0


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow stores per pixel for ``mode`` (RGB is padded to 4)."""
    if mode in _ONE_BYTE:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def decode_bytes(mode: str, size: tuple[int, int], has_transparency: bool = False) -> int:
    """Estimated peak memory to decode an image of ``mode`` and ``size`` and convert it to RGB.

    The decoded image itself, plus the copies :func:`imgclf.preprocessing.to_rgb` makes: 16-bit
    greyscale goes through a numpy copy and an 8-bit one; alpha is composited on white (an RGBA
    copy unless it is RGBA already, the background, the composite and the RGB result); other
    modes make one RGB copy.
    """
    pixels = size[0] * size[1]
    stored = bytes_per_pixel(mode)
    if mode in _SIXTEEN_BIT:
        extra = stored + 1 + 4  # the numpy copy, 8-bit greyscale, RGB
    elif mode in _ALPHA or has_transparency:
        extra = 3 * 4 if mode == "RGBA" else 4 * 4
    elif mode == "RGB":
        extra = 0
    else:
        extra = 4
    return pixels * (stored + extra)


def check_declared(image: Image.Image, budget: ImageBudget, name: str) -> None:
    """Refuse an opened (not yet decoded) image declaring too many pixels or frames.

    Raises:
        ImageTooLargeError: Too many pixels (413).
        ImageTooCostlyError: Too many frames (422).
    """
    width, height = image.size
    if budget.max_pixels is not None and width * height > budget.max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height:,} pixels exceeds the limit "
            f"of {budget.max_pixels:,} pixels"
        )
    frames = int(getattr(image, "n_frames", 1))
    if budget.max_frames is not None and frames > budget.max_frames:
        raise ImageTooCostlyError(
            f"{name}: {frames:,} frames exceeds the limit of {budget.max_frames:,}; send a "
            "still image"
        )


def check_decode_memory(image: Image.Image, budget: ImageBudget, name: str) -> int:
    """Refuse an opened image (after any JPEG draft) that needs too much memory to decode.

    Returns:
        The estimated decode memory in bytes, to reserve from a :class:`DecodeMemoryPool`.

    Raises:
        ImageTooLargeError: The estimate is over ``budget.max_decode_bytes`` (413).
    """
    cost = decode_bytes(image.mode, image.size, "transparency" in image.info)
    if budget.max_decode_bytes is not None and cost > budget.max_decode_bytes:
        width, height = image.size
        raise ImageTooLargeError(
            f"{name}: a {width}x{height} {image.mode} image needs about {cost / 2**20:,.0f} MiB "
            f"to decode; the limit is {budget.max_decode_bytes / 2**20:,.0f} MiB "
            "(send fewer pixels, or 8-bit colour)"
        )
    return cost


def check_jpeg_scans(data: bytes, pixels: int, budget: ImageBudget, name: str) -> int:
    """Refuse a JPEG with too many scans for its size, before libjpeg decodes it.

    Returns:
        Scans x ``pixels``: the work libjpeg will do, whatever the draft scale.

    Raises:
        ImageTooCostlyError: Too many scans, or scans x ``pixels`` over the budget (422).
    """
    scans = count_jpeg_scans(data)
    if budget.max_jpeg_scans is not None and scans > budget.max_jpeg_scans:
        raise ImageTooCostlyError(
            f"{name}: a JPEG with {scans:,} scans exceeds the limit of {budget.max_jpeg_scans} "
            "(each scan is a pass over the whole image); re-encode it as a baseline JPEG"
        )
    if budget.max_jpeg_scan_pixels is not None and scans * pixels > budget.max_jpeg_scan_pixels:
        raise ImageTooCostlyError(
            f"{name}: {scans} scans over {pixels:,} pixels exceeds the limit of "
            f"{budget.max_jpeg_scan_pixels:,} pixel-scans; re-encode it as a baseline JPEG or "
            "send fewer pixels"
        )
    return scans * pixels


@dataclass(frozen=True)
class DecodeLane:
    """The images a server's ordinary decode lane takes; costlier ones go to its costly lane.

    Attributes:
        max_decode_bytes: Estimated decode memory (:func:`decode_bytes`).
        max_jpeg_scan_pixels: Scans x pixels of a JPEG (a progressive photo with many scans
            costs libjpeg a pass over every pixel per scan, even at a reduced draft scale).
    """

    max_decode_bytes: int
    max_jpeg_scan_pixels: int

    def check(self, decode_memory: int, jpeg_scan_pixels: int) -> None:
        """Raise :class:`DecodeLaneError` when an image costs more than this lane takes."""
        if decode_memory > self.max_decode_bytes:
            raise DecodeLaneError(f"needs about {decode_memory / 2**20:,.0f} MiB to decode")
        if jpeg_scan_pixels > self.max_jpeg_scan_pixels:
            raise DecodeLaneError(f"a JPEG of {jpeg_scan_pixels:,} pixel-scans")


class DecodeLaneError(Exception):
    """The image costs more than the decode lane takes: decode it in the costly lane.

    Not an input error and never shown to a client: a server raises it from its ordinary lane
    (a ``lane`` on :func:`imgclf.preprocessing.open_image`) and decodes the image again on the
    low-priority threads it keeps for costly images, so they never hold up ordinary photos.
    """


class DeadlineReader(io.BytesIO):
    """An in-memory file whose reads fail once its deadline has passed.

    Pillow decoders pull their input in blocks of at most 64 KiB through ``read``; checking the
    clock there stops a slow decode between two blocks and frees its thread.
    """

    def __init__(self, data: bytes, deadline: float | None, timeout_s: float | None, name: str):
        super().__init__(data)
        self.deadline, self._timeout_s, self._name = deadline, timeout_s, name

    def check(self) -> None:
        """Raise :class:`ImageTooCostlyError` if the deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ImageTooCostlyError(
                f"{self._name}: decoding took longer than {self._timeout_s:g} s; send a smaller "
                "or simpler image"
            )

    def read(self, size: int | None = -1, /) -> bytes:
        """Read like :class:`io.BytesIO`, unless the deadline has passed."""
        self.check()
        return super().read(size)

    def read1(self, size: int | None = -1, /) -> bytes:
        """Read like :class:`io.BytesIO`, unless the deadline has passed."""
        self.check()
        return super().read1(size)

    def readinto(self, buffer: Any, /) -> int:
        """Read like :class:`io.BytesIO`, unless the deadline has passed."""
        self.check()
        return super().readinto(buffer)


class DecodeMemoryPool:
    """Memory shared by the decodes running at the same time.

    Each decode reserves its estimate (:func:`decode_bytes`) before decoding and returns it after;
    a decode that would not fit waits for others to finish, up to its own deadline.
    """

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        """Bytes reserved right now."""
        return self._used

    @contextmanager
    def reserve(self, nbytes: int, deadline: float | None) -> Iterator[None]:
        """Hold ``nbytes`` of the pool while the block runs.

        Raises:
            ImageTooLargeError: ``nbytes`` is more than the whole pool (413).
            OverloadedError: The memory did not free up before ``deadline`` (503).
        """
        if nbytes > self.capacity:
            raise ImageTooLargeError(
                f"decoding this image needs about {nbytes / 2**20:,.0f} MiB; this service "
                f"decodes at most {self.capacity / 2**20:,.0f} MiB of images at a time"
            )
        with self._changed:
            fits = self._changed.wait_for(
                lambda: self._used + nbytes <= self.capacity,
                None if deadline is None else max(0.0, deadline - time.monotonic()),
            )
            if not fits:
                raise OverloadedError("the service is busy decoding other large images; retry")
            self._used += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._used -= nbytes
                self._changed.notify_all()
