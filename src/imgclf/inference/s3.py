"""A shared boto3 S3 client, created on first use, and ``s3://`` URI helpers.

boto3 takes hundreds of milliseconds to import, so it is imported only when something actually
touches S3 (an ``s3://`` model or input, a Lambda S3 event); nothing else pays for it. The endpoint
comes from boto3's own configuration (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), which is
also how tests point the handler at a local S3-compatible server.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from imgclf.errors import ConfigError

_clients: dict[tuple[str | None, ...], Any] = {}
_lock = threading.Lock()


def s3_client() -> Any:
    """The process-wide S3 client for the current endpoint and region settings.

    Raises:
        ConfigError: boto3 is not installed (install the ``s3`` extra).
    """
    key = tuple(
        os.environ.get(name)
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
    )
    with _lock:
        client = _clients.get(key)
        if client is None:
            try:
                import boto3
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigError("S3 access needs boto3: pip install 'imgclf[s3]'") from exc
            client = boto3.session.Session().client("s3")
            _clients[key] = client
        return client


def describe_client_error(exc: Exception) -> str:
    """A short ``"<code>: <message>"`` for a botocore error (or its text for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', str(exc))}"
    return f"{type(exc).__name__}: {exc}"


def is_s3_uri(text: str) -> bool:
    """True for ``s3://`` URIs."""
    return text.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key (the key may be a ``prefix/``).

    Raises:
        ConfigError: The URI has no bucket or no key.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ConfigError(f"{uri!r} must look like s3://bucket/key.tar.gz or s3://bucket/prefix/")
    return bucket, key


def is_missing_or_denied(exc: Exception) -> bool:
    """True when a botocore error is final (no such bucket or key, access denied): no retry."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in {"404", "403", "NoSuchKey", "NoSuchBucket", "AccessDenied", "Forbidden"}
