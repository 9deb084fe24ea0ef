"""Loading a folder-per-class dataset into checked train/validation/test splits.

:func:`load_dataset` is the entry point training and evaluation use: it finds the layout
(:mod:`imgclf.data.layout`), makes any missing split with a seeded stratified split
(:mod:`imgclf.data.splitting`), decodes every file once (:mod:`imgclf.data.checks`) and returns
:class:`DatasetSplits`: the records that can be used, and the problems found, each with its reason.
A corrupt file is therefore reported and skipped up front, never a crash in the middle of training.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.bundle import DatasetSummary
from imgclf.data.checks import check_images as run_image_checks
from imgclf.data.checks import extension_problem
from imgclf.data.layout import (
    SPLIT_ORDER,
    DatasetLayout,
    files_under,
    find_layout,
    has_image_files,
    split_name,
    unwrap_split_dir,
    visible_dirs,
)
from imgclf.data.splitting import stratified_split, validate_fractions
from imgclf.errors import DatasetError

logger = logging.getLogger(__name__)

#: Files named one by one in the log; the rest are counted (``DatasetSplits.problems`` has all).
MAX_LOGGED_PROBLEMS = 50

#: split -> class name -> files, before checking.
SplitFiles = dict[str, dict[str, list[Path]]]


@dataclass(frozen=True)
class ImageRecord:
    """One usable image and the index of its class in ``DatasetSplits.classes``."""

    path: Path
    label: int


@dataclass(frozen=True)
class DatasetProblem:
    """A file that was skipped, and why.

    Attributes:
        path: The file.
        reason: What is wrong with it, e.g. ``"corrupt or truncated image (...)"``.
        split: The split the file would have belonged to, if known.
    """

    path: Path
    reason: str
    split: str | None = None


@dataclass
class DatasetSplits:
    """A checked dataset: usable images per split, plus every file that was skipped.

    Attributes:
        root: The folder holding the split (or class) folders.
        classes: Sorted class folder names; a record's ``label`` indexes this list.
        splits: ``"train"``, ``"validation"``, ``"test"`` (those present) -> records.
        problems: Files that were skipped, with the reason.
        carved: Splits made by imgclf's seeded stratified split rather than read from folders.
    """

    root: Path
    classes: list[str]
    splits: dict[str, list[ImageRecord]]
    problems: list[DatasetProblem]
    carved: tuple[str, ...] = field(default=())

    def counts(self, split: str) -> dict[str, int]:
        """Class name -> number of usable images in ``split`` (every class listed, even at 0)."""
        counts = dict.fromkeys(self.classes, 0)
        for record in self.splits.get(split, []):
            counts[self.classes[record.label]] += 1
        return counts

    def summary(self, name: str) -> DatasetSummary:
        """What a model trained on this dataset records in its bundle manifest."""
        skipped = {split: 0 for split in self.splits}
        for problem in self.problems:
            if problem.split is not None:
                skipped[problem.split] = skipped.get(problem.split, 0) + 1
        return DatasetSummary(
            name=name,
            source=str(self.root),
            counts={split: self.counts(split) for split in self.splits},
            skipped=skipped,
        )


def load_dataset(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    check_images: bool = True,
) -> DatasetSplits:
    """Find, split and check a folder-per-class dataset.

    Args:
        root: Dataset folder: ``train/``, ``validation/`` (or ``val/``, ``valid/``) and optional
            ``test/`` folders of class folders, or directly one folder per class. Nested split
            folders (``seg_train/seg_train``) and an extra top folder are found.
        val_fraction: Share of each class held out for validation when there is no validation
            folder (carved from train), or when the dataset is one folder of classes.
        test_fraction: Share of each class held out for test when the dataset is one folder of
            classes. Folders that are already split are never given a carved test split.
        seed: Seed of the stratified split; the same seed gives the same split.
        check_images: Decode every image once and skip (and report) those that fail. If False,
            only files without an image extension are skipped. Verdicts for large datasets are
            cached per file (path, size, mtime; see :mod:`imgclf.data.cache`), so loading the
            same dataset again only decodes files that changed.

    Returns:
        The usable images per split, with the problems found.

    Raises:
        DatasetError: No classes, fewer than two, an empty class or split, or class folders
            that differ between splits.
        ConfigError: The fractions are out of range.
    """
    validate_fractions({"validation": val_fraction, "test": test_fraction})
    with _readable():
        layout = find_layout(root)
        files, carved = _split_files(layout, val_fraction, test_fraction, seed)
    for name in [n for n in carved if not any(files[n].values())]:
        logger.warning("%s: too few images to make a %s split; there is none", layout.root, name)
        del files[name]
        carved = tuple(n for n in carved if n != name)
    classes = sorted(next(iter(files.values())))
    splits, problems = _check_and_label(files, classes, check_images, layout.root)
    dataset = DatasetSplits(layout.root, classes, splits, problems, carved)
    _log_problems(problems, sum(len(f) for split in files.values() for f in split.values()))
    _require_usable(dataset)
    return dataset


def load_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str],
    *,
    check_images: bool = True,
) -> tuple[list[ImageRecord], list[DatasetProblem]]:
    """Load one split folder (class folders inside) against a known list of classes.

    Use it to evaluate a model on any folder: labels index ``classes`` (the model's labels).
    Classes without a folder are fine; a folder naming an unknown class is an error.

    Args:
        root: A folder of class folders (``seg_test/seg_test`` nesting is found).
        classes: The class names labels refer to, in label order.
        check_images: Decode every image once and skip (and report) those that fail.

    Returns:
        The usable records and the problems found.

    Raises:
        DatasetError: The folder is missing, holds no images, or names classes not in ``classes``.
    """
    folder = Path(root).expanduser().resolve()
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; expected a folder of class folders")
    with _readable():
        folder = unwrap_split_dir(folder)
        split = split_name(folder.name) or folder.name
        by_class = _class_files(folder, split, allow_empty=True)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise DatasetError(
            f"{folder}: class folders {unknown} are not among the known classes {list(classes)}; "
            "rename or remove them, or use a model trained on these classes"
        )
    splits, problems = _check_and_label({split: by_class}, list(classes), check_images, folder)
    if not splits[split]:
        raise DatasetError(f"{folder}: no usable images found in its class folders")
    _log_problems(problems, sum(len(f) for f in by_class.values()))
    return splits[split], problems


@contextlib.contextmanager
def _readable() -> Iterator[None]:
    """Turn a folder that cannot be listed into a DatasetError that names it."""
    try:
        yield
    except OSError as exc:
        raise DatasetError(
            f"cannot read {exc.filename or 'a dataset folder'}: {exc.strerror or exc}; check "
            "that the folder exists and is readable"
        ) from exc


def _split_files(
    layout: DatasetLayout, val_fraction: float, test_fraction: float, seed: int
) -> tuple[SplitFiles, tuple[str, ...]]:
    """Files per split and class, carving the splits the folders do not provide."""
    if layout.is_single_folder:
        by_class = _class_files(layout.root, "dataset")
        fractions = {"validation": val_fraction, "test": test_fraction}
        fractions = {name: value for name, value in fractions.items() if value > 0}
        split = stratified_split(by_class, fractions, seed=seed, base=layout.root)
        return split, tuple(fractions)
    files = {name: _class_files(folder, name) for name, folder in layout.split_dirs.items()}
    _require_same_classes(files, layout.root)
    if "validation" in files or "train" not in files or val_fraction <= 0:
        return files, ()
    carved = stratified_split(
        files["train"], {"validation": val_fraction}, seed=seed, base=layout.root
    )
    merged = files | carved
    return {name: merged[name] for name in SPLIT_ORDER if name in merged}, ("validation",)


def _class_files(folder: Path, split: str, *, allow_empty: bool = False) -> dict[str, list[Path]]:
    """Class name -> files below each class folder of ``folder``."""
    class_dirs = visible_dirs(folder)
    if not class_dirs:
        raise DatasetError(
            f"{folder}: no class folders in the {split} split; put each class's images in a "
            "sub-folder named after the class"
        )
    if has_image_files(folder):
        logger.warning(
            "%s: images directly in the %s folder have no class and are ignored", folder, split
        )
    by_class = {d.name: files_under(d) for d in class_dirs}
    empty = sorted(name for name, files in by_class.items() if not files)
    if empty and not allow_empty:
        raise DatasetError(
            f"{folder}: class folders {empty} of the {split} split are empty; add images or "
            "remove the folders"
        )
    return by_class


def _require_same_classes(files: Mapping[str, Mapping[str, list[Path]]], root: Path) -> None:
    reference_split = "train" if "train" in files else next(iter(files))
    reference = set(files[reference_split])
    differences = []
    for split, by_class in files.items():
        missing, extra = sorted(reference - set(by_class)), sorted(set(by_class) - reference)
        if missing:
            differences.append(f"{split} lacks {missing}")
        if extra:
            differences.append(f"{split} has extra {extra}")
    if differences:
        raise DatasetError(
            f"{root}: class folders differ between splits (compared with {reference_split}): "
            f"{'; '.join(differences)}. Every split needs the same class folders: add the "
            "missing ones or remove the extra ones"
        )


def _check_and_label(
    files: SplitFiles, classes: list[str], check_images: bool, root: Path
) -> tuple[dict[str, list[ImageRecord]], list[DatasetProblem]]:
    """Turn files into labelled records, skipping (and reporting) those that cannot be used."""
    all_files = [
        path for by_class in files.values() for paths in by_class.values() for path in paths
    ]
    if check_images:
        reasons = run_image_checks(all_files, cache_root=root)
    else:
        reasons = {p: r for p in all_files if (r := extension_problem(p)) is not None}
    index = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[ImageRecord]] = {}
    problems: list[DatasetProblem] = []
    for split, by_class in files.items():
        records = splits.setdefault(split, [])
        for class_name in sorted(by_class):
            for path in by_class[class_name]:
                if path in reasons:
                    problems.append(DatasetProblem(path, reasons[path], split))
                else:
                    records.append(ImageRecord(path, index[class_name]))
    return splits, problems


def _require_usable(dataset: DatasetSplits) -> None:
    if len(dataset.classes) < 2:
        raise DatasetError(
            f"{dataset.root}: found {len(dataset.classes)} class folder(s) {dataset.classes}; "
            "a classifier needs at least two"
        )
    for split, records in dataset.splits.items():
        if not records:
            raise DatasetError(
                f"{dataset.root}: the {split} split has no usable images"
                f"{_examples(dataset, split)}; add images or fix the files"
            )
    train_counts = dataset.counts("train") if "train" in dataset.splits else {}
    empty = sorted(name for name, count in train_counts.items() if count == 0)
    if empty:
        raise DatasetError(
            f"{dataset.root}: classes {empty} have no usable training images"
            f"{_examples(dataset, 'train')}; add images or remove those class folders"
        )


def _examples(dataset: DatasetSplits, split: str, limit: int = 3) -> str:
    """`` (N files skipped, e.g. path: reason; ...)`` for an error message, or nothing."""
    skipped = [p for p in dataset.problems if p.split == split]
    if not skipped:
        return ""
    shown = "; ".join(f"{p.path}: {p.reason}" for p in skipped[:limit])
    return f" ({len(skipped)} files skipped, e.g. {shown})"


def _log_problems(problems: Sequence[DatasetProblem], total: int) -> None:
    for problem in problems[:MAX_LOGGED_PROBLEMS]:
        logger.warning("skipping %s: %s", problem.path, problem.reason)
    if len(problems) > MAX_LOGGED_PROBLEMS:
        logger.warning("... and %d more", len(problems) - MAX_LOGGED_PROBLEMS)
    if problems:
        logger.warning(
            "skipped %d of %d files that are not usable images; `imgclf data inspect` lists them",
            len(problems),
            total,
        )
