"""Dataset discovery and splitting: supported layouts, seeded stratified splits, clear errors."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from imgclf.bundle import DatasetSummary
from imgclf.data import DatasetSplits, ImageRecord, load_dataset, load_folder
from imgclf.errors import ConfigError, DatasetError
from imgtools import COLORS, clothing_dir, make_image, write_color_dataset

CLASSES = sorted(COLORS)


def split_sizes(dataset: DatasetSplits) -> dict[str, int]:
    return {name: len(records) for name, records in dataset.splits.items()}


def assert_labels_match_folders(dataset: DatasetSplits) -> None:
    for records in dataset.splits.values():
        for record in records:
            assert record.path.parent.name == dataset.classes[record.label]


def relative_split(dataset: DatasetSplits) -> dict[str, set[str]]:
    return {
        name: {r.path.relative_to(dataset.root).as_posix() for r in records}
        for name, records in dataset.splits.items()
    }


def test_standard_layout(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=4)
    dataset = load_dataset(root, check_images=False)
    assert dataset.root == root.resolve()
    assert dataset.classes == CLASSES
    assert list(dataset.splits) == ["train", "validation", "test"]
    assert split_sizes(dataset) == {"train": 12, "validation": 12, "test": 12}
    assert dataset.problems == []
    assert dataset.carved == ()
    assert_labels_match_folders(dataset)


@pytest.mark.parametrize(
    ("train", "validation", "test"),
    [
        ("train", "val", "test"),
        ("train", "valid", "test"),
        ("Train", "VALIDATION", "Test"),
        ("training", "Valid", "testing"),
    ],
)
def test_split_folder_names(tmp_path: Path, train: str, validation: str, test: str) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=(train, validation, test))
    dataset = load_dataset(root)
    assert split_sizes(dataset) == {"train": 6, "validation": 6, "test": 6}
    assert dataset.splits["validation"][0].path.parts[-3] == validation


def test_two_folders_that_mean_the_same_split_are_refused(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=("train", "val", "valid"))
    with pytest.raises(DatasetError, match="'val' and 'valid' look like the validation split"):
        load_dataset(root)


def test_single_folder_is_split_stratified(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=20, splits=("",))
    dataset = load_dataset(root, val_fraction=0.2, test_fraction=0.1, check_images=False)
    assert dataset.carved == ("validation", "test")
    for split, per_class in {"train": 14, "validation": 4, "test": 2}.items():
        assert dataset.counts(split) == dict.fromkeys(CLASSES, per_class)
    all_paths = [r.path for records in dataset.splits.values() for r in records]
    assert len(all_paths) == len(set(all_paths)) == 60
    assert_labels_match_folders(dataset)


def test_single_folder_split_is_seeded_and_reproducible(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=20, splits=("",))
    first = relative_split(load_dataset(root, seed=7, check_images=False))
    again = relative_split(load_dataset(root, seed=7, check_images=False))
    other_seed = relative_split(load_dataset(root, seed=8, check_images=False))
    assert first == again
    assert first["validation"] != other_seed["validation"]
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(root, moved)
    assert relative_split(load_dataset(moved, seed=7, check_images=False)) == first


def test_small_classes_keep_a_training_image(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=("",))
    dataset = load_dataset(root, check_images=False)
    assert dataset.counts("train") == dict.fromkeys(CLASSES, 1)
    assert sum(dataset.counts("validation").values()) == 3
    assert "test" not in dataset.splits  # nothing left to make one: dropped, not empty
    assert dataset.carved == ("validation",)


def test_zero_test_fraction_makes_no_test_split(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=10, splits=("",))
    dataset = load_dataset(root, test_fraction=0, check_images=False)
    assert list(dataset.splits) == ["train", "validation"]
    assert split_sizes(dataset) == {"train": 27, "validation": 3}


@pytest.mark.parametrize("fractions", [(0.6, 0.4), (-0.1, 0.1), (0.1, 1.0)])
def test_bad_fractions_are_refused(tmp_path: Path, fractions: tuple[float, float]) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=5, splits=("",))
    with pytest.raises(ConfigError, match="fraction"):
        load_dataset(root, val_fraction=fractions[0], test_fraction=fractions[1])


def test_missing_validation_is_carved_from_train(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=10, splits=("train", "test"))
    dataset = load_dataset(root, val_fraction=0.2, seed=3, check_images=False)
    assert list(dataset.splits) == ["train", "validation", "test"]
    assert dataset.carved == ("validation",)
    assert dataset.counts("validation") == dict.fromkeys(CLASSES, 2)
    assert dataset.counts("test") == dict.fromkeys(CLASSES, 10)
    for record in dataset.splits["validation"]:
        assert record.path.parts[-3] == "train"
    train = {r.path for r in dataset.splits["train"]}
    assert train.isdisjoint(r.path for r in dataset.splits["validation"])


def test_nested_split_folders_are_found(tmp_path: Path) -> None:
    root = tmp_path / "intel"
    write_color_dataset(root, per_class=3, splits=("seg_train/seg_train", "seg_test/seg_test"))
    (root / "seg_pred" / "seg_pred").mkdir(parents=True)  # unlabelled images: not a split
    make_image((1, 2, 3)).save(root / "seg_pred" / "seg_pred" / "1.jpg")
    dataset = load_dataset(root, val_fraction=0.34, check_images=False)
    assert list(dataset.splits) == ["train", "validation", "test"]
    assert split_sizes(dataset) == {"train": 6, "validation": 3, "test": 9}
    assert dataset.splits["test"][0].path.parts[-4:-2] == ("seg_test", "seg_test")


def test_extra_top_folder_is_found(tmp_path: Path) -> None:
    top = tmp_path / "download" / "clothing-dataset-small-master"
    write_color_dataset(top, per_class=2)
    (top / "README.md").write_text("# dataset\n")
    (top / "LICENSE").write_text("CC0\n")
    dataset = load_dataset(tmp_path / "download")
    assert dataset.root == top.resolve()
    assert split_sizes(dataset) == {"train": 6, "validation": 6, "test": 6}
    assert dataset.problems == []


def test_single_folder_under_an_extra_top_folder(tmp_path: Path) -> None:
    write_color_dataset(tmp_path / "outer" / "inner", per_class=5, splits=("",))
    dataset = load_dataset(tmp_path / "outer", check_images=False)
    assert dataset.root.name == "inner"
    assert dataset.classes == CLASSES


def test_hidden_files_and_folders_are_ignored(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    (root / ".cache").mkdir()
    (root / "__MACOSX" / "train" / "red").mkdir(parents=True)
    (root / "__MACOSX" / "train" / "red" / "._red_000.jpg").write_bytes(b"\x00\x05\x16\x07")
    (root / "train" / "red" / "@eaDir").mkdir()
    (root / "train" / "red" / "@eaDir" / "thumb.jpg").write_bytes(b"junk")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "train" / "red" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "train" / "red" / ".hidden.jpg").write_bytes(b"junk")
    (root / "train" / "red" / "Thumbs.db").write_bytes(b"junk")
    dataset = load_dataset(root)
    assert dataset.classes == CLASSES
    assert dataset.problems == []
    assert split_sizes(dataset) == {"train": 6, "validation": 6, "test": 6}


def test_class_folders_may_hold_sub_folders(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=("",))
    (root / "red" / "2024").mkdir()
    make_image(COLORS["red"]).save(root / "red" / "2024" / "extra.jpg")
    dataset = load_dataset(root, val_fraction=0, test_fraction=0)
    assert dataset.counts("train") == {"blue": 2, "green": 2, "red": 3}


def test_mismatched_classes_name_the_difference(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=1)
    shutil.rmtree(root / "test" / "green")
    (root / "validation" / "purple").mkdir()
    make_image((128, 0, 128)).save(root / "validation" / "purple" / "p.jpg")
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    message = str(info.value)
    assert "validation has extra ['purple']" in message
    assert "test lacks ['green']" in message


def test_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=("",))
    (root / "yellow").mkdir()
    with pytest.raises(DatasetError, match=r"\['yellow'\].*empty"):
        load_dataset(root)


def test_split_without_usable_images_is_an_error(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=1)
    for path in (root / "test").rglob("*.jpg"):
        path.write_bytes(b"")
    with pytest.raises(DatasetError, match="the test split has no usable images") as info:
        load_dataset(root)
    assert "(3 files skipped, e.g. " in str(info.value)
    assert "empty file (zero bytes)" in str(info.value)


def test_class_without_training_images_is_an_error(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    for path in (root / "train" / "blue").iterdir():
        path.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=r"\['blue'\] have no usable training images"):
        load_dataset(root)


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "b").mkdir()
    make_image((0, 0, 0)).save(tmp_path / "ds" / "a" / "1.jpg")
    make_image((0, 0, 0)).save(tmp_path / "ds" / "b" / "1.jpg")
    shutil.rmtree(tmp_path / "ds" / "b")
    with pytest.raises(DatasetError, match=r"single class folder \(a\)"):
        load_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "b").mkdir()
    make_image((0, 0, 0)).save(tmp_path / "ds" / "b" / "1.jpg")
    shutil.rmtree(tmp_path / "ds" / "a")
    (tmp_path / "ds" / "notes.txt").write_text("x")
    (tmp_path / "ds" / "c.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="a classifier needs at least two"):
        load_dataset(tmp_path / "ds")


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_not_a_dataset_folder(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("x")
    elif kind == "empty":
        target.mkdir()
    with pytest.raises(DatasetError, match=r"not a folder|no class folders"):
        load_dataset(target)


def test_summary_is_the_manifest_dataset_summary(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=3)
    (root / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0broken")
    summary = load_dataset(root).summary("colors")
    assert isinstance(summary, DatasetSummary)
    assert summary.name == "colors"
    assert summary.source == str(root.resolve())
    assert summary.counts["train"] == {"blue": 3, "green": 3, "red": 3}
    assert summary.skipped == {"train": 1, "validation": 0, "test": 0}


def test_load_folder_uses_the_given_classes(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2, splits=("seg_test/seg_test",))
    shutil.rmtree(root / "seg_test" / "seg_test" / "green")
    classes = ["red", "green", "blue"]
    records, problems = load_folder(root / "seg_test", classes)
    assert problems == []
    assert Counter(r.label for r in records) == {0: 2, 2: 2}
    assert all(isinstance(r, ImageRecord) for r in records)
    assert all(r.path.parent.name == classes[r.label] for r in records)


def test_load_folder_refuses_unknown_classes(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=1, splits=("test",))
    with pytest.raises(DatasetError, match=r"\['green'\] are not among the known classes"):
        load_folder(root / "test", ["red", "blue"])
    with pytest.raises(DatasetError, match="not a folder"):
        load_folder(root / "nope", ["red", "blue"])


@pytest.mark.slow
@pytest.mark.skipif(not clothing_dir().is_dir(), reason="clothing-small dataset not present")
def test_real_clothing_small_loads() -> None:
    dataset = load_dataset(clothing_dir())
    assert split_sizes(dataset) == {"train": 3068, "validation": 341, "test": 372}
    assert dataset.classes == [
        "dress",
        "hat",
        "longsleeve",
        "outwear",
        "pants",
        "shirt",
        "shoes",
        "shorts",
        "skirt",
        "t-shirt",
    ]
    assert dataset.problems == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any folder")
def test_unreadable_folder_is_a_dataset_error(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=1)
    locked = root / "train" / "red"
    locked.chmod(0)
    try:
        with pytest.raises(DatasetError, match="cannot read"):
            load_dataset(root)
    finally:
        locked.chmod(0o755)
