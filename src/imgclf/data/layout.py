"""Finding the split and class folders of a folder-per-class dataset.

Supported shapes, all found from the folder the user points at::

    root/train/<class>/*.jpg, root/validation/<class>/...   (also val/, valid/, test/)
    root/<class>/*.jpg                                       one folder, split by imgclf
    root/seg_train/seg_train/<class>/...                     nested split folders
    root/clothing-dataset-small-master/train/<class>/...     an extra top folder (unzipped archives)

Split names are matched case-insensitively, also as the last word of a longer name
(``seg_train``, ``Training``, ``my-val``). Hidden files and folders (``.name``) are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from imgclf.errors import DatasetError

#: Canonical split name -> folder names accepted for it (lower case).
SPLIT_ALIASES: dict[str, frozenset[str]] = {
    "train": frozenset({"train", "training"}),
    "validation": frozenset({"validation", "val", "valid"}),
    "test": frozenset({"test", "testing"}),
}

#: Canonical split names in the order they are reported.
SPLIT_ORDER: tuple[str, ...] = ("train", "validation", "test")

#: File extensions read as images (those of the formats ``imgclf.preprocessing`` accepts).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".mpo",
        ".png",
        ".apng",
        ".webp",
        ".gif",
        ".bmp",
        ".tif",
        ".tiff",
    }
)

#: Files some systems drop into every folder; never images, never worth a warning.
IGNORED_FILE_NAMES: frozenset[str] = frozenset({"thumbs.db", "desktop.ini"})

#: Folders that tools add next to the data (macOS zip resource forks, NAS thumbnails).
IGNORED_DIR_NAMES: frozenset[str] = frozenset({"__macosx", "@eadir"})

#: How many wrapper folders (single sub-folder, no images) are descended at most.
MAX_WRAPPER_DEPTH = 4

_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class DatasetLayout:
    """Where the splits of a dataset live on disk.

    Attributes:
        root: The folder holding the split folders (or the class folders, for one-folder layouts).
        split_dirs: Canonical split name -> folder of class folders. Empty for one-folder layouts.
    """

    root: Path
    split_dirs: dict[str, Path]

    @property
    def is_single_folder(self) -> bool:
        """True when the classes sit directly under ``root`` and imgclf makes the splits."""
        return not self.split_dirs


def is_hidden(path: Path) -> bool:
    """Hidden files and folders (dot names) and tool folders are never part of a dataset."""
    return path.name.startswith(".") or path.name.lower() in IGNORED_DIR_NAMES


def visible_dirs(folder: Path) -> list[Path]:
    """Non-hidden sub-folders of ``folder`` (following symlinks), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p))


def visible_files(folder: Path) -> list[Path]:
    """Non-hidden regular files directly inside ``folder``, sorted by name."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not is_hidden(p) and p.name.lower() not in IGNORED_FILE_NAMES
    )


def files_under(folder: Path) -> list[Path]:
    """Every non-hidden file below ``folder`` (recursively, hidden folders pruned), sorted."""
    found: list[Path] = []
    for current, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not is_hidden(Path(d))]
        for name in filenames:
            if name.startswith(".") or name.lower() in IGNORED_FILE_NAMES:
                continue
            path = Path(current, name)
            if path.is_file():
                found.append(path)
    return sorted(found)


def split_name(folder_name: str) -> str | None:
    """Canonical split for a folder name (``"Val"`` -> ``"validation"``), or None."""
    lowered = folder_name.lower()
    words = [w for w in _WORD_SPLIT.split(lowered) if w]
    for canonical, aliases in SPLIT_ALIASES.items():
        if lowered in aliases or (words and words[-1] in aliases):
            return canonical
    return None


def unwrap_split_dir(folder: Path) -> Path:
    """Descend ``seg_train/seg_train``-style nesting: a lone sub-folder naming the same split."""
    canonical = split_name(folder.name)
    for _ in range(MAX_WRAPPER_DEPTH):
        children = visible_dirs(folder)
        if len(children) != 1 or has_image_files(folder):
            break
        if split_name(children[0].name) != canonical:
            break
        folder = children[0]
    return folder


def _split_children(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for child in visible_dirs(folder):
        canonical = split_name(child.name)
        if canonical is None:
            continue
        if canonical in found:
            raise DatasetError(
                f"{folder}: both {found[canonical].name!r} and {child.name!r} look like the "
                f"{canonical} split; rename or remove one of them"
            )
        found[canonical] = child
    return found


def find_layout(root: str | os.PathLike[str]) -> DatasetLayout:
    """Locate the split folders (or the class folders) of the dataset at ``root``.

    Args:
        root: The folder the user pointed at.

    Returns:
        The layout: split folders if any are found, otherwise the folder holding class folders.

    Raises:
        DatasetError: ``root`` is not a folder, or holds no sub-folders at all.
    """
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(
            f"{folder}: not a folder; point at a dataset folder with train/validation/test "
            "sub-folders or one sub-folder per class"
        )
    start = folder
    for _ in range(MAX_WRAPPER_DEPTH + 1):
        splits = _split_children(folder)
        if splits:
            return DatasetLayout(
                folder,
                {name: unwrap_split_dir(splits[name]) for name in SPLIT_ORDER if name in splits},
            )
        children = visible_dirs(folder)
        if len(children) == 1 and not has_image_files(folder):
            folder = children[0]
            continue
        break
    if not visible_dirs(folder) and has_image_files(folder) and folder != start:
        raise DatasetError(
            f"{start}: holds a single class folder ({folder.name}); a classifier needs at least "
            "two, one sub-folder per class"
        )
    if not visible_dirs(folder):
        raise DatasetError(
            f"{folder}: no class folders found; expected one sub-folder per class "
            "(e.g. cats/, dogs/) or train/, validation/ and test/ folders containing them"
        )
    return DatasetLayout(folder, {})


def has_image_files(folder: Path) -> bool:
    """True if ``folder`` directly holds files with an image extension."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS for p in visible_files(folder))
