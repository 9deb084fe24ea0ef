"""Run exported models: the :class:`Predictor` and its typed predictions.

This package never imports torch: it needs only numpy, Pillow and ONNX Runtime (or the LiteRT
interpreter for ``.tflite`` artifacts)::

    from imgclf.inference import Predictor

    predictor = Predictor.from_bundle("runs/clothing", threads=2)
    print(predictor.predict("photo.jpg").to_dict())
"""

from __future__ import annotations

from imgclf.inference.predictions import ClassScore, Prediction
from imgclf.inference.predictor import AUTO_ARTIFACTS, Predictor

__all__ = ["AUTO_ARTIFACTS", "ClassScore", "Prediction", "Predictor"]
