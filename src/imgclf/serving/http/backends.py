"""Backends the REST service can run on: a local Predictor (embedded) or a remote model server."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from imgclf.errors import ConfigError
from imgclf.inference.bundle_source import FetchOptions, fetch_bundle
from imgclf.inference.cpus import CpuBudget, CpuPlan, available_cpus, plan_cpus
from imgclf.inference.predictor import Predictor
from imgclf.preprocessing import PreprocessConfig
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.settings import ServeSettings

logger = logging.getLogger(__name__)


class EmbeddedBackend:
    """An :class:`InferenceBackend` running a bundle in this process with a ``Predictor``.

    Args:
        predictor: The loaded bundle.
        name: Name to serve the model under (every path and metric); None: the bundle's name.
    """

    def __init__(self, predictor: Predictor, name: str | None = None) -> None:
        self._predictor = predictor
        self._name = name

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | None = None,
        *,
        artifact: str = "auto",
        threads: int | None = None,
        max_pixels: int | None = None,
        name: str | None = None,
    ) -> EmbeddedBackend:
        """Load a bundle (None: the bundled model) and open its best artifact."""
        kwargs = {} if max_pixels is None else {"max_pixels": max_pixels}
        predictor = Predictor.from_bundle(path, artifact=artifact, threads=threads, **kwargs)
        return cls(predictor, name)

    @property
    def labels(self) -> list[str]:
        """Class names in output order."""
        return self._predictor.labels

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The bundle's preprocessing."""
        return self._predictor.preprocess_config

    @property
    def model_name(self) -> str:
        """The name the model is served under (the bundle's unless renamed)."""
        return self._name or self._predictor.name

    @property
    def model_version(self) -> str:
        """The bundle's model version."""
        return self._predictor.version

    @property
    def artifact(self) -> str:
        """Which artifact runs (``onnx-int8``, ``onnx``, ...)."""
        return self._predictor.artifact

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for uint8 ``(N, H, W, 3)`` pixels."""
        return self._predictor.run_pixels(pixels)

    def is_ready(self) -> bool:
        """Always true once constructed: the model is loaded in this process."""
        return True


def fetch_options(settings: ServeSettings) -> FetchOptions:
    """How a remote ``settings.model`` is downloaded: the cache and the artifact that will run."""
    if settings.model_cache_dir is None:
        return FetchOptions(artifact=settings.artifact)
    return FetchOptions(cache_dir=settings.model_cache_dir, artifact=settings.artifact)


def serving_plan(settings: ServeSettings, budget: CpuBudget | None = None) -> CpuPlan:
    """Model instances and runtime threads of the service: as set, else from the CPU budget.

    In gateway mode the model runs on the model server: one batch in flight unless asked for
    more, and no runtime here to size.
    """
    if settings.model_server_url is not None:
        return CpuPlan(settings.instances or 1, settings.threads or 1, budget or available_cpus())
    return plan_cpus(settings.instances, settings.threads, budget=budget)


def load_backend(settings: ServeSettings, threads: int | None = None) -> InferenceBackend:
    """Open the backend the settings ask for: a remote model server or a local bundle.

    Args:
        settings: The service's settings.
        threads: Runtime threads of the local model (from :func:`serving_plan`); None: the
            runtime layer's default.

    Raises:
        ConfigError: Gateway mode is asked for but the gRPC extra is not installed.
        BundleError: The bundle is missing or corrupt.
    """
    if settings.model_server_url is not None:
        try:
            client = importlib.import_module("imgclf.serving.gateway.client")
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"gateway mode needs the grpc extra ({exc.name} is missing); "
                "install it with: pip install 'imgclf[grpc]'"
            ) from exc
        backend: InferenceBackend = client.RemoteBackend.from_url(
            settings.model_server_url,
            timeout_s=settings.model_server_timeout_s,
            retries=settings.model_server_retries,
            model_name=settings.model_name,
        )
        return backend
    model = fetch_bundle(settings.model, options=fetch_options(settings))
    return EmbeddedBackend.from_bundle(
        model,
        artifact=settings.artifact,
        threads=threads,
        max_pixels=settings.max_pixels,
        name=settings.model_name,
    )
