"""Image and model generators shared by the tests (imported as ``imgtools``).

Kept out of ``conftest.py`` on purpose: several test folders have a conftest of their own, and
``from conftest import ...`` resolves to whichever one pytest imported last.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

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
