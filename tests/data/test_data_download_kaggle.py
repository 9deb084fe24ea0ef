"""``imgclf data download intel-scenes``: the Kaggle client's token check and download step.

The download itself goes through a fake client (the two methods imgclf calls, with the official
client's signatures); the no-token case runs the official client in a real subprocess.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dataserver import zip_folder
from imgclf.data import load_dataset
from imgclf.data.download import download_dataset
from imgclf.data.kaggle_source import KaggleClient
from imgclf.data.sources import KNOWN_DATASETS, DatasetSource
from imgclf.errors import DownloadError
from imgtools import write_color_dataset

SLUG = "puneet6060/intel-image-classification"


def publisher_zip(tmp_path: Path) -> Path:
    """A zip shaped like the Kaggle one: nested seg_train/seg_test, unlabelled seg_pred."""
    content = tmp_path / "publisher"
    write_color_dataset(content / "seg_train" / "seg_train", per_class=4, splits=("",))
    write_color_dataset(content / "seg_test" / "seg_test", per_class=2, splits=("",))
    pred = content / "seg_pred" / "seg_pred"
    pred.mkdir(parents=True)
    shutil.copy(next((content / "seg_test").rglob("*.jpg")), pred / "10004.jpg")
    archive = tmp_path / "intel-image-classification.zip"
    zip_folder(content, archive, "")
    return archive


class FakeKaggle:
    """Stands in for ``KaggleApi``: records calls, writes a prepared zip, or fails."""

    def __init__(self, archive: Path | None, error: Exception | None = None) -> None:
        self.archive = archive
        self.error = error
        self.calls: list[tuple[str, dict[str, object]]] = []

    def authenticate(self) -> None:
        self.calls.append(("authenticate", {}))

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None:
        self.calls.append(("download", {"dataset": dataset, "path": path, "unzip": unzip}))
        if self.error is not None:
            raise self.error
        assert path is not None and self.archive is not None
        print(f"Dataset URL: https://www.kaggle.com/datasets/{dataset}")  # as the client does
        shutil.copy(self.archive, Path(path) / f"{dataset.split('/')[1]}.zip")


@pytest.fixture
def intel() -> DatasetSource:
    """The real registry entry with the fake archive's counts."""
    return dataclasses.replace(KNOWN_DATASETS["intel-scenes"], counts={"train": 12, "test": 6})


def test_kaggle_archive_becomes_train_and_test(
    tmp_path: Path, intel: DatasetSource, capsys: pytest.CaptureFixture[str]
) -> None:
    client = FakeKaggle(publisher_zip(tmp_path))
    dest = download_dataset(intel, tmp_path / "intel", progress=False, kaggle_client=client)
    assert [name for name, _ in client.calls] == ["authenticate", "download"]
    assert client.calls[1][1]["dataset"] == SLUG
    assert client.calls[1][1]["unzip"] is False  # imgclf unpacks, with its own safety checks
    assert sorted(p.name for p in dest.iterdir()) == ["test", "train"]  # seg_pred is left out
    dataset = load_dataset(dest)
    assert len(dataset.splits["test"]) == 6
    assert len(dataset.splits["train"]) + len(dataset.splits["validation"]) == 12
    assert dataset.classes == sorted(p.name for p in (dest / "test").iterdir())
    assert "Dataset URL" not in capsys.readouterr().out  # the client's chatter goes to stderr
    assert not list(tmp_path.glob(".*.partial"))


def test_count_mismatch_is_refused(tmp_path: Path, intel: DatasetSource) -> None:
    client = FakeKaggle(publisher_zip(tmp_path))
    entry = dataclasses.replace(intel, counts={"train": 14034, "test": 3000})
    with pytest.raises(DownloadError, match="expected image counts"):
        download_dataset(entry, tmp_path / "intel", progress=False, kaggle_client=client)
    assert not (tmp_path / "intel").exists()


def test_client_error_is_a_download_error(tmp_path: Path, intel: DatasetSource) -> None:
    client = FakeKaggle(None, error=RuntimeError("403 Client Error: Forbidden"))
    with pytest.raises(DownloadError, match=r"403 Client Error.*accepted the dataset's terms"):
        download_dataset(intel, tmp_path / "intel", progress=False, kaggle_client=client)
    assert not (tmp_path / "intel").exists()


def test_oversized_archive_is_refused(tmp_path: Path, intel: DatasetSource) -> None:
    client = FakeKaggle(publisher_zip(tmp_path))
    entry = dataclasses.replace(intel, max_download_bytes=100)
    with pytest.raises(DownloadError, match="over the 100-byte limit"):
        download_dataset(entry, tmp_path / "intel", progress=False, kaggle_client=client)


def test_fake_matches_the_official_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The client makes its config folder when imported: here, not in the user's home.
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    from kaggle.api.kaggle_api_extended import KaggleApi

    for name in ("authenticate", "dataset_download_files"):
        official = inspect.signature(getattr(KaggleApi, name)).parameters
        for parameter in inspect.signature(getattr(KaggleClient, name)).parameters.values():
            assert parameter.name in official, f"KaggleApi.{name} has no {parameter.name}"
            assert official[parameter.name].default == parameter.default


def test_no_token_is_one_line_in_a_real_subprocess(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAGGLE_")}
    env |= {
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / ".config"),
        "KAGGLE_CONFIG_DIR": str(tmp_path / "kaggle-config"),
    }
    dest = tmp_path / "intel"
    result = subprocess.run(
        [sys.executable, "-m", "imgclf", "data", "download", "intel-scenes", "--dest", str(dest)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("imgclf data: error: puneet6060/intel-image-classification is served")
    assert "https://www.kaggle.com/settings" in line
    assert "~/.kaggle/kaggle.json" in line
    assert "KAGGLE_USERNAME and KAGGLE_KEY" in line
    assert not dest.exists()


def test_registry_entry_for_intel_scenes() -> None:
    entry = KNOWN_DATASETS["intel-scenes"]
    assert entry.url == f"kaggle://{SLUG}"
    assert dict(entry.counts) == {"train": 14034, "test": 3000}
    assert entry.splits == ("train", "test")
