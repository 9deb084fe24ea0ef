"""Training: backbones, the recipe, and ``train`` (folders of photos in, a bundle out).

Names load on first use (PEP 562), so ``import imgclf.training`` does not import torch::

    from imgclf.training import TrainConfig, train

    result = train("datasets/clothing-small", "runs/clothing", TrainConfig(epochs=8))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["TrainConfig", "TrainResult", "create_model", "load_torch_model", "train"]

if TYPE_CHECKING:
    from imgclf.training.models import create_model, load_torch_model
    from imgclf.training.recipe import TrainConfig
    from imgclf.training.trainer import TrainResult, train

_LAZY = {
    "TrainConfig": "imgclf.training.recipe",
    "TrainResult": "imgclf.training.trainer",
    "train": "imgclf.training.trainer",
    "create_model": "imgclf.training.models",
    "load_torch_model": "imgclf.training.models",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imgclf.training' has no attribute {name!r}")
