"""The seam between transports and whatever computes class probabilities.

The REST app, the gRPC model server and the Lambda handler decode requests into resized and cropped
uint8 pixel batches and hand them to an :class:`InferenceBackend`. In embedded mode that is a local
:class:`~imgclf.inference.predictor.Predictor`; in gateway mode it is a client of a remote Open
Inference Protocol model server. Transports never know which one they have.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from imgclf.preprocessing import PreprocessConfig


@runtime_checkable
class InferenceBackend(Protocol):
    """Computes probabilities for preprocessed batches. Implementations must be thread-safe."""

    @property
    def labels(self) -> list[str]:
        """Class names in output order."""
        ...

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """How inputs must be preprocessed before :meth:`infer`."""
        ...

    @property
    def model_name(self) -> str:
        """Model name, as shown in responses and metadata."""
        ...

    @property
    def model_version(self) -> str:
        """Model version, as shown in responses and metadata."""
        ...

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, C)`` for uint8 pixels ``(N, H, W, 3)``. Blocking.

        Pixels are already resized and cropped (:func:`imgclf.preprocessing.load_pixels`); the
        backend normalises them (embedded) or sends them as a UINT8 tensor, 4x smaller than
        float32 (gateway).

        Raises:
            ModelServerError: A remote model server failed (gateway mode).
        """
        ...

    def is_ready(self) -> bool:
        """True when :meth:`infer` is expected to succeed (model loaded, remote reachable)."""
        ...
