"""imgclf: train small, accurate image classifiers from folders of photos and serve them anywhere.

The public API is deliberately small and loads heavy pieces lazily, so ``import imgclf`` never
pulls in torch (training, export) or FastAPI (serving)::

    from imgclf import Predictor, load_bundle

    predictor = Predictor.from_bundle()          # the bundled clothing model
    print(predictor.predict("photo.jpg").label)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Bundle", "Predictor", "PreprocessConfig", "__version__", "load_bundle"]

if TYPE_CHECKING:
    from imgclf.bundle import Bundle, load_bundle
    from imgclf.inference.predictor import Predictor
    from imgclf.preprocessing import PreprocessConfig

_LAZY = {
    "Bundle": "imgclf.bundle",
    "load_bundle": "imgclf.bundle",
    "Predictor": "imgclf.inference.predictor",
    "PreprocessConfig": "imgclf.preprocessing",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
