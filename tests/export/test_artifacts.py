"""Atomic replacement of exported files: all or nothing, with ordinary file permissions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from imgclf.errors import ExportError
from imgclf.export.artifacts import copy_atomically, replaced_atomically, write_text_atomically


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "config.pbtxt"
    target.write_text("old")
    with pytest.raises(RuntimeError), replaced_atomically(target) as staging:
        staging.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.pbtxt"]


def test_writing_nothing_is_an_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ExportError, match="nothing was written"),
        replaced_atomically(tmp_path / "model.onnx"),
    ):
        pass
    assert not any(tmp_path.iterdir())


def test_files_get_the_umask_permissions(
    tmp_path: Path,
    set_umask: Callable[[int], object],
    modes: Callable[[Path], dict[str, int]],
) -> None:
    source = tmp_path / "source.onnx"
    source.write_bytes(b"model")
    source.chmod(0o600)  # a private source must not make the copy private
    out = tmp_path / "out"
    out.mkdir()
    set_umask(0o022)
    copy_atomically(source, out / "model.onnx")
    write_text_atomically(out / "labels.txt", "a\nb\n")
    write_text_atomically(out / "labels.txt", "c\n")  # replacing keeps the mode
    assert (out / "labels.txt").read_text() == "c\n"
    assert modes(out) == {".": 0o755, "model.onnx": 0o644, "labels.txt": 0o644}
