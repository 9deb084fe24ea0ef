"""Writing artifacts into bundles safely, and making serving-only bundles."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from imgclf.bundle import MANIFEST_NAME, Bundle, verify_artifact
from imgclf.errors import BundleError, ConfigError, ExportError

#: ONNX ``metadata_props`` keys carrying what a runtime needs besides the graph.
METADATA_LABELS = "imgclf.labels"
METADATA_PREPROCESSING = "imgclf.preprocessing"
METADATA_NAME = "imgclf.model_name"
METADATA_VERSION = "imgclf.model_version"


def model_metadata(bundle: Bundle) -> dict[str, str]:
    """Labels, preprocessing, name and version as string key/values for model metadata."""
    return {
        METADATA_LABELS: json.dumps(bundle.labels),
        METADATA_PREPROCESSING: json.dumps(bundle.preprocess_config.to_dict()),
        METADATA_NAME: bundle.manifest.name,
        METADATA_VERSION: bundle.manifest.version,
    }


@contextlib.contextmanager
def replaced_atomically(target: Path) -> Iterator[Path]:
    """Yield a new temporary path beside ``target``; on success it replaces ``target`` in one step.

    A reader polling the directory (a model server) sees the old file or the new one, never a
    half-written one, and a failed write leaves ``target`` untouched. The caller creates the file
    with ordinary calls (``open``, ``shutil.copyfile``), so it gets the permissions of any new
    file under the process umask (0644 with umask 022) instead of ``tempfile.mkstemp``'s 0600: a
    model repository mounted into a container that runs as another user stays readable.

    Raises:
        ExportError: Nothing was written to the yielded path.
    """
    staging = target.with_name(f".{target.name}.{secrets.token_hex(6)}.partial")
    try:
        yield staging
        if not staging.is_file():
            raise ExportError(f"nothing was written to {staging}")
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)


def write_text_atomically(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` (UTF-8) in one step (see :func:`replaced_atomically`)."""
    with replaced_atomically(target) as staging:
        staging.write_text(text, encoding="utf-8")


def copy_atomically(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of ``source`` in one step (:func:`replaced_atomically`)."""
    with replaced_atomically(target) as staging:
        shutil.copyfile(source, staging)


@contextlib.contextmanager
def staged_file(bundle: Bundle, name: str) -> Iterator[Path]:
    """Yield a temporary path in the bundle; on success it becomes ``name``, on error it goes.

    A failed or refused export therefore never leaves a half-written or unchecked model where a
    predictor could load it. The exporter creates the file itself, so it gets the umask's
    permissions like any new file.
    """
    with replaced_atomically(bundle.root / name) as staging:
        yield staging


def require_pytorch(bundle: Bundle) -> None:
    """Make sure the bundle has PyTorch weights to export from.

    Raises:
        BundleError: No ``pytorch`` artifact or its file is missing or corrupt.
    """
    info = bundle.manifest.artifacts.get("pytorch")
    if info is None:
        raise BundleError(
            f"bundle {bundle.root} has no PyTorch weights (model.pt) to export from; "
            "export from the bundle `imgclf train` wrote, not from a serving-only bundle"
        )
    verify_artifact(bundle.root, "pytorch", info)


def write_serving_bundle(bundle: Bundle, out: str | Path, artifacts: Sequence[str]) -> Path:
    """Write a bundle holding only the manifest and the given artifacts (no training weights).

    The artifacts are copied and registered again, so their checksums are verified on load like
    any bundle's. An existing bundle at ``out`` is replaced; any other non-empty folder is refused.

    Args:
        bundle: Source bundle.
        out: Target directory.
        artifacts: Artifact keys to copy (e.g. ``["onnx-int8"]``).

    Raises:
        ConfigError: ``out`` is the source bundle or a non-empty folder that is not a bundle.
        BundleError: An artifact is missing from the source bundle.
    """
    target = Path(out)
    if target.resolve() == bundle.root.resolve():
        raise ConfigError(f"--out {target} is the source bundle; choose another directory")
    if target.exists() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file():
        raise ConfigError(f"--out {target} exists and is not a model bundle; choose a new folder")
    infos = {}
    for key in artifacts:
        bundle.artifact_path(key)  # names the available artifacts if ``key`` is missing
        infos[key] = bundle.manifest.artifacts[key]
        verify_artifact(bundle.root, key, infos[key])
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    manifest = bundle.manifest.model_copy(deep=True, update={"artifacts": {}})
    serving = Bundle(root=target, manifest=manifest)
    for key, info in infos.items():
        shutil.copyfile(bundle.root / info.file, target / info.file)
        fields: dict[str, Any] = info.model_dump(exclude={"file", "sha256", "bytes"})
        serving.add_artifact(key, target / info.file, **fields)
    serving.save()
    return target
