"""Image checks while loading a dataset: bad files reported and skipped, odd modes load as RGB."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclf.data import DatasetProblem, load_dataset
from imgclf.data.checks import check_images
from imgclf.preprocessing import open_image
from imgtools import COLORS, encode_image, make_image, write_color_dataset


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each kind of trouble; returns file name -> expected words of the reason."""
    jpeg = encode_image(make_image(COLORS["red"], (64, 64)), "JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    (folder / "icon.png").write_bytes(encode_image(make_image(COLORS["red"], (32, 32)), "ICO"))
    (folder / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (folder / "notes.txt").write_text("labels were checked by hand\n")
    Image.new("1", (6000, 4100)).save(folder / "huge.png")
    return {
        "truncated.jpg": "truncated",
        "empty.jpg": "zero bytes",
        "text.jpg": "not a recognised image format",
        "icon.png": "format ICO is not accepted",
        "drawing.svg": "not an image file (.svg)",
        "notes.txt": "not an image file (.txt)",
        "huge.png": "exceeds the limit",
    }


def test_bad_files_are_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=3)
    expected = write_bad_files(root / "train" / "green")
    with caplog.at_level(logging.WARNING, logger="imgclf.data"):
        dataset = load_dataset(root)
    assert dataset.counts("train") == {"blue": 3, "green": 3, "red": 3}
    reasons = {p.path.name: p.reason for p in dataset.problems}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name], (name, reasons[name])
        assert str(root / "train" / "green" / name) not in reasons[name]  # path shown apart
    assert all(p.split == "train" for p in dataset.problems)
    assert all(isinstance(p, DatasetProblem) for p in dataset.problems)
    assert all(not r.path.name.startswith(tuple(expected)) for r in dataset.splits["train"])
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping ") for m in messages) == len(expected)
    assert any(f"skipped {len(expected)} of 34 files" in m for m in messages)


def test_without_checks_only_non_image_extensions_are_skipped(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=3)
    write_bad_files(root / "train" / "green")
    dataset = load_dataset(root, check_images=False)
    assert {p.path.name for p in dataset.problems} == {"drawing.svg", "notes.txt"}
    assert dataset.counts("train")["green"] == 8


def test_problems_in_a_single_folder_dataset_know_their_split(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=10, splits=("",))
    for index in range(10):
        (root / "blue" / f"zz_broken_{index}.jpg").write_bytes(b"")
    dataset = load_dataset(root, val_fraction=0.25, test_fraction=0.25)
    assert len(dataset.problems) == 10
    summary = dataset.summary("colors")
    assert sum(summary.skipped.values()) == 10
    total_blue = sum(dataset.counts(split)["blue"] for split in dataset.splits)
    assert total_blue == 10


def exif_rotated_jpeg(path: Path) -> None:
    """A 40x20 image, left half red, right half blue, stored with EXIF orientation 6 (90° CW)."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = COLORS["red"]
    pixels[:, 20:] = COLORS["blue"]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def write_odd_images(folder: Path) -> None:
    exif_rotated_jpeg(folder / "rotated.jpg")
    make_image(COLORS["red"]).convert("L").save(folder / "gray.jpg")
    make_image(COLORS["red"]).convert("P").save(folder / "palette.png")
    make_image(COLORS["red"]).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = make_image(COLORS["red"]).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(folder / "alpha.png")
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((0, 0), 1)
    palette.save(folder / "palette-transparent.png", transparency=1)
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(folder / "deep.png")


def test_odd_modes_and_orientation_load_as_rgb(tmp_path: Path) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    folder = root / "train" / "red"
    write_odd_images(folder)
    dataset = load_dataset(root)
    assert dataset.problems == []
    assert dataset.counts("train")["red"] == 9
    images = {r.path.name: open_image(r.path) for r in dataset.splits["train"]}
    assert {image.mode for image in images.values()} == {"RGB"}
    rotated = images["rotated.jpg"]
    assert rotated.size == (20, 40)  # upright: the EXIF rotation was applied
    top, bottom = np.asarray(rotated)[5, 10], np.asarray(rotated)[35, 10]
    assert top[0] > 180 and top[2] < 80  # red half now on top
    assert bottom[2] > 180 and bottom[0] < 80
    assert images["alpha.png"].getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert images["palette-transparent.png"].getpixel((0, 0)) == (255, 255, 255)
    assert images["palette-transparent.png"].getpixel((1, 1)) == (255, 0, 0)
    red = np.asarray(images["cmyk.jpg"], dtype=np.int16).mean(axis=(0, 1))
    assert red[0] > 150 and red[1] < 100 and red[2] < 100
    assert len(set(images["gray.jpg"].getpixel((5, 5)))) == 1  # grey stays grey
    assert images["deep.png"].getpixel((0, 0)) == (155, 155, 155)  # 16-bit scaled to 8-bit


def test_check_images_runs_in_parallel_and_returns_only_problems(tmp_path: Path) -> None:
    paths = []
    for index in range(40):
        path = tmp_path / f"{index}.jpg"
        if index % 10 == 0:
            path.write_bytes(b"\xff\xd8\xff")
        else:
            make_image(COLORS["blue"], seed=index).save(path)
        paths.append(path)
    problems = check_images(paths, workers=4, progress=False)
    assert sorted(problems) == [tmp_path / f"{i}.jpg" for i in (0, 10, 20, 30)]


def test_many_problems_are_logged_briefly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_color_dataset(tmp_path / "ds", per_class=2)
    for index in range(60):
        (root / "train" / "blue" / f"empty_{index:02d}.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="imgclf.data"):
        dataset = load_dataset(root)
    assert len(dataset.problems) == 60
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping ") for m in messages) == 50
    assert "... and 10 more" in messages
