"""The bundle contract: manifests validate, checksums are enforced, errors say what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf.bundle import load_bundle
from imgclf.errors import BundleError, ChecksumMismatchError


def test_tiny_bundle_loads_and_verifies(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle.labels == ["red", "green", "blue"]
    assert bundle.preprocess_config.input_size == 32
    assert bundle.artifact_path("onnx").is_file()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_directory_without_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_bundle(tmp_path)


def test_corrupt_artifact_fails_checksum(tiny_bundle: Path) -> None:
    (tiny_bundle / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ChecksumMismatchError, match="sha256"):
        load_bundle(tiny_bundle)
    load_bundle(tiny_bundle, verify=False)  # explicit opt-out still loads the manifest


def test_missing_artifact(tiny_bundle: Path) -> None:
    (tiny_bundle / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tiny_bundle)


def test_unknown_artifact_kind_names_available_ones(tiny_bundle: Path) -> None:
    with pytest.raises(BundleError, match="available: onnx"):
        load_bundle(tiny_bundle).artifact_path("onnx-int8")


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"labels": ["only-one"]}, "at least 2 labels"),
        ({"labels": ["a", "a", "b"]}, "unique"),
        ({"preprocessing": {"input_size": 5}}, "input_size"),
        ({"format_version": 99}, "newer than this imgclf supports"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_manifests_are_explained(
    tiny_bundle: Path, patch: dict[str, object], message: str
) -> None:
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    data.update(patch)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        load_bundle(tiny_bundle)


def test_manifest_not_json(tiny_bundle: Path) -> None:
    (tiny_bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot read manifest"):
        load_bundle(tiny_bundle)
