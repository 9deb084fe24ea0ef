"""Training end to end on generated colour images: bundle, report, errors, resume, seeds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imgclf.backbones import create_model, load_torch_model
from imgclf.bundle import load_bundle
from imgclf.cli import main
from imgclf.errors import ConfigError, DatasetError, WeightsUnavailableError
from imgclf.training.recipe import TrainConfig
from imgclf.training.trainer import TrainResult, train

# Small, fast settings: 64-px inputs, a couple of epochs, tiny batches.
FAST = {"image_size": 64, "batch_size": 8, "epochs": 2, "workers": 2, "threads": 2}


def _train(data: Path, out: Path, **overrides: object) -> TrainResult:
    result = train(data, out, TrainConfig(**{**FAST, **overrides}), report=False)
    assert result is not None
    return result


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_train_writes_a_verified_bundle_and_report(color_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = train(color_dataset, out, TrainConfig(**FAST, name="colors"))
    assert result is not None
    bundle = load_bundle(out)  # checksums verified
    manifest = bundle.manifest
    assert manifest.name == "colors"
    assert manifest.labels == ["blue", "green", "red"]
    assert manifest.backbone == "tf_efficientnet_lite0"
    assert manifest.preprocess_config.input_size == 64
    assert set(manifest.metrics) == {"validation", "test"}  # train only with eval_train
    assert manifest.metrics["test"]["top1"] == pytest.approx(1.0)
    assert manifest.training["precision"]["name"] in {"fp32", "bf16"}
    assert manifest.dataset is not None
    assert manifest.dataset.counts["train"] == {"blue": 12, "green": 12, "red": 12}
    assert manifest.training["model_kwargs"] == {"drop_rate": 0.2, "drop_path_rate": 0.1}
    history = json.loads((out / "history.json").read_text())
    assert [row["stage"] for row in history] == ["head", "finetune", "finetune"]
    assert not (out / "checkpoint.pt").exists()
    report = (out / "report" / "report.html").read_text()
    assert "colors" in report
    # The saved weights reproduce the recorded test accuracy through the serving preprocessing.
    model = load_torch_model(bundle)
    from imgclf.preprocessing import preprocess_batch

    test_dir = color_dataset / "test"
    paths = sorted(test_dir.glob("*/*.jpg"))
    with torch.inference_mode():
        logits = model(torch.from_numpy(preprocess_batch(paths, bundle.preprocess_config)))
    predicted = [bundle.labels[i] for i in logits.argmax(1).tolist()]
    assert predicted == [p.parent.name for p in paths]


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_corrupt_images_are_reported_and_skipped(color_dataset: Path, tmp_path: Path) -> None:
    (color_dataset / "train" / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (color_dataset / "train" / "green" / "empty.jpg").write_bytes(b"")
    result = _train(color_dataset, tmp_path / "out", epochs=1)
    dataset = result.bundle.manifest.dataset
    assert dataset is not None
    assert dataset.skipped.get("train") == 2
    assert dataset.counts["train"]["red"] == 12


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_single_folder_dataset_is_split(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    root = write_color_dataset(tmp_path / "flat", per_class=15, splits=("",))
    result = _train(root, tmp_path / "out", epochs=1, eval_train=True)
    assert set(result.metrics) == {"train", "validation", "test"}


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
@pytest.mark.parametrize("ema_decay", [0.0, 0.99])
def test_resume_finishes_like_an_uninterrupted_run(
    color_dataset: Path, tmp_path: Path, ema_decay: float
) -> None:
    # fp32 pinned: the automatic choice times bf16 against fp32 in each run, and under load two
    # runs can choose differently, giving different head-stage features (not a resume problem).
    full = _train(color_dataset, tmp_path / "full", ema_decay=ema_decay, bf16=False)
    config = TrainConfig(**FAST, ema_decay=ema_decay, bf16=False)
    assert train(color_dataset, tmp_path / "split", config, report=False, stop_after=1) is None
    assert (tmp_path / "split" / "checkpoint.pt").is_file()
    resumed = train(color_dataset, tmp_path / "split", config, report=False, resume=True)
    assert resumed is not None
    first = torch.load(full.bundle.artifact_path("pytorch"), weights_only=True)
    second = torch.load(resumed.bundle.artifact_path("pytorch"), weights_only=True)
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, msg=key)
    full_history = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed_history = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [r["train_loss"] for r in resumed_history] == pytest.approx(
        [r["train_loss"] for r in full_history]
    )


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_ema_weights_are_averaged_and_checkpointed(color_dataset: Path, tmp_path: Path) -> None:
    """With ema_decay the average is validated and kept: it trails the raw weights."""
    config = TrainConfig(**FAST, ema_decay=0.9)
    assert train(color_dataset, tmp_path / "run", config, report=False, stop_after=1) is None
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    raw, ema = saved["model"], saved["ema"]
    assert raw.keys() == ema.keys()
    trained = [k for k in raw if raw[k].is_floating_point() and "blocks.6" in k]
    assert trained and any(not torch.equal(raw[k], ema[k]) for k in trained)
    frozen = "conv_stem.weight"  # frozen during fine-tuning: the average cannot move
    torch.testing.assert_close(raw[frozen], ema[frozen])


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_same_seed_same_model(color_dataset: Path, tmp_path: Path) -> None:
    one = _train(color_dataset, tmp_path / "one", epochs=1, seed=3)
    two = _train(color_dataset, tmp_path / "two", epochs=1, seed=3)
    assert one.bundle.manifest.metrics == two.bundle.manifest.metrics
    a = torch.load(one.bundle.artifact_path("pytorch"), weights_only=True)
    b = torch.load(two.bundle.artifact_path("pytorch"), weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_resume_refuses_changed_settings(color_dataset: Path, tmp_path: Path) -> None:
    assert train(color_dataset, tmp_path / "run", TrainConfig(**FAST), stop_after=1) is None
    changed = TrainConfig(**{**FAST, "batch_size": 4})
    with pytest.raises(ConfigError, match="batch_size was 8"):
        train(color_dataset, tmp_path / "run", changed, resume=True)


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_resume_without_checkpoint(color_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(color_dataset, tmp_path / "none", TrainConfig(**FAST), resume=True)


def test_dataset_without_validation_images_is_refused(tmp_path: Path) -> None:
    from imgtools import write_color_dataset

    root = write_color_dataset(tmp_path / "data", per_class=1, splits=("train",))
    with pytest.raises(DatasetError):
        train(root, tmp_path / "out", TrainConfig(**FAST))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": -1}, "epochs"),
        ({"batch_size": 1}, "batch_size"),
        ({"augment": "extreme"}, "augment"),
        ({"image_size": 8}, "image sizes"),
        ({"layer_decay": 0}, "layer_decay"),
        ({"ema_decay": 0.5}, "ema_decay"),
        ({"crop_mode": "letterbox"}, "crop_mode"),
    ],
)
def test_bad_settings_are_explained(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)  # type: ignore[arg-type]


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_model("no-such-net", 3)


@pytest.mark.slow  # builds a timm model (tens of seconds on a busy machine)
def test_unreachable_weights_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="cannot load pretrained weights"):
        create_model("resnet10t", 3, pretrained=True)


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
@pytest.mark.parametrize("alias", ["lite0", "lite1", "lite2"])
def test_offline_weights_load_for_every_lite_backbone(alias: str) -> None:
    model = create_model(alias, 5)
    assert model.get_classifier().out_features == 5
    # ImageNet weights, not a fresh init: the stem's batch-norm statistics are not the defaults.
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_cli_train_prints_metrics(
    color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    code = main(
        [
            "train",
            str(color_dataset),
            "-o",
            str(out),
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--threads",
            "2",
            "--no-report",
            "--no-export",  # the export after training: tests/test_pipeline.py
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "test" in printed and "bundle:" in printed
    assert load_bundle(out).manifest.metrics["test"]["top1"] == pytest.approx(1.0)


def test_cli_reports_errors_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.slow  # trains or loads backbones: seconds to minutes
def test_crop_mode_reaches_the_bundle(color_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "squash"
    args = ["train", str(color_dataset), "-o", str(out), "--image-size", "64", "--epochs", "0"]
    code = main([*args, "--crop-mode", "squash", "--threads", "2", "--no-report", "--no-export"])
    assert code == 0
    bundle = load_bundle(out)
    assert bundle.preprocess_config.crop_mode == "squash"
    assert bundle.manifest.training["crop_mode"] == "squash"


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_eval_pixels_match_serving_preprocessing(color_dataset: Path, crop_mode: str) -> None:
    from imgclf.preprocessing import PreprocessConfig, load_pixels
    from imgclf.training.images import decode_split

    config = PreprocessConfig(input_size=64, crop_mode=crop_mode)  # type: ignore[arg-type]
    paths = sorted((color_dataset / "test").glob("*/*.jpg"))[:4]
    decoded = decode_split(paths, [0] * 4, config, keep_train_images=True, workers=2)
    expected = np.stack([load_pixels(p, config) for p in paths])
    np.testing.assert_array_equal(decoded.eval_pixels, expected)
    # Crop sources are never upscaled: these 48x40 photos are kept as they are for 64 px.
    assert all(img.shape[:2] == (40, 48) for img in decoded.train_images)
    smaller = dataclasses.replace(config, input_size=32)
    decoded = decode_split(paths, [0] * 4, smaller, keep_train_images=True, workers=2)
    assert all(min(img.shape[:2]) == smaller.resize_size for img in decoded.train_images)


def test_small_photos_are_kept_as_they_are_and_read_as_serving_pixels(tmp_path: Path) -> None:
    """Photos smaller than the model input cost their own pixels, not the input's (CIFAR: 16x).

    Large and small photos mixed, with a corrupt file between them: every way of reading gives
    exactly what serving's preprocessing makes of each file, in the files' order.
    """
    from PIL import Image

    from imgclf.preprocessing import PreprocessConfig, load_pixels
    from imgclf.training.distributed import Processes, shard
    from imgclf.training.images import decode_split

    rng = np.random.default_rng(0)
    paths = []
    for index, (width, height) in enumerate([(32, 32), (90, 70), (20, 40), (64, 64), (31, 33)]):
        path = tmp_path / f"{index}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    paths.insert(2, broken)
    config = PreprocessConfig(input_size=64, crop_pct=0.875)
    decoded = decode_split(paths, range(6), config, keep_train_images=True, workers=3)

    good = [p for p in paths if p != broken]
    assert decoded.paths == good and [f for f, _ in decoded.failed] == [broken]
    assert decoded.labels.tolist() == [0, 1, 3, 4, 5]
    expected = np.stack([load_pixels(p, config) for p in good])
    pixels = decoded.eval_pixels
    assert pixels.shape == expected.shape and len(pixels) == 5
    np.testing.assert_array_equal(np.asarray(pixels), expected)
    np.testing.assert_array_equal(pixels[1:4], expected[1:4])
    np.testing.assert_array_equal(pixels[np.array([4, 1])], expected[[4, 1]])
    np.testing.assert_array_equal(pixels[[0, 2]], expected[[0, 2]])
    mask = np.array([1, 0, 1, 1, 0], dtype=bool)
    np.testing.assert_array_equal(pixels[mask], expected[mask])
    np.testing.assert_array_equal(pixels[2], expected[2])
    np.testing.assert_array_equal(pixels[:, :, ::-1], expected[:, :, ::-1])
    np.testing.assert_array_equal(pixels[3, 5], expected[3, 5])
    np.testing.assert_array_equal(pixels.subset(slice(1, None, 2))[:], expected[1::2])
    ranked = shard(pixels, Processes(rank=1, world_size=2, local_rank=1))
    np.testing.assert_array_equal(np.asarray(ranked), expected[1::2])
    # Two photos of 64x64 or more hold a row each; the three small ones their own pixels.
    assert pixels.nbytes == 2 * 64 * 64 * 3 + 3 * (32 * 32 + 20 * 40 + 31 * 33)
    # A small photo's crop source is the very array its serving pixels come from.
    small_sources = [image for image in decoded.train_images if image.size < 64 * 64 * 3]
    assert len(small_sources) == 3
    held = pixels._photos  # what the small photos' serving pixels are made from
    assert all(any(np.shares_memory(s, photo) for photo in held) for s in small_sources)
    assert pixels.emptied().shape == (0, 64, 64, 3) and pixels.emptied().nbytes == 0
    # Keys an array would read otherwise are refused, never answered wrongly.
    for key in [(Ellipsis, slice(None, None, -1)), ([0, 1], [2, 3]), None, np.zeros((2, 2), int)]:
        with pytest.raises(TypeError):
            pixels[key]  # type: ignore[index]
    with pytest.raises(TypeError):
        pixels.subset(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="copy"):
        np.asarray(pixels, copy=False)
