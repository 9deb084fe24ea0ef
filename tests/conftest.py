"""Shared fixtures: synthetic images, a synthetic folder-per-class dataset and a tiny ONNX bundle.

Everything here is generated on the fly, so tests need no download and no real dataset. The tiny
bundle's ONNX model is built by hand (no torch): it averages each colour channel and maps the means
to logits for the labels ``red``, ``green`` and ``blue``, so it classifies solid-colour images
correctly and serving tests can assert real answers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from imgtools import COLORS, build_color_onnx, encode_image, make_image, write_color_dataset


@pytest.fixture
def image_bytes() -> Callable[..., bytes]:
    """Factory: ``image_bytes("red", fmt="PNG", size=(32, 32))`` -> encoded image bytes."""

    def factory(
        color: str = "red", fmt: str = "JPEG", size: tuple[int, int] = (64, 48), seed: int = 0
    ) -> bytes:
        return encode_image(make_image(COLORS[color], size, seed=seed), fmt)

    return factory


@pytest.fixture
def color_dataset(tmp_path: Path) -> Path:
    """A small train/validation/test dataset of three colour classes."""
    return write_color_dataset(tmp_path / "colors")


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    """A valid bundle with an ``onnx`` artifact that classifies solid colours (no torch needed)."""
    from imgclf.bundle import Bundle, Manifest
    from imgclf.preprocessing import PreprocessConfig

    root = tmp_path / "tiny-bundle"
    root.mkdir()
    config = PreprocessConfig(
        input_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
    )
    manifest = Manifest(
        name="colors",
        version="1",
        backbone="channel-means",
        labels=list(COLORS),
        preprocessing=config.to_dict(),
    )
    bundle = Bundle(root=root, manifest=manifest)
    build_color_onnx(root / "model.onnx", input_size=32)
    bundle.add_artifact(
        "onnx",
        root / "model.onnx",
        format="onnx",
        precision="fp32",
        input_name="input",
        output_name="logits",
    )
    return root
