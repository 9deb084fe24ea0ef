"""Fixtures for export tests: a real EfficientNet-Lite0 bundle that classifies colours.

The backbone is randomly initialised (no weights download) and the classifier head is fitted in
closed form (ridge regression on pooled features of generated colour images), so the PyTorch
model really classifies red, green and blue photos and accuracy checks have something to measure.
Exporting with torch takes tens of seconds, so the expensive artifacts are made once per session;
each test gets its own copy of the bundle directory.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("timm")

COLORS: dict[str, tuple[int, int, int]] = {
    "blue": (30, 40, 220),
    "green": (30, 200, 40),
    "red": (220, 30, 30),
}  # sorted by name, as dataset loading orders classes
LABELS = list(COLORS)
INPUT_SIZE = 64


def colour_image(color: tuple[int, int, int], seed: int, scale: float = 1.0) -> Image.Image:
    """A noisy solid-colour image (``scale`` < 1 darkens it)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(color, dtype=np.float32) * scale
    pixels = base + rng.normal(0, 12, size=(56, 72, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_dataset(root: Path, per_class: int = 6, train_scale: float = 1.0) -> Path:
    """Folder-per-class train/validation/test JPEGs; ``train_scale`` < 1 darkens training images."""
    for split_index, split in enumerate(("train", "validation", "test")):
        for class_index, (name, color) in enumerate(COLORS.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            scale = train_scale if split == "train" else 1.0
            for i in range(per_class):
                seed = 1000 * split_index + 100 * class_index + i
                colour_image(color, seed, scale).save(folder / f"{i:02d}.jpg", quality=92)
    return root


def _fit_head(model: object) -> None:
    """Set the classifier so the model separates the colours (ridge regression, closed form)."""
    import torch

    from imgclf.preprocessing import PreprocessConfig, normalize, resize_and_crop

    config = PreprocessConfig(input_size=INPUT_SIZE)
    images, targets = [], []
    for index, color in enumerate(COLORS.values()):
        for seed in range(8):
            image = resize_and_crop(colour_image(color, 500 + seed), config)
            images.append(np.asarray(image))
            targets.append(np.eye(len(COLORS))[index] * 8.0 - 4.0)
    batch = torch.from_numpy(normalize(np.stack(images), config))
    with torch.no_grad():
        features = model.forward_head(model.forward_features(batch), pre_logits=True).numpy()  # type: ignore[attr-defined]
    mean = features.mean(axis=0)
    centred = features - mean
    gram = centred @ centred.T + 1e-3 * np.eye(len(centred))
    weights = centred.T @ np.linalg.solve(gram, np.asarray(targets))  # (features, classes)
    classifier = model.get_classifier()  # type: ignore[attr-defined]
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(weights.T.astype(np.float32)))
        classifier.bias.copy_(torch.from_numpy((-mean @ weights).astype(np.float32)))


def build_torch_bundle(root: Path) -> Path:
    """Write a bundle with a Lite0 colour classifier (3 classes, 64 px) as ``model.pt``."""
    import torch

    from imgclf.backbones import create_model
    from imgclf.bundle import Bundle, Manifest
    from imgclf.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", len(LABELS), pretrained=False).eval()
    _fit_head(model)
    root.mkdir(parents=True)
    torch.save(model.state_dict(), root / "model.pt")
    config = PreprocessConfig(input_size=INPUT_SIZE)
    manifest = Manifest(
        name="tiny-lite0",
        version="3",
        backbone="tf_efficientnet_lite0",
        labels=LABELS,
        preprocessing=config.to_dict(),
        training={"model_kwargs": {}},
    )
    bundle = Bundle(root=root, manifest=manifest)
    bundle.add_artifact("pytorch", root / "model.pt", format="pytorch")
    return root


@pytest.fixture
def make_dataset() -> Callable[..., Path]:
    """Factory: ``make_dataset(root, per_class=6, train_scale=1.0)`` writes a colour dataset."""
    return write_dataset


@pytest.fixture
def make_colour_image() -> Callable[..., Image.Image]:
    """Factory: ``make_colour_image((r, g, b), seed)`` -> a noisy solid-colour image."""
    return colour_image


@pytest.fixture(scope="session")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small dataset with the fixture bundle's classes."""
    return write_dataset(tmp_path_factory.mktemp("data") / "colours")


@pytest.fixture(scope="session")
def _pristine_torch_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_torch_bundle(tmp_path_factory.mktemp("torch-bundle") / "bundle")


@pytest.fixture(scope="session")
def _pristine_onnx_bundle(
    tmp_path_factory: pytest.TempPathFactory, _pristine_torch_bundle: Path, colour_data: Path
) -> Path:
    from imgclf.export.api import export_bundle

    root = tmp_path_factory.mktemp("onnx-bundle") / "bundle"
    shutil.copytree(_pristine_torch_bundle, root)
    export_bundle(root, "onnx", data=colour_data, parity_images=12)
    return root


@pytest.fixture
def torch_bundle(tmp_path: Path, _pristine_torch_bundle: Path) -> Path:
    """A fresh copy of a bundle holding only PyTorch weights."""
    return Path(shutil.copytree(_pristine_torch_bundle, tmp_path / "torch-bundle"))


@pytest.fixture
def onnx_bundle(tmp_path: Path, _pristine_onnx_bundle: Path) -> Path:
    """A fresh copy of a bundle holding PyTorch weights and an exported fp32 ONNX model."""
    return Path(shutil.copytree(_pristine_onnx_bundle, tmp_path / "onnx-bundle"))


@pytest.fixture
def set_umask() -> Iterator[Callable[[int], None]]:
    """``set_umask(0o022)`` sets the process umask for this test; the old one is restored after."""
    original = os.umask(0o022)
    os.umask(original)
    yield os.umask
    os.umask(original)


def _modes(root: Path) -> dict[str, int]:
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.fixture
def modes() -> Callable[[Path], dict[str, int]]:
    """``modes(root)``: permission bits of root and every file and folder under it, by path."""
    return _modes
