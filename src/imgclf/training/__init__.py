"""Training: backbones, the recipe, and ``train`` (folders of photos in, a bundle out).

Names load on first use (PEP 562), so ``import imgclf.training`` does not import torch::

    from imgclf.training import TrainConfig, train

    result = train("datasets/clothing-small", "runs/clothing", TrainConfig(epochs=8))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf._lazy import lazy_exports

__all__ = ["TrainConfig", "TrainResult", "create_model", "load_torch_model", "train"]

if TYPE_CHECKING:
    from imgclf.backbones import create_model, load_torch_model
    from imgclf.training.recipe import TrainConfig
    from imgclf.training.trainer import TrainResult, train

_LAZY: dict[str, str] = {
    "TrainConfig": "imgclf.training.recipe",
    "TrainResult": "imgclf.training.trainer",
    "train": "imgclf.training.trainer",
    "create_model": "imgclf.backbones",
    "load_torch_model": "imgclf.backbones",
}


__getattr__ = lazy_exports(__name__, _LAZY)
