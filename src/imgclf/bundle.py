"""The model bundle: the contract between training and serving.

A bundle is a directory::

    my-model/
      manifest.json        labels, preprocessing, backbone, metrics, dataset summary, artifacts
      model.pt             PyTorch weights (written by ``imgclf train``)
      model.onnx           ONNX fp32      (written by ``imgclf export``)
      model.int8.onnx      ONNX int8 QDQ  (written by ``imgclf export --format onnx-int8``)

Every artifact is listed in the manifest with its size and sha256; :func:`load_bundle` checks the
manifest and the checksums and says exactly what is wrong with a bad or incompatible bundle. Serving
reads the bundle and never guesses labels or preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imgclf import __version__
from imgclf.errors import BundleError, ChecksumMismatchError, ConfigError
from imgclf.preprocessing import PreprocessConfig

MANIFEST_NAME = "manifest.json"
#: Bump when the manifest changes incompatibly; older readers refuse newer bundles.
FORMAT_VERSION = 1
#: Name of the clothing bundle shipped inside the package.
DEFAULT_BUNDLE_NAME = "clothing-lite0"


class ArtifactInfo(BaseModel):
    """One file of the bundle: what it is and how to verify it."""

    model_config = ConfigDict(extra="forbid")

    file: str
    format: str = Field(description="Runtime format: pytorch, onnx, tflite")
    precision: str = Field(default="fp32", description="fp32, int8, fp16, bf16")
    sha256: str
    bytes: int
    input_name: str | None = None
    output_name: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)


class DatasetSummary(BaseModel):
    """What the model was trained on."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str | None = None
    counts: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="split -> class -> number of usable images"
    )
    skipped: dict[str, int] = Field(
        default_factory=dict, description="split -> number of unreadable files skipped"
    )


class Manifest(BaseModel):
    """The manifest.json of a bundle."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    name: str
    version: str = "1"
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    imgclf_version: str = __version__
    task: str = "image-classification"
    backbone: str
    labels: list[str]
    preprocessing: dict[str, Any]
    artifacts: dict[str, ArtifactInfo] = Field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = Field(
        default_factory=dict, description="split -> metric name -> value"
    )
    dataset: DatasetSummary | None = None
    training: dict[str, Any] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels_valid(cls, labels: list[str]) -> list[str]:
        if len(labels) < 2:
            raise ValueError("a classifier needs at least 2 labels")
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique")
        return labels

    @field_validator("preprocessing")
    @classmethod
    def _preprocessing_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            return PreprocessConfig.from_dict(value).to_dict()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """The preprocessing settings as a typed config."""
        return PreprocessConfig.from_dict(self.preprocessing)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A loaded bundle: its directory and its validated manifest."""

    root: Path
    manifest: Manifest

    @property
    def labels(self) -> list[str]:
        """Class names, in output order."""
        return self.manifest.labels

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Preprocessing settings the model was trained and evaluated with."""
        return self.manifest.preprocess_config

    def artifact_path(self, kind: str) -> Path:
        """Path of an artifact by its manifest key (``pytorch``, ``onnx``, ``onnx-int8`` ...).

        Raises:
            BundleError: The bundle has no such artifact.
        """
        info = self.manifest.artifacts.get(kind)
        if info is None:
            available = ", ".join(sorted(self.manifest.artifacts)) or "none"
            raise BundleError(
                f"bundle {self.root} has no {kind!r} artifact (available: {available}); "
                f"create it with `imgclf export {self.root} --format {kind}`"
            )
        return self.root / info.file

    def add_artifact(self, kind: str, path: Path, **fields: Any) -> ArtifactInfo:
        """Record a file already written inside the bundle directory, then save the manifest."""
        path = Path(path)
        if path.resolve().parent != self.root.resolve():
            raise BundleError(f"artifact {path} must be inside the bundle directory {self.root}")
        info = ArtifactInfo(
            file=path.name, sha256=sha256_file(path), bytes=path.stat().st_size, **fields
        )
        self.manifest.artifacts[kind] = info
        self.save()
        return info

    def verify(self) -> None:
        """Check every artifact exists and matches its recorded sha256.

        Raises:
            BundleError: An artifact file is missing.
            ChecksumMismatchError: An artifact's content differs from the manifest.
        """
        for kind, info in self.manifest.artifacts.items():
            verify_artifact(self.root, kind, info)

    def save(self) -> Path:
        """Write manifest.json atomically."""
        return write_manifest(self.root, self.manifest)


def verify_artifact(root: Path, kind: str, info: ArtifactInfo) -> None:
    """Check one artifact against its manifest entry (see :meth:`Bundle.verify`)."""
    path = root / info.file
    if not path.is_file():
        raise BundleError(f"bundle {root}: artifact {kind!r} file {info.file} is missing")
    actual = sha256_file(path)
    if actual != info.sha256:
        raise ChecksumMismatchError(
            f"bundle {root}: {info.file} has sha256 {actual[:12]}..., manifest says "
            f"{info.sha256[:12]}...; the file is corrupt or was replaced; re-export it"
        )


def write_manifest(root: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``root`` atomically (write to a temp file, then rename)."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / MANIFEST_NAME
    text = manifest.model_dump_json(indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.", suffix=".json")
    # mkstemp creates 0600 files; bundles copied into images are read by unprivileged users.
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    Path(tmp).replace(target)
    return target


def load_bundle(path: str | Path | None = None, *, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory (or the bundled clothing model when ``path`` is None).

    Args:
        path: Bundle directory, or its manifest.json. None selects the model shipped with imgclf.
        verify: Check artifact checksums (reads every file once).

    Raises:
        BundleError: The directory or manifest is missing, unreadable, invalid, from a newer
            imgclf, or an artifact is missing or corrupt.
    """
    root = default_bundle_path() if path is None else Path(path)
    if root.name == MANIFEST_NAME:
        root = root.parent
    manifest_path = root / MANIFEST_NAME
    if not root.exists():
        raise BundleError(f"model bundle {root} does not exist")
    if not manifest_path.is_file():
        raise BundleError(
            f"{root} is not a model bundle: no {MANIFEST_NAME} (train one with `imgclf train`)"
        )
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path}: cannot read manifest ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{manifest_path}: manifest must be a JSON object")
    version = raw.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle format {version} is newer than this imgclf supports "
            f"({FORMAT_VERSION}); upgrade imgclf"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise BundleError(f"{manifest_path}: invalid manifest: {problems}") from exc
    bundle = Bundle(root=root, manifest=manifest)
    if verify:
        bundle.verify()
    return bundle


def default_bundle_path() -> Path:
    """Directory of the clothing model shipped inside the package."""
    return Path(str(resources.files("imgclf") / "models" / DEFAULT_BUNDLE_NAME))
