"""Settings of the Lambda handler, read from the function's environment variables.

=====================  =======================================================================
Variable               Meaning
=====================  =======================================================================
``MODEL_URI``          Bundle to serve: a local directory or ``.tar.gz``, ``s3://bucket/key.tar.gz``,
                       ``https://host/model.tar.gz``
                       or ``s3://bucket/prefix/`` (a bundle directory uploaded as-is). Unset: the
                       clothing model shipped inside the image.
``MODEL_SHA256``       Expected sha256 of the ``MODEL_URI`` archive (optional; the manifest's
                       per-artifact sha256s are always checked).
``MODEL_ARTIFACT``     Artifact to run: ``auto`` (int8 ONNX first), ``onnx-int8``, ``onnx``, ...
``MODEL_CACHE_DIR``    Where downloaded bundles go (default ``/tmp/imgclf-model``).
``PRELOAD_MODEL``      ``1`` loads the model when the handler module is imported (the init phase,
                       e.g. for provisioned concurrency) instead of on the first invocation.
``INFERENCE_THREADS``  ONNX Runtime intra-op threads (default: the CPUs the function may use).
``TOP_K``              Classes listed in ``top_k`` when the request does not say (default 5).
``OUTPUT_BUCKET``      Bucket for S3-event results (default: the bucket of the uploaded object).
``OUTPUT_PREFIX``      Key prefix for S3-event results (default ``predictions/``).
``MAX_REQUEST_BYTES``  Largest synchronous request body (default 6 MB, Lambda's own limit).
``MAX_OBJECT_BYTES``   Largest S3 object classified (default 20 MB); larger ones are skipped.
``URL_MAX_BYTES``      Largest image downloaded for ``{"url": ...}`` requests (default 10 MB).
``URL_ALLOWED_HOSTS``  Comma-separated host allow-list for ``{"url": ...}`` (default: any public).
``URL_ALLOW_LOOPBACK`` ``1`` lets ``{"url": ...}`` reach 127.0.0.1 (local tests only).
``URL_TIMEOUT_S``      Whole-fetch deadline for ``{"url": ...}``, connect to last byte (default 15).
=====================  =======================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imgclf.errors import ConfigError

#: Lambda refuses synchronous invocation payloads above 6 MB (6,291,456 bytes).
LAMBDA_SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
DEFAULT_MODEL_CACHE_DIR = "/tmp/imgclf-model"  # Lambda's only writable directory


@dataclass(frozen=True)
class LambdaSettings:
    """Validated handler settings; build with :meth:`from_env`."""

    model_uri: str | None = None
    model_sha256: str | None = None
    model_artifact: str = "auto"
    model_cache_dir: str = DEFAULT_MODEL_CACHE_DIR
    preload_model: bool = False
    inference_threads: int | None = None
    top_k: int = 5
    output_bucket: str | None = None
    output_prefix: str = "predictions/"
    max_request_bytes: int = LAMBDA_SYNC_PAYLOAD_LIMIT
    max_object_bytes: int = 20 * 1024 * 1024
    url_max_bytes: int = 10 * 1024 * 1024
    url_allowed_hosts: tuple[str, ...] = ()
    url_allow_loopback: bool = False
    url_timeout_s: float = 15.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LambdaSettings:
        """Read the settings from environment variables (see the module docstring).

        Raises:
            ConfigError: A variable has a value that cannot be used; the message names it.
        """
        sha = _text(environ, "MODEL_SHA256")
        if sha is not None and (len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha)):
            raise ConfigError("MODEL_SHA256 must be 64 lowercase hex characters (a sha256 digest)")
        hosts = _text(environ, "URL_ALLOWED_HOSTS") or ""
        return cls(
            model_uri=_text(environ, "MODEL_URI"),
            model_sha256=sha,
            model_artifact=_text(environ, "MODEL_ARTIFACT") or "auto",
            model_cache_dir=_text(environ, "MODEL_CACHE_DIR") or DEFAULT_MODEL_CACHE_DIR,
            preload_model=_flag(environ, "PRELOAD_MODEL"),
            inference_threads=_positive_int(environ, "INFERENCE_THREADS", None),
            top_k=_positive_int(environ, "TOP_K", 5) or 5,
            output_bucket=_text(environ, "OUTPUT_BUCKET"),
            output_prefix=_text(environ, "OUTPUT_PREFIX") or "predictions/",
            max_request_bytes=_positive_int(environ, "MAX_REQUEST_BYTES", None)
            or LAMBDA_SYNC_PAYLOAD_LIMIT,
            max_object_bytes=_positive_int(environ, "MAX_OBJECT_BYTES", None) or 20 * 1024 * 1024,
            url_max_bytes=_positive_int(environ, "URL_MAX_BYTES", None) or 10 * 1024 * 1024,
            url_allowed_hosts=tuple(h.strip() for h in hosts.split(",") if h.strip()),
            url_allow_loopback=_flag(environ, "URL_ALLOW_LOOPBACK"),
            url_timeout_s=float(_positive_int(environ, "URL_TIMEOUT_S", 15) or 15),
        )


def _text(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _positive_int(environ: Mapping[str, str], name: str, default: int | None) -> int | None:
    value = _text(environ, name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return number


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = (_text(environ, name) or "0").lower()
    if value not in {"0", "1", "true", "false", "yes", "no"}:
        raise ConfigError(f"{name} must be 1 or 0, got {value!r}")
    return value in {"1", "true", "yes"}
