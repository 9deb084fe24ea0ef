"""Image decoding and preprocessing, defined once for training, evaluation and serving.

Only numpy and Pillow are needed here, so the serving install (no torch) runs exactly the same code
that produced the validation and test metrics during training.

The pipeline for inference and evaluation is::

    bytes/path --open_image--> RGB PIL image --resize_and_crop--> input_size x input_size
               --to_chw_float--> float32 (3, H, W), normalised with mean/std

``open_image`` guards against bad input before any pixel is decoded: it checks the format against an
allow-list and the image against an :class:`~imgclf.image_budget.ImageBudget` (declared pixels,
frames, JPEG scans and decode memory, so a tiny PNG declaring 100000x100000 pixels is refused in
microseconds, and a wall-clock deadline while decoding), uses JPEG draft mode to decode at a
reduced scale when the image is much larger than needed, applies the EXIF orientation and
converts every mode (grayscale, palette, CMYK, alpha, 16-bit) to RGB.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imgclf.errors import (
    ConfigError,
    ImageDecodeError,
    ImageTooLargeError,
    InputError,
    UnsupportedMediaError,
)
from imgclf.image_budget import (
    DEFAULT_MAX_PIXELS,
    DeadlineReader,
    DecodeLane,
    DecodeMemoryPool,
    ImageBudget,
    check_declared,
    check_decode_memory,
    check_jpeg_scans,
)

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
CropMode = Literal["center", "squash"]

#: Pillow formats accepted as input. Anything else is refused as unsupported media.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"})

_RESAMPLE: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = bytes | bytearray | memoryview | str | Path | BinaryIO


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes a model input. Travels with the model inside the bundle manifest.

    Attributes:
        input_size: Side of the square model input, in pixels.
        crop_pct: Fraction of the resized image kept by the centre crop; the short side is first
            resized to ``floor(input_size / crop_pct)``.
        crop_mode: ``"center"`` keeps the aspect ratio then centre-crops; ``"squash"`` resizes both
            sides to the same length (no content is cut, shapes are distorted) then centre-crops.
        interpolation: Resampling filter used for resizing.
        mean: Per-channel mean subtracted from pixels scaled to [0, 1].
        std: Per-channel standard deviation pixels are divided by.
    """

    input_size: int = 224
    crop_pct: float = 0.875
    crop_mode: CropMode = "center"
    interpolation: Interpolation = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    _extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 16 <= self.input_size <= 2048:
            raise ConfigError(f"input_size must be between 16 and 2048, got {self.input_size}")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct}")
        if self.crop_mode not in get_args(CropMode):
            raise ConfigError(
                f"crop_mode must be one of {get_args(CropMode)}, got {self.crop_mode!r}"
            )
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(
                f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ConfigError("mean and std must have 3 values each, std strictly positive")

    @property
    def resize_size(self) -> int:
        """Length the short side is resized to before the centre crop."""
        return math.floor(self.input_size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, as stored in manifests and ONNX metadata."""
        data = asdict(self)
        data.pop("_extra")
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        data["resize_size"] = self.resize_size
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Build from :meth:`to_dict` output; unknown keys are refused, derived keys ignored."""
        known = {"input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std"}
        unknown = set(data) - known - {"resize_size"}
        if unknown:
            raise ConfigError(f"unknown preprocessing keys: {sorted(unknown)}")
        kwargs: dict[str, Any] = {k: data[k] for k in known if k in data}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_timm(
        cls, pretrained_cfg: Mapping[str, Any], input_size: int | None = None
    ) -> PreprocessConfig:
        """Take the settings a timm model was pretrained with (``model.pretrained_cfg``).

        Args:
            pretrained_cfg: timm's pretrained config mapping (``input_size``, ``crop_pct``, ...).
            input_size: Override the input side (e.g. to fine-tune at another resolution).
        """
        size = input_size or int(pretrained_cfg.get("input_size", (3, 224, 224))[-1])
        interpolation = str(pretrained_cfg.get("interpolation", "bicubic"))
        crop_mode = str(pretrained_cfg.get("crop_mode", "center"))
        return cls(
            input_size=size,
            crop_pct=float(pretrained_cfg.get("crop_pct", 0.875)),
            crop_mode="squash" if crop_mode == "squash" else "center",
            interpolation=interpolation if interpolation in _RESAMPLE else "bicubic",  # type: ignore[arg-type]
            mean=tuple(float(v) for v in pretrained_cfg.get("mean", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
            std=tuple(float(v) for v in pretrained_cfg.get("std", (0.5, 0.5, 0.5))),  # type: ignore[arg-type]
        )


def _read_source(source: ImageSource) -> tuple[bytes, str]:
    """The encoded bytes of ``source`` and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), "image"
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ImageDecodeError(f"{path}: no such file")
        try:
            data, name = path.read_bytes(), str(source)
        except OSError as exc:
            raise ImageDecodeError(f"{path}: cannot read the file ({exc.strerror})") from exc
    else:
        data, name = source.read(), "image"
    if not data:
        what = f"{name}: empty file (zero bytes)" if name != "image" else "empty input: zero bytes"
        raise ImageDecodeError(f"{what} received, expected an image")
    return data, name


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparent areas become white.

    Product photos often have transparent backgrounds: compositing on white matches how they are
    shown in a shop, where a plain ``convert("RGB")`` would turn them black.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = _sixteen_bit_to_grey(image)
    if image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_bit_to_grey(image: Image.Image) -> Image.Image:
    """Scale 16-bit (or 32-bit integer) greyscale to 8 bits, a band of rows at a time.

    Converting the whole array to floating point at once would be the largest copy the image
    makes (8 bytes per pixel in float64); bands keep the extra memory to the 8-bit result.
    """
    array = np.asarray(image)
    peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    scale = np.float32(255.0 / peak)
    grey = np.empty(array.shape, dtype=np.uint8)
    for top in range(0, array.shape[0], 256):
        band = array[top : top + 256].astype(np.float32) * scale
        grey[top : top + 256] = np.clip(band, 0, 255)
    return Image.fromarray(grey, "L")


def open_image(
    source: ImageSource,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    budget: ImageBudget | None = None,
    memory: DecodeMemoryPool | None = None,
    deadline: float | None = None,
    lane: DecodeLane | None = None,
) -> Image.Image:
    """Decode an image safely into an RGB Pillow image with its EXIF orientation applied.

    Args:
        source: Encoded bytes, a path, or a binary file object.
        max_pixels: Refuse images declaring more pixels than this, before decoding (None: no cap
            beyond Pillow's own); ignored when ``budget`` is given.
        draft_size: If set, JPEGs are decoded at the smallest power-of-two reduction whose sides
            are still at least this many pixels (much faster for large photos).
        budget: Every limit on the decode's cost (default: only ``max_pixels``).
        memory: Pool the decode reserves its estimated memory from while it runs.
        deadline: ``time.monotonic()`` by which the decode must be done (default: the budget's
            timeout from now); a server sets it when the request arrives, so time spent waiting
            for a decode thread counts too.
        lane: Raise :class:`~imgclf.image_budget.DecodeLaneError` instead of decoding an image
            that costs more than this lane takes (within the budget all the same).

    Returns:
        A fully loaded RGB image.

    Raises:
        ImageDecodeError: The input is empty, truncated, corrupt or not a file.
        UnsupportedMediaError: The input is not an image, or a format that is not accepted.
        ImageTooLargeError: Too many pixels, or too much memory to decode (413).
        ImageTooCostlyError: Too many JPEG scans or frames, or decoding ran past the deadline.
        OverloadedError: ``memory`` stayed full until the deadline.
    """
    budget = budget if budget is not None else ImageBudget.pixels_only(max_pixels)
    data, name = _read_source(source)
    deadline = deadline if deadline is not None else budget.deadline()
    reader = DeadlineReader(data, deadline, budget.timeout_s, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(reader) as image:
                lanes = (memory, lane)
                return _decode_opened(image, data, name, budget, draft_size, lanes, reader)
    except UnidentifiedImageError as exc:
        raise UnsupportedMediaError(f"{name}: not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        limit = budget.max_pixels if budget.max_pixels is not None else Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(f"{name}: more pixels than the limit of {limit:,} pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        raise ImageDecodeError(f"{name}: corrupt or truncated image ({exc})") from exc


def _decode_opened(
    image: Image.Image,
    data: bytes,
    name: str,
    budget: ImageBudget,
    draft_size: int | None,
    lanes: tuple[DecodeMemoryPool | None, DecodeLane | None],
    reader: DeadlineReader,
) -> Image.Image:
    fmt = image.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedMediaError(
            f"{name}: image format {fmt} is not accepted; use one of {sorted(SUPPORTED_FORMATS)}"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name}: image has no pixels ({width}x{height})")
    check_declared(image, budget, name)
    scan_pixels = 0
    if fmt in ("JPEG", "MPO"):
        scan_pixels = check_jpeg_scans(data, width * height, budget, name)
        if draft_size is not None:
            image.draft("RGB", (draft_size, draft_size))
    cost = check_decode_memory(image, budget, name)
    memory, lane = lanes
    if lane is not None:
        lane.check(cost, scan_pixels)
    with memory.reserve(cost, reader.deadline) if memory is not None else nullcontext():
        image.load()
        reader.check()
        image = ImageOps.exif_transpose(image) or image
        return to_rgb(image)


def resized_size(width: int, height: int, config: PreprocessConfig) -> tuple[int, int]:
    """Size an image of ``width`` x ``height`` is resized to before the centre crop."""
    scale = config.resize_size
    if config.crop_mode == "squash":
        return scale, scale
    if width <= height:
        return scale, max(scale, round(height * scale / width))
    return max(scale, round(width * scale / height)), scale


def resize_and_crop(image: Image.Image, config: PreprocessConfig) -> Image.Image:
    """Resize then centre-crop to ``config.input_size`` square, as the model expects."""
    resample = _RESAMPLE[config.interpolation]
    width, height = image.size
    new_w, new_h = resized_size(width, height, config)
    size = config.input_size
    left = (new_w - size) // 2
    top = (new_h - size) // 2
    if (new_w, new_h) == (width, height):
        return image.crop((left, top, left + size, top + size))
    # Resample only the crop window instead of resizing the whole image and cropping afterwards:
    # the filter still reads source pixels just outside the window, so the result differs from
    # resize-then-crop by rounding only (on clothing-small: 0.01 grey levels on average, at most
    # 7), and the rows and columns the crop would throw away are never computed (about 16% of
    # the resize time for the 400x534 photos).
    scale_x, scale_y = width / new_w, height / new_h
    box = (left * scale_x, top * scale_y, (left + size) * scale_x, (top + size) * scale_y)
    return image.resize((size, size), resample, box=box, reducing_gap=3.0)


def normalize(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Turn uint8 ``(..., H, W, 3)`` pixels into normalised float32 ``(..., 3, H, W)``."""
    mean = np.asarray(config.mean, dtype=np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(config.std, dtype=np.float32) * 255.0)
    out = (pixels.astype(np.float32) - mean) * inv_std
    return np.ascontiguousarray(np.moveaxis(out, -1, -3))


def load_pixels(
    source: ImageSource,
    config: PreprocessConfig,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    budget: ImageBudget | None = None,
    memory: DecodeMemoryPool | None = None,
    deadline: float | None = None,
    lane: DecodeLane | None = None,
) -> np.ndarray:
    """Decode, resize and crop one image into uint8 ``(H, W, 3)`` model-ready pixels.

    The keyword arguments are as for :func:`open_image`.
    """
    image = open_image(
        source,
        max_pixels=max_pixels,
        draft_size=config.resize_size,
        budget=budget,
        memory=memory,
        deadline=deadline,
        lane=lane,
    )
    return np.asarray(resize_and_crop(image, config), dtype=np.uint8)


def preprocess(
    source: ImageSource, config: PreprocessConfig, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode and preprocess one image into a float32 ``(3, H, W)`` model input."""
    return normalize(load_pixels(source, config, max_pixels=max_pixels), config)


def preprocess_batch(
    sources: Iterable[ImageSource],
    config: PreprocessConfig,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Preprocess several images into one float32 ``(N, 3, H, W)`` batch."""
    pixels = [load_pixels(src, config, max_pixels=max_pixels) for src in sources]
    if not pixels:
        return np.zeros((0, 3, config.input_size, config.input_size), dtype=np.float32)
    return normalize(np.stack(pixels), config)
