"""Image and model generators shared by the tests (imported as ``imgtools``).

Kept out of ``conftest.py`` on purpose: several test folders have a conftest of their own, and
``from conftest import ...`` resolves to whichever one pytest imported last.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (30, 40, 220),
}


def make_image(
    color: tuple[int, int, int],
    size: tuple[int, int] = (64, 48),
    *,
    noise: int = 20,
    seed: int = 0,
) -> Image.Image:
    """A solid-colour RGB image with a little noise, so JPEG encodes are not trivial."""
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.asarray(color, dtype=np.int16), (size[1], size[0], 3))
    jitter = rng.integers(-noise, noise + 1, size=base.shape, dtype=np.int16)
    return Image.fromarray(np.clip(base + jitter, 0, 255).astype(np.uint8), "RGB")


def encode_image(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    """Encode a Pillow image to bytes in the given format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def write_color_dataset(
    root: Path,
    per_class: int = 12,
    splits: tuple[str, ...] = ("train", "validation", "test"),
    size: tuple[int, int] = (48, 40),
) -> Path:
    """Write a folder-per-class dataset of solid-colour JPEGs under ``root``."""
    for split_index, split in enumerate(splits):
        for class_index, (name, color) in enumerate(COLORS.items()):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                seed = 10_000 * split_index + 100 * class_index + i
                make_image(color, size, seed=seed).save(folder / f"{name}_{i:03d}.jpg", quality=90)
    return root


def build_color_onnx(path: Path, input_size: int = 32) -> Path:
    """Write an ONNX model mapping an image's channel means to red/green/blue logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.eye(3, dtype=np.float32) * 8.0  # channel mean -> logit of that colour
    bias = np.zeros(3, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["pooled4d"], axes=[2, 3], keepdims=1),
            helper.make_node("Flatten", ["pooled4d"], ["pooled"], axis=1),
            helper.make_node("Gemm", ["pooled", "W", "B"], ["logits"]),
        ],
        "color_classifier",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, ["batch", 3, input_size, input_size]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def clothing_dir() -> Path:
    """The clothing-small dataset: ``$IMGCLF_CLOTHING_DIR`` or ``../shared`` beside the repo.

    It may not exist; tests that need it skip when it is absent.
    """
    default = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "clothing-small"
    return Path(os.environ.get("IMGCLF_CLOTHING_DIR", default)).resolve()


def many_scan_jpeg(size: tuple[int, int] = (2000, 2000), repeats: int = 500) -> bytes:
    """A flat progressive JPEG whose last scan is repeated: tiny, and slow to decode.

    Each scan of a flat image is a few bytes of end-of-band runs, yet libjpeg decodes every scan
    over the whole image; libjpeg only warns about the repeated progression.
    """
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, "JPEG", progressive=True, quality=90)
    data = buffer.getvalue()
    last_scan = data.rindex(b"\xff\xda")
    scan = data[last_scan:-2]  # up to EOI
    return data[:-2] + scan * repeats + b"\xff\xd9"


def raw_png(
    size: tuple[int, int],
    bit_depth: int = 16,
    color_type: int = 0,
    declared: tuple[int, int] | None = None,
) -> bytes:
    """A flat PNG of any bit depth and colour type (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA).

    Zero rows compress about 1000:1, so a file of a few tens of KB declares hundreds of MB of
    decoded pixels. The rows are compressed in pieces, never held whole. ``declared`` puts
    another size in the header (a pixel bomb: the header lies, the data is short).
    """
    import struct
    import zlib

    width, height = size
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = b"\x00" * (1 + width * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    pieces = [compressor.compress(row * 64) for _ in range(height // 64)]
    pieces += [compressor.compress(row * (height % 64)), compressor.flush()]

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    width, height = declared or size
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(pieces))
        + chunk(b"IEND", b"")
    )


def animated_gif(frames: int, size: tuple[int, int] = (8, 8)) -> bytes:
    """A GIF with ``frames`` frames of alternating colours."""
    images = [Image.new("L", size, 255 * (index % 2)) for index in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buffer.getvalue()


def trickle(out: Any, head: bytes, every_s: float, count: int) -> None:
    """Write ``head``, then one byte every ``every_s`` seconds, ``count`` times or until the
    reader goes away: an upstream that is slow without ever being idle long enough to time out.
    """
    import time

    out.write(head)
    for _ in range(count):
        try:
            out.write(b"x")
            out.flush()
        except OSError:
            return
        time.sleep(every_s)
