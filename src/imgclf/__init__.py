"""imgclf: train small, accurate image classifiers from folders of photos and serve them anywhere.

The public API is deliberately small and loads heavy pieces lazily, so ``import imgclf`` never
pulls in torch (training, export) or FastAPI (serving)::

    from imgclf import Predictor, load_bundle

    predictor = Predictor.from_bundle()          # the bundled clothing model
    print(predictor.predict("photo.jpg").label)

``train_and_export`` trains a bundle and exports it for serving (needs the ``train`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf._lazy import lazy_exports

__version__ = "0.1.0"

__all__ = [
    "Bundle",
    "Predictor",
    "PreprocessConfig",
    "__version__",
    "load_bundle",
    "train_and_export",
]

if TYPE_CHECKING:
    from imgclf.bundle import Bundle, load_bundle
    from imgclf.inference.predictor import Predictor
    from imgclf.pipeline import train_and_export
    from imgclf.preprocessing import PreprocessConfig

_LAZY: dict[str, str] = {
    "Bundle": "imgclf.bundle",
    "load_bundle": "imgclf.bundle",
    "Predictor": "imgclf.inference.predictor",
    "PreprocessConfig": "imgclf.preprocessing",
    "train_and_export": "imgclf.pipeline",
}


__getattr__ = lazy_exports(__name__, _LAZY)
