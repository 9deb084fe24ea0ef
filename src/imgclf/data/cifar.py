"""Writing the CIFAR-10 python-version tarball out as ``train/`` and ``test/`` class folders.

The tarball holds pickled batches (``cifar-10-batches-py/data_batch_1`` ... ``_5``,
``test_batch``, ``batches.meta``): a dict with ``data`` (N x 3072 uint8 rows, the red, green and
blue 32x32 planes one after another), ``labels`` and ``filenames``. Members are read from the
archive in memory, never extracted, so no path in the tarball is ever written. Pickle can run
code, so the batches are read by an unpickler that builds nothing but numpy arrays and plain
containers; the caller has also checked the tarball's sha256 before this module opens it.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf.errors import DownloadError

#: Member folder and batch files of the python-version tarball.
BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{index}" for index in range(1, 6))
TEST_BATCHES: tuple[str, ...] = ("test_batch",)
META_FILE = "batches.meta"

_SIDE = 32
_ROW_BYTES = 3 * _SIDE * _SIDE
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

#: The only globals a CIFAR batch pickle refers to (numpy < 2 and numpy >= 2 module names).
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    (module, name): value
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name, value in (
        ("_reconstruct", np.zeros(0).__reduce__()[0]),
        ("scalar", np.float64(0).__reduce__()[0]),
    )
} | {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, dicts, strings and numbers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DownloadError(
                f"CIFAR batch refers to {module}.{name}; only numpy arrays are accepted"
            ) from None


def _load_member(archive: tarfile.TarFile, name: str, max_bytes: int) -> dict[str, Any]:
    member_name = f"{BATCH_FOLDER}/{name}"
    try:
        member = archive.getmember(member_name)
    except KeyError:
        raise DownloadError(f"not a CIFAR-10 python archive: {member_name} is missing") from None
    if not member.isfile() or member.size > max_bytes:
        raise DownloadError(f"{member_name}: not a regular file under {max_bytes:,} bytes")
    handle = archive.extractfile(member)
    assert handle is not None  # a regular file always has a stream
    try:
        loaded = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise DownloadError(f"{member_name}: not a readable CIFAR batch ({exc})") from exc
    if not isinstance(loaded, dict):
        raise DownloadError(f"{member_name}: expected a dict, found {type(loaded).__name__}")
    return loaded


def _label_names(archive: tarfile.TarFile, max_bytes: int) -> list[str]:
    names = _load_member(archive, META_FILE, max_bytes).get("label_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DownloadError(f"{BATCH_FOLDER}/{META_FILE}: no list of label names")
    for name in names:
        if _SAFE_NAME.sub("", name) != name or name.startswith("."):
            raise DownloadError(f"{BATCH_FOLDER}/{META_FILE}: unsafe class name {name!r}")
    return names


def _batch_arrays(batch: dict[str, Any], name: str, classes: int) -> tuple[np.ndarray, list[int]]:
    data, labels = batch.get("data"), batch.get("labels")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _ROW_BYTES
        or not isinstance(labels, list)
        or len(labels) != data.shape[0]
        or not all(isinstance(label, int) and 0 <= label < classes for label in labels)
    ):
        raise DownloadError(
            f"{BATCH_FOLDER}/{name}: expected uint8 rows of {_ROW_BYTES} bytes and one label "
            f"in [0, {classes}) per row"
        )
    return data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1), labels


def _write_split(
    archive: tarfile.TarFile, batches: tuple[str, ...], folder: Path, names: list[str], cap: int
) -> None:
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
    index = 0
    for batch_name in batches:
        batch = _load_member(archive, batch_name, cap)
        pixels, labels = _batch_arrays(batch, batch_name, len(names))
        for image, label in zip(pixels, labels, strict=True):
            Image.fromarray(image).save(folder / names[label] / f"{index:05d}.png", optimize=False)
            index += 1


def write_cifar_folders(tarball: Path, dest: Path, *, max_member_bytes: int) -> None:
    """Write every image of a CIFAR-10 python tarball as ``dest/{train,test}/<class>/NNNNN.png``.

    File names number the images in the archive's order within each split, so they are unique
    and safe whatever the batches' own ``filenames`` hold.

    Args:
        tarball: The downloaded ``cifar-10-python.tar.gz``.
        dest: Folder to create.
        max_member_bytes: Refuse a batch file larger than this.

    Raises:
        DownloadError: The file is not a CIFAR-10 python tarball, or a batch is malformed.
    """
    try:
        with tarfile.open(tarball, "r:*") as archive:
            names = _label_names(archive, max_member_bytes)
            _write_split(archive, TRAIN_BATCHES, dest / "train", names, max_member_bytes)
            _write_split(archive, TEST_BATCHES, dest / "test", names, max_member_bytes)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DownloadError(f"{tarball.name}: not a readable tar.gz archive ({exc})") from exc
