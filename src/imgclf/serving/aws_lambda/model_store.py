"""Where the served model comes from, and the one copy kept per execution environment.

The bundle is resolved from ``MODEL_URI`` (see :mod:`.settings`):

- unset: the clothing bundle shipped inside the package (and so inside the image);
- a local directory: used in place;
- a local ``.tar.gz``, ``s3://bucket/key.tar.gz`` or ``https://host/model.tar.gz``: the archive is
  downloaded to ``MODEL_CACHE_DIR`` (``/tmp``), checked against ``MODEL_SHA256`` when set,
  extracted safely, then every artifact is checked against the manifest's sha256s;
- ``s3://bucket/prefix/``: a bundle directory uploaded as-is; ``manifest.json`` and only the
  artifact that will run are downloaded (not the PyTorch weights), then checked against the
  manifest's sha256.

The download, checks and cache are :mod:`imgclf.inference.bundle_source`'s, the code every other
entry point uses too.

The loaded :class:`~imgclf.inference.Predictor` is cached at module level, so it is built once per
Lambda execution environment (the cold start) and reused by every warm invocation.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.errors import ConfigError
from imgclf.inference.bundle_source import ARCHIVE_SUFFIXES, FetchOptions, fetch_bundle
from imgclf.inference.predictor import Predictor
from imgclf.serving.aws_lambda.jsonlog import log_event
from imgclf.serving.aws_lambda.settings import LambdaSettings


@dataclass(frozen=True)
class LoadedModel:
    """The predictor of this execution environment and where it came from."""

    predictor: Predictor
    source: str
    load_ms: float


_cache: dict[tuple[Any, ...], LoadedModel] = {}
_cache_lock = threading.Lock()


def get_model(settings: LambdaSettings) -> LoadedModel:
    """The cached model for these settings, loading it on first use (thread-safe).

    Raises:
        BundleError: The bundle cannot be found, downloaded, verified or opened.
        ChecksumMismatchError: The archive or an artifact differs from its expected sha256.
        ConfigError: The model settings are inconsistent.
    """
    key = (
        settings.model_uri,
        settings.model_sha256,
        settings.model_artifact,
        settings.inference_threads,
    )
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = load_model(settings)
            _cache.clear()  # one model per environment: drop one loaded with other settings
            _cache[key] = model
        return model


def clear_model_cache() -> None:
    """Forget the cached model (the next invocation loads it again)."""
    with _cache_lock:
        _cache.clear()


def load_model(settings: LambdaSettings) -> LoadedModel:
    """Resolve, download and verify the bundle, then open its artifact (uncached)."""
    start = time.perf_counter()
    root = resolve_bundle(settings)
    predictor = Predictor.from_bundle(
        root, artifact=settings.model_artifact, threads=settings.inference_threads
    )
    load_ms = (time.perf_counter() - start) * 1000
    source = settings.model_uri or "bundled"
    log_event(
        "model_loaded",
        source=source,
        model=predictor.name,
        version=predictor.version,
        artifact=predictor.artifact,
        load_ms=round(load_ms, 1),
    )
    return LoadedModel(predictor=predictor, source=source, load_ms=load_ms)


def resolve_bundle(settings: LambdaSettings) -> Path | None:
    """Local bundle directory for ``settings.model_uri`` (None: the bundled model).

    Downloading, caching, checksums and the atomic swap are :func:`fetch_bundle`'s, shared with
    ``imgclf serve``, the model server and the Ray engine.
    """
    uri = settings.model_uri
    if uri is None and settings.model_sha256:
        raise ConfigError("MODEL_SHA256 is set but MODEL_URI is not; set both or neither")
    if uri is not None and settings.model_sha256 and not uri.endswith(ARCHIVE_SUFFIXES):
        raise ConfigError(
            "MODEL_SHA256 checks an archive; MODEL_URI must then end in .tar.gz or .tgz"
        )
    options = FetchOptions(
        cache_dir=Path(settings.model_cache_dir),
        artifact=settings.model_artifact,
        pin_name="MODEL_SHA256",
        on_download=_log_download,
    )
    return fetch_bundle(uri, sha256=settings.model_sha256, options=options)


def _log_download(uri: str, size: int, elapsed_ms: float) -> None:
    log_event("model_downloaded", uri=uri, bytes=size, download_ms=round(elapsed_ms, 1))
