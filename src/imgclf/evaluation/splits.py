"""Which images an evaluation runs on: splits of a dataset, or any folder of class folders.

``imgclf evaluate --data DIR`` accepts:

* a dataset root (``train/``, ``validation/``, ``test/``, nested or wrapped layouts included):
  ``--split`` picks ``train``, ``validation``, ``test``, ``all``, or the name of any other folder
  of class folders inside DIR (``--split holdout`` reads ``DIR/holdout``);
  asking for ``validation`` where there is no such folder re-creates the split ``imgclf train``
  carves from ``train/``, with the seed and fraction recorded in the bundle;
* a plain folder of class folders (``clothing-small/test``, ``new-photos/``): evaluated as one
  split named after the folder. Asking for ``--split test`` there re-creates the seeded stratified
  split that ``imgclf train`` carves from a one-folder dataset, with the seed and fractions
  recorded in the bundle.

Labels always index the model's labels: a folder may hold only some of the model's classes, but a
class folder the model does not know is an error, never silently dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgclf.data import DatasetProblem, DatasetSplits, ImageRecord, load_dataset, load_folder
from imgclf.data.layout import SPLIT_ALIASES, SPLIT_ORDER, find_layout, split_name
from imgclf.errors import DatasetError

log = logging.getLogger(__name__)

#: ``--split`` value selecting every split found.
ALL_SPLITS = "all"


@dataclass
class EvaluationData:
    """Records to evaluate, per split, with labels indexing the model's labels.

    Attributes:
        root: The folder the data came from (None when records were passed in directly).
        splits: Split name -> records, in report order.
        problems: Files skipped before evaluation (not images, unknown extensions).
        notes: Facts worth showing in the report (e.g. how a split was carved).
        carved_with: The :data:`CARVING` settings the splits were carved with, as training
            carves them from a folder that lacks them; None when they are folders of their own.
    """

    root: Path | None
    splits: dict[str, list[ImageRecord]]
    problems: list[DatasetProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    carved_with: dict[str, Any] | None = None


def remap_records(
    records: Sequence[ImageRecord], classes: Sequence[str], labels: Sequence[str], where: str
) -> list[ImageRecord]:
    """Re-index records labelled against ``classes`` so their labels index the model's ``labels``.

    Raises:
        DatasetError: Some records belong to classes the model does not know.
    """
    index = {name: i for i, name in enumerate(labels)}
    used = {classes[record.label] for record in records}
    unknown = sorted(used - set(index))
    if unknown:
        raise DatasetError(
            f"{where}: images of classes {unknown} are unknown to the model, which knows "
            f"{list(labels)}; remove those class folders or evaluate a model trained on them"
        )
    return [ImageRecord(record.path, index[classes[record.label]]) for record in records]


def from_dataset_splits(
    dataset: DatasetSplits, labels: Sequence[str], requested: Sequence[str] | None
) -> EvaluationData:
    """Select and re-index splits of an already loaded dataset."""
    names = _select(list(dataset.splits), requested, str(dataset.root))
    return EvaluationData(
        root=dataset.root,
        splits={
            name: remap_records(dataset.splits[name], dataset.classes, labels, str(dataset.root))
            for name in names
        },
        problems=[p for p in dataset.problems if p.split is None or p.split in names],
    )


def from_records(
    splits: Mapping[str, Sequence[ImageRecord]],
    labels: Sequence[str],
    requested: Sequence[str] | None,
) -> EvaluationData:
    """Use records whose labels already index the model's labels."""
    names = _select(list(splits), requested, "the given records")
    for name in names:
        bad = [r.path for r in splits[name] if not 0 <= r.label < len(labels)]
        if bad:
            raise DatasetError(
                f"split {name!r}: {len(bad)} records have labels outside 0..{len(labels) - 1} "
                f"(first: {bad[0]}); labels must index the model's labels"
            )
    return EvaluationData(root=None, splits={name: list(splits[name]) for name in names})


def canonical_split(name: str) -> str:
    """``val``/``valid`` -> ``validation``, ``training`` -> ``train``...; other names unchanged."""
    for canonical, aliases in SPLIT_ALIASES.items():
        if name.lower() in aliases:
            return canonical
    return name


def _select(available: list[str], requested: Sequence[str] | None, where: str) -> list[str]:
    """Expand ``all``/None and check every requested split exists."""
    if requested is None:
        preferred = [name for name in ("test", "validation") if name in available]
        requested = preferred[:1] or [ALL_SPLITS]
    if ALL_SPLITS in requested:
        return _ordered(available)
    missing = [name for name in requested if name not in available]
    if missing:
        raise DatasetError(
            f"{where} has no {', '.join(missing)} split (it has: {', '.join(available)}); "
            f"choose one of them or '{ALL_SPLITS}'"
        )
    return _ordered(list(dict.fromkeys(requested)))


def _ordered(names: list[str]) -> list[str]:
    """Standard splits first in train/validation/test order, then the others as given."""
    standard = [name for name in SPLIT_ORDER if name in names]
    return standard + [name for name in names if name not in SPLIT_ORDER]


def load_evaluation_data(
    data: str | Path,
    labels: Sequence[str],
    requested: Sequence[str] | None = None,
    *,
    training: Mapping[str, Any] | None = None,
) -> EvaluationData:
    """Find the images to evaluate under ``data`` (see the module docstring for the rules).

    Args:
        data: A dataset root or a folder of class folders.
        labels: The model's labels; records are labelled against them.
        requested: Split names, ``["all"]``, or None for ``test`` (dataset roots) or the whole
            folder (plain folders).
        training: The bundle's ``manifest.training`` (seed and fractions of a carved split).

    Raises:
        DatasetError: The folder is missing or unusable, a split is missing, or it holds classes
            the model does not know.
    """
    if requested is not None:
        requested = [canonical_split(name) for name in requested]
    layout = find_layout(data)
    if layout.split_dirs and _carves_validation(layout.split_dirs, requested):
        return _carved(layout.root, labels, requested or (), training or {})
    if layout.split_dirs:
        return _from_split_folders(layout.root, layout.split_dirs, labels, requested)
    folder_split = split_name(layout.root.name) or layout.root.name
    if requested is None or ALL_SPLITS in requested or list(requested) == [folder_split]:
        records, problems = load_folder(layout.root, labels, check_images=False)
        return EvaluationData(layout.root, {folder_split: records}, problems)
    if all(name in SPLIT_ORDER for name in requested):
        return _carved(layout.root, labels, requested, training or {})
    raise DatasetError(
        f"{layout.root} is one folder of class folders (evaluated as the split "
        f"{folder_split!r}); it has no {', '.join(requested)} split. Drop --split, or pass "
        "train/validation/test to re-create the split imgclf train carves from one folder"
    )


def _from_split_folders(
    data: Path,
    split_dirs: Mapping[str, Path],
    labels: Sequence[str],
    requested: Sequence[str] | None,
) -> EvaluationData:
    folders = dict(split_dirs)
    for name in requested or ():
        if name != ALL_SPLITS and name not in folders and (data / name).is_dir():
            folders[name] = data / name  # any other folder of class folders, by its name
    names = _select(list(folders), requested, str(data))
    result = EvaluationData(root=data, splits={})
    for name in names:
        records, problems = load_folder(folders[name], labels, check_images=False)
        result.splits[name] = records
        result.problems.extend(problems)
    return result


def _carves_validation(split_dirs: Mapping[str, Path], requested: Sequence[str] | None) -> bool:
    """True when validation is asked for but, as in training, must be carved from train."""
    return (
        requested is not None
        and "validation" in requested
        and all(name in SPLIT_ORDER for name in requested)
        and "validation" not in split_dirs
        and "train" in split_dirs
    )


#: The settings ``imgclf train`` carves validation and test splits with, and their defaults.
CARVING: dict[str, Any] = {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.1}


def carving_settings(training: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`CARVING` settings a model was trained with (its manifest's ``training``)."""
    return {key: training.get(key, default) for key, default in CARVING.items()}


def _carved(
    root: Path, labels: Sequence[str], requested: Sequence[str], training: Mapping[str, Any]
) -> EvaluationData:
    """Re-create the seeded stratified split imgclf train makes where folders are missing."""
    settings = carving_settings(training)
    seed = int(settings["seed"])
    val_fraction = float(settings["val_fraction"])
    test_fraction = float(settings["test_fraction"])
    dataset = load_dataset(
        root,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        check_images=False,
    )
    data = from_dataset_splits(dataset, labels, requested)
    data.carved_with = settings
    data.notes.append(
        f"{', '.join(data.splits)}: re-created the seeded stratified split imgclf train makes "
        f"of {root} (seed {seed}, validation fraction {val_fraction:g}, test fraction "
        f"{test_fraction:g})"
    )
    return data
