"""Model bundles pulled from object storage or HTTP(S) at start-up: cached, verified, atomic.

:func:`fetch_bundle` turns a model URI into a local bundle directory:

=================================  ==============================================================
URI                                What happens
=================================  ==============================================================
``None``                           the clothing bundle shipped with imgclf (returns None)
``path/to/bundle``                 a local bundle directory, used in place
``path/model.tar.gz``              a local archive, extracted into the cache
``s3://bucket/key.tar.gz``         the archive is downloaded, then extracted into the cache
``s3://bucket/prefix/``            a bundle directory uploaded as-is: ``manifest.json`` plus the
                                   artifact(s) that will run (never the PyTorch weights)
``https://host/bundle.tar.gz``     the archive is downloaded over HTTP(S), then extracted
=================================  ==============================================================

An archive URI may end in ``#sha256=<hex>``: the archive must then have that digest, and a cached
copy with that digest is reused without downloading again. Without a pin an archive is fetched on
every start; an ``s3://`` prefix fetches only its small manifest when the cached copy matches it.

Every download lands in a staging directory inside the cache; the archive is checked against its
pin, extracted safely (regular files only, no path leaving the target, a size cap), every artifact
needed is checked against the manifest's sha256, and only then is the staging directory renamed
into place. A cache entry is therefore always a complete, verified bundle, and a failed start
leaves no half-written one behind. Transient failures (connection refused or reset, a truncated
body, HTTP 5xx/429, S3 throttling) are retried with exponential backoff; a missing object, a
refused request or a checksum mismatch fails at once with a :class:`~imgclf.errors.BundleError`
naming the URI. A file lock serialises processes sharing one cache (replicas, Ray actors).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from imgclf.bundle import MANIFEST_NAME, load_bundle, sha256_file, verify_artifact
from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.inference import s3
from imgclf.inference.predictor import select_artifact

#: Refuse archives that would extract to more than this.
MAX_EXTRACTED_BYTES = 1 << 30
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
#: Written next to a cached bundle's manifest: the archive digest it came from.
SOURCE_RECORD = ".imgclf-source.json"
#: ``fetch_bundle(artifact=ALL_ARTIFACTS)`` downloads and verifies every artifact of a prefix.
ALL_ARTIFACTS = "all"

#: Called after each download with (uri, bytes, milliseconds), e.g. to log it.
DownloadObserver = Callable[[str, int, float], None]


class _TransientError(Exception):
    """A download failure worth another attempt (the last one becomes a BundleError)."""


def default_cache_dir() -> Path:
    """``$IMGCLF_MODEL_CACHE``, else ``$XDG_CACHE_HOME/imgclf/models`` (``~/.cache/...``)."""
    configured = os.environ.get("IMGCLF_MODEL_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgclf" / "models"


@dataclass(frozen=True)
class FetchOptions:
    """How :func:`fetch_bundle` downloads: cache, artifact selection, retries and timeouts."""

    cache_dir: Path = field(default_factory=default_cache_dir)
    #: ``auto`` or an artifact key: download that one from a prefix; ``all``: every artifact.
    artifact: str = "auto"
    attempts: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    timeout_s: float = 60.0
    #: How error messages name the expected archive digest (Lambda: ``MODEL_SHA256``).
    pin_name: str = "the #sha256 pin"
    on_download: DownloadObserver | None = None


def is_remote(uri: str | Path | None) -> bool:
    """True for the URIs :func:`fetch_bundle` downloads (``s3://``, ``http(s)://``)."""
    text = str(uri or "")
    return s3.is_s3_uri(text) or text.lower().startswith(("http://", "https://"))


def split_pin(uri: str) -> tuple[str, str | None]:
    """Split ``uri#sha256=<hex>`` into the URI and the pinned digest (None without a pin).

    Raises:
        ConfigError: The fragment is not a 64-character lowercase hex sha256.
    """
    base, sep, fragment = uri.partition("#")
    if not sep:
        return uri, None
    digest = fragment.removeprefix("sha256=")
    if not fragment.startswith("sha256=") or not _is_sha256(digest):
        raise ConfigError(
            f"model URI fragment #{fragment} must be #sha256=<64 lowercase hex characters>"
        )
    return base, digest


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def fetch_bundle(
    uri: str | Path | None, *, sha256: str | None = None, options: FetchOptions | None = None
) -> Path | None:
    """A local, verified bundle directory for ``uri`` (see the module docstring).

    Args:
        uri: Bundle directory, archive path, ``s3://`` or ``http(s)://`` URI; None for the
            bundled model.
        sha256: Expected archive digest (same as a ``#sha256=`` fragment; give one or the other).
        options: Cache directory, artifacts to fetch, retries; defaults when None.

    Raises:
        ConfigError: The URI or pin is malformed, or boto3 is missing for ``s3://``.
        BundleError: The download failed after its retries, or the bundle is invalid.
        ChecksumMismatchError: The archive or an artifact differs from its expected sha256.
    """
    options = options or FetchOptions()
    if uri is None:
        if sha256:
            raise ConfigError("a sha256 pin needs a model URI (an archive) to check")
        return None
    text, pinned = split_pin(str(uri))
    if pinned and sha256 and pinned != sha256:
        raise ConfigError(f"{uri}: the #sha256 fragment and the given sha256 differ")
    sha256 = pinned or sha256
    is_archive = text.removeprefix("file://").endswith(ARCHIVE_SUFFIXES)
    if sha256 and not is_archive:
        raise ConfigError(f"a sha256 pin checks an archive; {text} must end in .tar.gz or .tgz")
    if not is_remote(text) and not is_archive:
        return Path(text.removeprefix("file://"))
    key = hashlib.sha256(f"{text}|{sha256}|{options.artifact}".encode()).hexdigest()[:16]
    options.cache_dir.mkdir(parents=True, exist_ok=True)
    final = options.cache_dir / key
    with _cache_lock(options.cache_dir / f"{key}.lock"):
        if is_archive:
            return _fetch_archive(text, sha256, final, options)
        return _fetch_prefix(text, final, options)


@contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A fresh directory beside ``final``, removed on the way out unless swapped in."""
    staging = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(ready: Path, final: Path) -> Path:
    """Rename the verified directory ``ready`` to ``final``, replacing an older copy."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{uuid.uuid4().hex[:8]}")
        final.rename(old)
        ready.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        ready.rename(final)
    return final


def _fetch_archive(uri: str, sha256: str | None, final: Path, options: FetchOptions) -> Path:
    if sha256 and _cached_digest(final) == sha256:
        load_bundle(final, verify=True)  # a damaged cache entry fails loudly, never runs
        return final
    with _staging(final) as staging:
        archive = staging / PurePosixPath(uri).name
        if is_remote(uri):
            _download(uri, archive, options)
        else:
            archive = Path(uri.removeprefix("file://"))
        digest = sha256_file(archive)
        if sha256 is not None and digest != sha256:
            raise ChecksumMismatchError(
                f"model archive {uri} has sha256 {digest}, but {options.pin_name} is {sha256}; "
                "the archive is corrupt or was replaced, or the pin is stale (compute it with "
                "`sha256sum` on the archive you uploaded)"
            )
        root = _unpack_archive(archive, staging / "extracted", uri)
        (root / SOURCE_RECORD).write_text(json.dumps({"uri": uri, "sha256": digest}) + "\n")
        return _swap_in(root, final)


def _cached_digest(final: Path) -> str | None:
    try:
        record = json.loads((final / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) else None


def _fetch_prefix(uri: str, final: Path, options: FetchOptions) -> Path:
    """A bundle directory under an ``s3://`` prefix: the manifest and the artifacts to run."""
    if not s3.is_s3_uri(uri):
        raise ConfigError(
            f"{uri}: over HTTP(S) a bundle must be an archive (.tar.gz/.tgz); upload "
            "`tar -czf model.tar.gz -C <bundle-dir> .` or use an s3:// prefix"
        )
    s3.parse_s3_uri(uri)  # a clear error for s3://bucket-only
    prefix = uri.rstrip("/") + "/"
    with _staging(final) as staging:
        _download(prefix + MANIFEST_NAME, staging / MANIFEST_NAME, options)
        bundle = load_bundle(staging, verify=False)
        if options.artifact == ALL_ARTIFACTS:
            kinds = list(bundle.manifest.artifacts)
        else:
            kinds = [select_artifact(bundle, options.artifact)]
        cached = final / MANIFEST_NAME
        if cached.is_file() and cached.read_bytes() == (staging / MANIFEST_NAME).read_bytes():
            try:
                for kind in kinds:
                    verify_artifact(final, kind, bundle.manifest.artifacts[kind])
                return final
            except BundleError:
                pass  # damaged or incomplete cache entry: download it again below
        for kind in kinds:
            info = bundle.manifest.artifacts[kind]
            if PurePosixPath(info.file).name != info.file:
                raise BundleError(f"manifest artifact file {info.file!r} must be a plain file name")
            _download(prefix + info.file, staging / info.file, options)
            verify_artifact(staging, kind, info)
        return _swap_in(staging, final)


def _download(uri: str, destination: Path, options: FetchOptions) -> None:
    """Download one object with retries and backoff; report it to ``options.on_download``."""
    start = time.perf_counter()
    for attempt in range(1, options.attempts + 1):
        try:
            if s3.is_s3_uri(uri):
                _download_s3(uri, destination)
            else:
                _download_http(uri, destination, options.timeout_s)
            break
        except _TransientError as exc:
            if attempt == options.attempts:
                raise BundleError(
                    f"cannot download {uri} after {attempt} attempts ({exc}); check the URI "
                    "and that the server or bucket is reachable from here"
                ) from exc
            delay = min(options.max_backoff_s, options.backoff_s * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random() / 2))  # jitter: replicas do not align
    if options.on_download is not None:
        elapsed_ms = (time.perf_counter() - start) * 1000
        options.on_download(uri, destination.stat().st_size, elapsed_ms)


def _download_s3(uri: str, destination: Path) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3.parse_s3_uri(uri)
    try:
        s3.s3_client().download_file(bucket, key, str(destination))
    except ClientError as exc:
        message = f"cannot download {uri} ({s3.describe_client_error(exc)})"
        if s3.is_missing_or_denied(exc):
            raise BundleError(f"{message}; check the URI and that you may s3:GetObject it") from exc
        raise _TransientError(s3.describe_client_error(exc)) from exc
    except BotoCoreError as exc:
        raise _TransientError(s3.describe_client_error(exc)) from exc


def _download_http(uri: str, destination: Path, timeout_s: float) -> None:
    import httpx

    try:
        with httpx.stream("GET", uri, timeout=timeout_s, follow_redirects=True) as response:
            if response.status_code >= 500 or response.status_code == 429:
                raise _TransientError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise BundleError(
                    f"cannot download {uri}: HTTP {response.status_code}; check the URL"
                )
            expected = response.headers.get("content-length")
            with destination.open("wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
    except httpx.TransportError as exc:  # refused, reset, timed out, body cut short
        raise _TransientError(f"{type(exc).__name__}: {exc}") from exc
    written = destination.stat().st_size
    if expected is not None and expected.isdigit() and int(expected) != written:
        raise _TransientError(f"truncated: got {written} of {expected} bytes")


def _unpack_archive(archive: Path, destination: Path, uri: str) -> Path:
    """Extract a bundle archive safely; return its verified bundle directory."""
    destination.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            _extract_regular_files(tar, destination)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"model archive {uri} is not a readable tar.gz ({exc})") from exc
    root = _find_bundle_root(destination, uri)
    load_bundle(root, verify=True)
    return root


def _extract_regular_files(tar: tarfile.TarFile, destination: Path) -> None:
    """Extract only regular files whose paths stay inside ``destination``, within a size cap."""
    total = 0
    for member in tar.getmembers():
        if member.isdir():
            continue
        parts = PurePosixPath(member.name).parts
        if not member.isfile() or member.name.startswith("/") or ".." in parts:
            raise BundleError(
                f"model archive entry {member.name!r} is not a plain relative file; "
                "create the archive with `tar -czf model.tar.gz -C <bundle-dir> .`"
            )
        total += member.size
        if total > MAX_EXTRACTED_BYTES:
            raise BundleError(f"model archive extracts to more than {MAX_EXTRACTED_BYTES:,} bytes")
        target = destination.joinpath(*[p for p in parts if p != "."])
        target.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        if source is None:  # pragma: no cover - isfile() members always have data
            continue
        with source, target.open("wb") as out:
            shutil.copyfileobj(source, out)
        target.chmod(0o644)  # bundles are read by unprivileged service users


def _find_bundle_root(destination: Path, uri: str) -> Path:
    if (destination / MANIFEST_NAME).is_file():
        return destination
    candidates = [p.parent for p in destination.glob(f"*/{MANIFEST_NAME}")]
    if len(candidates) == 1:
        return candidates[0]
    raise BundleError(
        f"model archive {uri} has no {MANIFEST_NAME} at its top level or in a single folder; "
        "archive a bundle directory (`tar -czf model.tar.gz -C <bundle-dir> .`)"
    )


__all__ = [
    "ALL_ARTIFACTS",
    "FetchOptions",
    "default_cache_dir",
    "fetch_bundle",
    "is_remote",
    "split_pin",
]
