"""The image-check cache: unchanged files are not decoded again, changed files are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgclf.data import cache, load_dataset
from imgtools import write_color_dataset


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(folder))
    monkeypatch.setattr(cache, "MIN_FILES", 1)  # these datasets are tiny
    return folder


def cache_file(cache_dir: Path) -> Path:
    [file] = (cache_dir / "image-checks").glob("*.json")
    return file


def test_verdicts_are_reused_for_unchanged_files(tmp_path: Path, cache_dir: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    assert load_dataset(root).problems == []
    file = cache_file(cache_dir)
    data = json.loads(file.read_text())
    assert len(data["files"]) == 18
    assert all(verdict[2] is None for verdict in data["files"].values())
    # A verdict planted in the cache is trusted while the file is unchanged...
    target = root / "train" / "red" / "red_000.jpg"
    data["files"][str(target)][2] = "planted verdict"
    file.write_text(json.dumps(data))
    [problem] = load_dataset(root).problems
    assert (problem.path, problem.reason) == (target, "planted verdict")
    # ...and dropped as soon as the file changes.
    os.utime(target, ns=(1, 1))
    assert load_dataset(root).problems == []


def test_a_file_corrupted_after_a_check_is_caught(tmp_path: Path, cache_dir: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    load_dataset(root)
    target = root / "test" / "blue" / "blue_001.jpg"
    target.write_bytes(target.read_bytes()[:100])
    [problem] = load_dataset(root).problems
    assert problem.path == target
    assert "truncated" in problem.reason


def test_unreadable_cache_is_ignored(tmp_path: Path, cache_dir: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    load_dataset(root)
    cache_file(cache_dir).write_text("{not json")
    assert load_dataset(root).problems == []
    assert json.loads(cache_file(cache_dir).read_text())["format"] == 1  # rewritten


def test_small_datasets_are_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    assert cache.MIN_FILES > 18
    assert load_dataset(write_color_dataset(tmp_path / "ds", per_class=2)).problems == []
    assert not (tmp_path / "cache").exists()


def test_empty_cache_dir_turns_caching_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "MIN_FILES", 1)
    monkeypatch.setenv("IMGCLF_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    assert load_dataset(root).problems == []
    assert not (tmp_path / "home").exists()
