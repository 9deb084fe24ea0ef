"""The Predictor: images in, typed predictions out, whatever runtime runs underneath.

Every entry point (``imgclf predict``, the REST API, the gRPC model server, Lambda) runs models
through this class. It reads labels and preprocessing from the bundle manifest, so the pixels it
feeds the model are produced by exactly the code that produced the training-time validation and
test metrics (:mod:`imgclf.preprocessing`). It never imports torch.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from imgclf.bundle import Bundle, load_bundle, verify_artifact
from imgclf.errors import BundleError, InputError
from imgclf.image_budget import DEFAULT_MAX_PIXELS, ImageBudget
from imgclf.inference.predictions import Prediction, check_top_k, softmax, to_predictions
from imgclf.inference.runtimes import RUNTIMES, Runtime, open_runtime
from imgclf.preprocessing import (
    ImageSource,
    PreprocessConfig,
    load_pixels,
    normalize,
)

#: Artifacts tried by ``artifact="auto"``, best first: smallest and fastest that is present.
AUTO_ARTIFACTS: tuple[str, ...] = ("onnx-int8", "onnx", "tflite")

#: Largest batch sent to the runtime at once; bigger requests are split (bounds memory).
MAX_RUN_BATCH = 64


def select_artifact(
    bundle: Bundle, artifact: str = "auto", *, formats: Collection[str] | None = None
) -> str:
    """Pick the artifact key to run: the requested one, or the best available for ``"auto"``.

    This is the one artifact choice: the Predictor, Lambda, evaluation and the Triton export
    (``formats=("onnx",)``) all make it here.

    Args:
        bundle: The bundle to choose from.
        artifact: An artifact key, or ``"auto"``: the first of :data:`AUTO_ARTIFACTS` the bundle
            has, else the first (by key) of any other runnable format.
        formats: Artifact formats ``"auto"`` may pick; None means every runtime's format.

    Raises:
        BundleError: The bundle has no runnable artifact, or not the requested one.
    """
    available = bundle.manifest.artifacts
    if artifact != "auto":
        bundle.artifact_path(artifact)  # raises a BundleError naming the available ones
        return artifact
    allowed = RUNTIMES.keys() if formats is None else formats
    runnable = {k for k, info in available.items() if info.format in allowed}
    for key in AUTO_ARTIFACTS:
        if key in runnable:
            return key
    if runnable:
        return sorted(runnable)[0]
    kind = "runnable" if formats is None else "/".join(formats)
    raise BundleError(
        f"bundle {bundle.root} has no {kind} artifact (has: {', '.join(available) or 'none'}); "
        f"export one with `imgclf export {bundle.root} --format onnx`"
    )


class Predictor:
    """Runs a bundle's exported model on images and returns typed predictions. Thread-safe.

    Example::

        predictor = Predictor.from_bundle("runs/clothing", threads=2)
        prediction = predictor.predict("shirt.jpg", top_k=3)
        print(prediction.label, prediction.probability)
    """

    def __init__(
        self,
        bundle: Bundle,
        runtime: Runtime,
        artifact: str,
        *,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        """Wrap an opened runtime; most callers want :meth:`from_bundle` instead.

        Raises:
            BundleError: The model's input size differs from the manifest's preprocessing.
        """
        self.bundle = bundle
        self.artifact = artifact
        self.max_pixels = max_pixels
        #: What one input image may cost to decode (pixels, memory, scans, frames, time).
        self.budget = ImageBudget(max_pixels=max_pixels)
        self._runtime = runtime
        self._config = bundle.preprocess_config
        if runtime.input_size is not None and runtime.input_size != self._config.input_size:
            raise BundleError(
                f"bundle {bundle.root}: artifact {artifact!r} expects {runtime.input_size}px "
                f"inputs but the manifest preprocessing says {self._config.input_size}px; "
                "re-export the artifact from this bundle"
            )

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | None = None,
        *,
        artifact: str = "auto",
        threads: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> Predictor:
        """Load a bundle and open one of its artifacts.

        Args:
            path: Bundle directory; None selects the clothing model shipped with imgclf.
            artifact: Artifact key (``onnx-int8``, ``onnx``, ``tflite``) or ``"auto"`` for the
                best one present (int8 first).
            threads: Intra-op threads of the runtime; None uses the CPUs this process may use
                (the cgroup quota in a container, then its CPU affinity).
            max_pixels: Refuse input images declaring more pixels than this.

        Raises:
            BundleError: The bundle or the artifact is missing, corrupt or unloadable.
            ConfigError: ``threads`` is invalid or the artifact's format cannot be run
                (:class:`~imgclf.errors.ConfigError`).
        """
        # Only the artifact that will run is checksummed: model.pt may be tens of MB.
        bundle = load_bundle(path, verify=False)
        key = select_artifact(bundle, artifact)
        info = bundle.manifest.artifacts[key]
        verify_artifact(bundle.root, key, info)
        runtime = open_runtime(
            bundle.root / info.file,
            info.format,
            threads=threads,
            input_name=info.input_name,
            output_name=info.output_name,
        )
        return cls(bundle, runtime, key, max_pixels=max_pixels)

    @property
    def labels(self) -> list[str]:
        """Class names in output order."""
        return self.bundle.labels

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """How images are turned into model inputs."""
        return self._config

    @property
    def name(self) -> str:
        """Model name from the manifest."""
        return self.bundle.manifest.name

    @property
    def version(self) -> str:
        """Model version from the manifest."""
        return self.bundle.manifest.version

    def load_pixels(self, source: ImageSource) -> np.ndarray:
        """Decode, resize and crop one image to uint8 ``(H, W, 3)`` (raises ``InputError``)."""
        return load_pixels(source, self._config, budget=self.budget)

    def predict(self, source: ImageSource, top_k: int = 5) -> Prediction:
        """Classify one image given as bytes, a path or a binary file object.

        Raises:
            InputError: The image cannot be decoded, is not a supported type, or is too large.
        """
        return self.predict_batch([source], top_k)[0]

    def predict_batch(self, sources: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Classify several images in batches; the first bad image raises its ``InputError``."""
        check_top_k(top_k)
        if not sources:
            return []
        pixels = np.stack([self.load_pixels(source) for source in sources])
        return self.to_predictions(self.run_pixels(pixels), top_k)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` for a normalised float32 ``(N, 3, H, W)`` batch.

        Raises:
            InputError: The batch does not have the model's shape.
        """
        size = self._config.input_size
        if batch.ndim != 4 or batch.shape[1:] != (3, size, size):
            raise InputError(f"expected a batch of shape (N, 3, {size}, {size}), got {batch.shape}")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        chunks = [
            self._runtime.run(batch[start : start + MAX_RUN_BATCH])
            for start in range(0, batch.shape[0], MAX_RUN_BATCH)
        ]
        if not chunks:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return softmax(np.concatenate(chunks))

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` for resized and cropped uint8 ``(N, H, W, 3)`` pixels.

        Raises:
            InputError: The pixels are not uint8 or not of the model's size.
        """
        size = self._config.input_size
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (size, size, 3):
            raise InputError(
                f"expected uint8 pixels of shape (N, {size}, {size}, 3), "
                f"got {pixels.dtype} {pixels.shape}"
            )
        return self.run(normalize(pixels, self._config))

    def to_predictions(self, probs: np.ndarray, top_k: int = 5) -> list[Prediction]:
        """Typed top-k predictions for ``(N, C)`` probabilities from :meth:`run`."""
        return to_predictions(probs, self.labels, top_k)

    def __repr__(self) -> str:
        return (
            f"Predictor(name={self.name!r}, version={self.version!r}, artifact={self.artifact!r})"
        )


__all__ = ["AUTO_ARTIFACTS", "MAX_RUN_BATCH", "Predictor", "select_artifact"]
