"""The input size follows the photos' size: small photos are not trained at 224 px."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.bundle import load_bundle
from imgclf.cli import main
from imgclf.training.resolution import (
    choose_epochs,
    choose_image_size,
    default_patience,
    median_short_side,
)


@pytest.mark.parametrize(
    ("short_side", "expected"),
    [(32, 128), (20, 96), (48, 192), (100, 224), (150, 224), (400, 224), (None, 224)],
)
def test_size_rule(short_side: int | None, expected: int) -> None:
    size, reason = choose_image_size(short_side, 224)
    assert size == expected
    assert ("224 px" in reason) and (str(short_side) in reason or short_side is None)
    # The backbone's own size is never described as an upscale of the photos.
    assert (size == 224) == reason.startswith("the backbone's pretrained size")


@pytest.mark.parametrize(
    ("image_size", "expected"), [(224, 8), (256, 8), (192, 11), (160, 16), (128, 24), (96, 32)]
)
def test_epochs_rule_keeps_the_pixels_of_eight_epochs_at_the_backbone_size(
    image_size: int, expected: int
) -> None:
    epochs, reason = choose_epochs(image_size, 224)
    assert epochs == expected
    assert ("fewer pixels" in reason) == (image_size < 224)
    assert ("at most 32" in reason) == (image_size == 96)  # 43.6 epochs' pixels, capped


@pytest.mark.parametrize(("epochs", "expected"), [(1, 3), (8, 3), (16, 6), (24, 9), (32, 12)])
def test_patience_grows_with_the_schedule(epochs: int, expected: int) -> None:
    assert default_patience(epochs) == expected


def test_median_short_side_reads_headers_and_skips_broken_files(tmp_path: Path) -> None:
    from imgtools import make_image

    paths = []
    for i, size in enumerate([(32, 32), (40, 30), (64, 48)]):
        path = tmp_path / f"{i}.jpg"
        make_image((200, 30, 30), size, seed=i).save(path)
        paths.append(path)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert median_short_side([*paths, broken]) == 32
    assert median_short_side([broken]) is None


@pytest.mark.slow  # trains a model: seconds to minutes
def test_small_photos_train_and_serve_at_a_small_size(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    data = write_color_dataset(tmp_path / "tiny", per_class=4, size=(32, 32))
    common = [str(data), "--epochs", "0", "--batch-size", "4", "--threads", "2", "--no-report"]
    assert main(["train", *common, "-o", str(tmp_path / "auto")]) == 0
    auto = load_bundle(tmp_path / "auto")
    assert auto.preprocess_config.input_size == 128
    assert "median short side of 32 px" in auto.manifest.training["image_size_reason"]
    assert main(["train", *common, "-o", str(tmp_path / "set"), "--image-size", "64"]) == 0
    chosen = load_bundle(tmp_path / "set")
    assert chosen.preprocess_config.input_size == 64
    assert chosen.manifest.training["image_size_reason"] == "--image-size given"


@pytest.mark.slow  # trains a model: seconds
def test_small_photos_get_the_longer_schedule_unless_epochs_are_given(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    data = write_color_dataset(tmp_path / "tiny", per_class=4, size=(32, 32))
    common = [str(data), "--batch-size", "4", "--threads", "2", "--no-report", "--no-export"]
    # Patience 1 ends the 24-epoch schedule as soon as validation stops improving.
    assert main(["train", *common, "-o", str(tmp_path / "auto"), "--patience", "1"]) == 0
    training = load_bundle(tmp_path / "auto").manifest.training
    assert training["epochs"] == 24
    assert "spent at 128 px" in training["epochs_reason"]
    assert 1 <= training["epochs_run"] <= 24
    assert training["patience"] == 1
    assert main(["train", *common, "-o", str(tmp_path / "set"), "--epochs", "1"]) == 0
    training = load_bundle(tmp_path / "set").manifest.training
    assert (training["epochs"], training["epochs_reason"]) == (1, "--epochs given")
    assert training["epochs_run"] == 1
    assert training["patience"] == 3  # the default for a 1-epoch schedule; the run above gave 1


@pytest.mark.slow  # trains a model: seconds
def test_a_resumed_run_keeps_the_schedule_it_started_with(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    data = write_color_dataset(tmp_path / "tiny", per_class=4, size=(32, 32))
    out = str(tmp_path / "run")
    common = [str(data), "-o", out, "--batch-size", "4", "--threads", "2", "--no-report"]
    assert main(["train", *common, "--epochs", "2", "--patience", "5", "--stop-after", "1"]) == 0
    # Without --epochs and --patience the defaults at 128 px would be 24 and 9.
    assert main(["train", *common, "--no-export", "--resume"]) == 0
    training = load_bundle(out).manifest.training
    assert (training["epochs"], training["patience"]) == (2, 5)
    assert training["epochs_reason"] == "the interrupted run's schedule"
    assert training["epochs_run"] == 2
