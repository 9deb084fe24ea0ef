"""``imgclf data download cifar10``: a CIFAR-format tarball built here, served on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dataserver import Server
from imgclf.data import load_dataset
from imgclf.data.cifar import BATCH_FOLDER, META_FILE, TEST_BATCHES, TRAIN_BATCHES
from imgclf.data.download import download_dataset
from imgclf.data.sources import KNOWN_DATASETS, DatasetSource
from imgclf.errors import DownloadError

LABELS = ["airplane", "cat", "ship"]
ROWS_PER_BATCH = 3


def batch(seed: int, rows: int = ROWS_PER_BATCH) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"batch {seed}",
        "labels": [(seed + row) % len(LABELS) for row in range(rows)],
        "data": rng.integers(0, 256, size=(rows, 3072), dtype=np.uint8),
        "filenames": [f"photo_{seed}_{row}.png" for row in range(rows)],
    }


def write_tarball(path: Path, members: dict[str, object]) -> str:
    """A gzipped tar of pickled members under cifar-10-batches-py/; returns its sha256."""
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            data = pickle.dumps(content, protocol=2)  # the protocol the original files use
            info = tarfile.TarInfo(f"{BATCH_FOLDER}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cifar_members() -> dict[str, object]:
    members: dict[str, object] = {META_FILE: {"label_names": LABELS, "num_vis": 3072}}
    for index, name in enumerate(TRAIN_BATCHES + TEST_BATCHES):
        members[name] = batch(index)
    return members


@pytest.fixture
def cifar(server: Server) -> DatasetSource:
    """The real registry entry, pointed at a tiny tarball with its own sha256 and counts."""
    sha = write_tarball(server.root / "cifar.tar.gz", cifar_members())
    return dataclasses.replace(
        KNOWN_DATASETS["cifar10"],
        url=f"{server.url}/cifar.tar.gz",
        archive_sha256=sha,
        counts={"train": 5 * ROWS_PER_BATCH, "test": ROWS_PER_BATCH},
    )


def test_cifar_tarball_becomes_class_folders_of_exact_pixels(
    tmp_path: Path, cifar: DatasetSource
) -> None:
    dest = download_dataset(cifar, tmp_path / "cifar10", progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (dest / "train").iterdir()) == LABELS
    first = batch(0)
    rows = first["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    for index, (label, pixels) in enumerate(zip(first["labels"], rows, strict=True)):
        with Image.open(dest / "train" / LABELS[label] / f"{index:05d}.png") as image:
            assert image.size == (32, 32)
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), pixels)
    dataset = load_dataset(dest)
    assert len(dataset.splits["test"]) == ROWS_PER_BATCH
    assert dataset.classes == LABELS
    assert not list(tmp_path.glob(".*.partial"))


def test_archive_checksum_mismatch_writes_nothing(tmp_path: Path, cifar: DatasetSource) -> None:
    wrong = dataclasses.replace(cifar, archive_sha256="0" * 64)
    with pytest.raises(DownloadError, match=r"archive's sha256 is [0-9a-f]{64}, expected 0{64}"):
        download_dataset(wrong, tmp_path / "cifar10", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["www"]


def test_count_mismatch_is_refused(tmp_path: Path, cifar: DatasetSource) -> None:
    wrong = dataclasses.replace(cifar, counts={"train": 50000, "test": 10000})
    with pytest.raises(DownloadError, match="expected image counts"):
        download_dataset(wrong, tmp_path / "cifar10", progress=False)
    assert not (tmp_path / "cifar10").exists()


class RunsCode:
    """Unpickles as a call to os.getcwd: stands for a pickle that runs code."""

    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"test_batch": {"data": RunsCode(), "labels": []}}, "only numpy arrays are accepted"),
        ({"test_batch": None}, "test_batch is missing"),
        ({"test_batch": ["not", "a", "dict"]}, "expected a dict"),
        ({"test_batch": batch(9) | {"labels": [7, 0, 0]}}, r"one label in \[0, 3\)"),
        ({"test_batch": batch(9) | {"data": np.zeros((3, 10), np.uint8)}}, "3072 bytes"),
        ({META_FILE: {"label_names": ["../up", "cat", "ship"]}}, "unsafe class name"),
    ],
)
def test_malformed_or_hostile_batches_are_refused(
    tmp_path: Path, server: Server, cifar: DatasetSource, change: dict[str, object], message: str
) -> None:
    members = {
        name: content for name, content in (cifar_members() | change).items() if content is not None
    }
    sha = write_tarball(server.root / "bad.tar.gz", members)
    entry = dataclasses.replace(cifar, url=f"{server.url}/bad.tar.gz", archive_sha256=sha)
    with pytest.raises(DownloadError, match=message):
        download_dataset(entry, tmp_path / "cifar10", progress=False)
    assert not (tmp_path / "cifar10").exists()


def test_not_a_tarball_is_refused(tmp_path: Path, server: Server, cifar: DatasetSource) -> None:
    page = server.root / "page.tar.gz"
    page.write_text("<html>moved</html>")
    sha = hashlib.sha256(page.read_bytes()).hexdigest()
    entry = dataclasses.replace(cifar, url=f"{server.url}/page.tar.gz", archive_sha256=sha)
    with pytest.raises(DownloadError, match=r"not a readable tar\.gz archive"):
        download_dataset(entry, tmp_path / "cifar10", progress=False)


def test_registry_pins_the_official_tarball() -> None:
    entry = KNOWN_DATASETS["cifar10"]
    assert entry.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert entry.archive_sha256 == (
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    )
    assert dict(entry.counts) == {"train": 50000, "test": 10000}
    assert entry.max_download_bytes > 170_498_071  # the official tarball's size


def test_cli_checks_the_real_checksum_in_a_subprocess(tmp_path: Path, cifar: DatasetSource) -> None:
    # The command line uses the registry's pinned sha256: a mirror serving other bytes (the
    # tiny tarball) is refused with a one-line reason and nothing is written.
    dest = tmp_path / "cifar10"
    args = ["data", "download", "cifar10", "--dest", str(dest), "--url", cifar.url]
    result = subprocess.run(
        [sys.executable, "-m", "imgclf", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("imgclf data: error: cifar10: the archive's sha256 is ")
    assert "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce" in line
    assert not dest.exists()


def test_cli_download_writes_the_folders(
    tmp_path: Path,
    cifar: DatasetSource,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imgclf.cli import main

    monkeypatch.setitem(KNOWN_DATASETS, "cifar10", cifar)
    dest = tmp_path / "cifar10"
    assert main(["data", "download", "cifar10", "--dest", str(dest)]) == 0
    assert f"cifar10: verified, at {dest.resolve()}" in capsys.readouterr().out
    assert len(list((dest / "train").rglob("*.png"))) == 5 * ROWS_PER_BATCH
