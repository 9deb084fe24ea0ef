"""Where the served model comes from, and the one copy kept per execution environment.

The bundle is resolved from ``MODEL_URI`` (see :mod:`.settings`):

- unset: the clothing bundle shipped inside the package (and so inside the image);
- a local directory: used in place;
- a local ``.tar.gz`` or ``s3://bucket/key.tar.gz``: the archive is downloaded to ``/tmp``, checked
  against ``MODEL_SHA256`` when set, extracted safely (regular files only, no paths leaving the
  target), then every artifact is checked against the manifest's sha256s
  (``load_bundle(verify=True)``);
- ``s3://bucket/prefix/``: a bundle directory uploaded as-is; ``manifest.json`` and only the
  artifact that will run are downloaded (not the PyTorch weights), then checked against the
  manifest's sha256.

The loaded :class:`~imgclf.inference.Predictor` is cached at module level, so it is built once per
Lambda execution environment (the cold start) and reused by every warm invocation.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from imgclf.bundle import MANIFEST_NAME, load_bundle, sha256_file, verify_artifact
from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.inference.predictor import Predictor, select_artifact
from imgclf.serving.aws_lambda.jsonlog import log_event
from imgclf.serving.aws_lambda.s3_client import describe_client_error, s3_client
from imgclf.serving.aws_lambda.settings import LambdaSettings

#: Refuse archives that would extract to more than this (Lambda's /tmp is 512 MB by default).
MAX_EXTRACTED_BYTES = 1 << 30
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


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
    """Local bundle directory for ``settings.model_uri`` (None: the bundled model)."""
    uri = settings.model_uri
    if uri is None:
        if settings.model_sha256:
            raise ConfigError("MODEL_SHA256 is set but MODEL_URI is not; set both or neither")
        return None
    target = Path(settings.model_cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        if key.endswith(_ARCHIVE_SUFFIXES):
            archive = _fresh_dir(target) / PurePosixPath(key).name
            _download(bucket, key, archive)
            return _unpack_archive(archive, target / "bundle", settings.model_sha256)
        return _download_prefix(bucket, key, target, settings)
    path = Path(uri.removeprefix("file://"))
    if path.is_file() and path.name.endswith(_ARCHIVE_SUFFIXES):
        return _unpack_archive(path, _fresh_dir(target) / "bundle", settings.model_sha256)
    if settings.model_sha256:
        raise ConfigError(
            "MODEL_SHA256 checks an archive; MODEL_URI must then end in .tar.gz or .tgz"
        )
    return path


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into bucket and key.

    Raises:
        ConfigError: The URI has no bucket or no key.
    """
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise ConfigError(f"MODEL_URI {uri!r} must look like s3://bucket/key.tar.gz or s3://b/dir/")
    return bucket, key


def _fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _download(bucket: str, key: str, destination: Path) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    destination.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        s3_client().download_file(bucket, key, str(destination))
    except (ClientError, BotoCoreError) as exc:
        raise BundleError(
            f"cannot download s3://{bucket}/{key} ({describe_client_error(exc)}); check "
            "MODEL_URI and that the function's role may s3:GetObject it"
        ) from exc
    log_event(
        "model_downloaded",
        uri=f"s3://{bucket}/{key}",
        bytes=destination.stat().st_size,
        download_ms=round((time.perf_counter() - start) * 1000, 1),
    )


def _download_prefix(bucket: str, prefix: str, target: Path, settings: LambdaSettings) -> Path:
    """Download a bundle directory stored under an S3 prefix: manifest + the artifact to run."""
    prefix = prefix.rstrip("/") + "/"
    root = _fresh_dir(target) / "bundle"
    _download(bucket, prefix + MANIFEST_NAME, root / MANIFEST_NAME)
    bundle = load_bundle(root, verify=False)
    kind = select_artifact(bundle, settings.model_artifact)
    info = bundle.manifest.artifacts[kind]
    if PurePosixPath(info.file).name != info.file:
        raise BundleError(f"manifest artifact file {info.file!r} must be a plain file name")
    _download(bucket, prefix + info.file, root / info.file)
    verify_artifact(root, kind, info)
    return root


def _unpack_archive(archive: Path, destination: Path, expected_sha256: str | None) -> Path:
    """Check and extract a bundle archive; return the directory holding its manifest."""
    if expected_sha256 is not None:
        actual = sha256_file(archive)
        if actual != expected_sha256:
            raise ChecksumMismatchError(
                f"model archive {archive.name} has sha256 {actual}, but MODEL_SHA256 is "
                f"{expected_sha256}; the archive is corrupt or was replaced, or MODEL_SHA256 is "
                "stale (compute it with `sha256sum` on the archive you uploaded)"
            )
    _fresh_dir(destination)
    try:
        with tarfile.open(archive, "r:*") as tar:
            _extract_regular_files(tar, destination)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"model archive {archive.name} is not a readable tar.gz ({exc})") from exc
    root = _find_bundle_root(destination, archive.name)
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


def _find_bundle_root(destination: Path, archive_name: str) -> Path:
    if (destination / MANIFEST_NAME).is_file():
        return destination
    candidates = [p.parent for p in destination.glob(f"*/{MANIFEST_NAME}")]
    if len(candidates) == 1:
        return candidates[0]
    raise BundleError(
        f"model archive {archive_name} has no {MANIFEST_NAME} at its top level or in a single "
        "folder; archive a bundle directory (`tar -czf model.tar.gz -C <bundle-dir> .`)"
    )
