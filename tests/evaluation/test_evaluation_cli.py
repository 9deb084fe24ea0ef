"""``imgclf evaluate`` end to end: real bundles, generated colour datasets, real reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclf.cli import main
from imgclf.data import ImageRecord, load_dataset, load_folder
from imgclf.evaluation.cli import default_out_dir
from imgclf.evaluation.runner import evaluate_bundle, predict_records
from imgtools import COLORS, make_image, write_color_dataset


def _evaluate(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["evaluate", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _document(out: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((out / "evaluation.json").read_text())


@pytest.mark.slow
def test_all_splits_of_a_dataset(
    tiny_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    history = [
        {
            "epoch": 1,
            "stage": "head",
            "train_loss": 0.5,
            "train_acc": 0.9,
            "val_loss": 0.4,
            "val_acc": 0.95,
            "lr": 0.01,
            "seconds": 1.0,
        }
    ]
    (tiny_bundle / "history.json").write_text(json.dumps(history))

    code, stdout, _ = _evaluate(
        capsys, str(tiny_bundle), "--data", str(color_dataset), "--split", "all", "--out", str(out)
    )

    assert code == 0
    lines = stdout.splitlines()
    assert lines[0].split() == [
        "split",
        "images",
        "top1",
        "95%",
        "CI",
        "top3",
        "loss",
        "macro",
        "F1",
    ]
    assert [line.split()[:4] for line in lines[1:4]] == [
        ["train", "36", "100.00%", "90.4%-100.0%"],
        ["validation", "36", "100.00%", "90.4%-100.0%"],
        ["test", "36", "100.00%", "90.4%-100.0%"],
    ]
    assert "artifact: onnx" in stdout
    assert f"report: {out / 'report.html'}" in stdout
    document = _document(out)
    assert list(document["splits"]) == ["train", "validation", "test"]
    assert all(split["top1"] == 1.0 for split in document["splits"].values())
    assert document["splits"]["test"]["per_class"]["red"]["support"] == 12
    assert {(g["from"], g["to"]) for g in document["gaps"]} == {
        ("train", "validation"),
        ("train", "test"),
        ("validation", "test"),
    }
    assert (out / "training_curves.png").is_file()
    assert (out / "confusion_validation.png").is_file()


def test_mistakes_and_unreadable_files_are_reported(
    tiny_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test_dir = color_dataset / "test"
    make_image(COLORS["blue"], seed=7).save(test_dir / "red" / "mislabelled.jpg")
    (test_dir / "green" / "truncated.jpg").write_bytes(
        (test_dir / "green" / "green_000.jpg").read_bytes()[:100]
    )
    (test_dir / "red" / "notes.txt").write_text("not an image")
    out = tmp_path / "report"

    code, stdout, _ = _evaluate(
        capsys, str(tiny_bundle), "--data", str(color_dataset), "--out", str(out)
    )

    assert code == 0
    assert stdout.splitlines()[1].split()[:3] == ["test", "37", "97.30%"]
    assert "skipped 2 unreadable or non-image files" in stdout
    document = _document(out)
    (mistake,) = document["mistakes"]["test"]
    assert (mistake["true"], mistake["predicted"]) == ("red", "blue")
    assert mistake["path"].endswith("mislabelled.jpg")
    assert mistake["probability"] > 0.9
    skipped = {Path(item["path"]).name: item["reason"] for item in document["skipped_files"]}
    assert set(skipped) == {"truncated.jpg", "notes.txt"}
    assert "corrupt or truncated" in skipped["truncated.jpg"]
    assert document["splits"]["test"]["confusion_matrix"][0] == [12, 0, 1]
    html = (out / "report.html").read_text()
    assert 'src="mistakes/test/01.jpg"' in html and "truncated.jpg" in html


def test_plain_folder_of_class_folders_is_one_split(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = write_color_dataset(tmp_path / "photos", per_class=4, splits=("",))
    shutil.rmtree(photos / "green")  # a folder may hold only some of the model's classes
    out = tmp_path / "report"

    code, stdout, _ = _evaluate(capsys, str(tiny_bundle), "--data", str(photos), "--out", str(out))

    assert code == 0
    assert stdout.splitlines()[1].split()[:3] == ["photos", "8", "100.00%"]
    split = _document(out)["splits"]["photos"]
    assert split["per_class"]["green"]["support"] == 0
    assert split["macro_f1"] == 1.0  # green is absent and not counted against the model


def test_other_folder_by_name(
    tiny_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_color_dataset(color_dataset, per_class=2, splits=("holdout",))

    argv = ["--split", "holdout,Test", "--out", str(tmp_path / "r"), "--gallery-size", "0"]
    code, stdout, _ = _evaluate(capsys, str(tiny_bundle), "--data", str(color_dataset), *argv)

    assert code == 0
    rows = [line.split()[:2] for line in stdout.splitlines()[1:3]]
    assert rows == [["test", "36"], ["holdout", "6"]]


@pytest.mark.parametrize(
    "case",
    [
        ("unknown-class", [], "not among the known classes"),
        ("plain", ["--split", "validation,holdout"], "has no validation, holdout split"),
        ("dataset", ["--split", "nope"], "has no nope split"),
        ("dataset", ["--artifact", "onnx-int8"], "no 'onnx-int8' artifact"),
        ("missing", [], "not a folder"),
    ],
    ids=["unknown-class", "plain-folder-split", "missing-split", "missing-artifact", "no-data"],
)
def test_unusable_input_fails_with_a_clear_error(
    tiny_bundle: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: tuple[str, list[str], str],
) -> None:
    setup, argv, message = case
    data = tmp_path / "data"
    if setup == "unknown-class":
        write_color_dataset(data, per_class=2, splits=("",))
        (data / "purple").mkdir()
        make_image((120, 0, 120)).save(data / "purple" / "p.jpg")
    elif setup == "plain":
        write_color_dataset(data, per_class=2, splits=("",))
    elif setup == "dataset":
        write_color_dataset(data, per_class=2)

    code, _, stderr = _evaluate(capsys, str(tiny_bundle), "--data", str(data), *argv)

    assert code == 2
    assert stderr.startswith("imgclf evaluate: error:")
    assert message in stderr


def test_carved_split_of_a_one_folder_dataset_matches_training(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    data = write_color_dataset(tmp_path / "flat", per_class=20, splits=("",))
    expected = load_dataset(data, seed=0, check_images=False).splits["test"]

    results = evaluate_bundle(tiny_bundle, data, splits=["test"], out_dir=tmp_path / "r")

    assert results["test"].count == len(expected) > 0
    notes = _document(tmp_path / "r")["data"]["notes"]
    assert "re-created the seeded stratified split" in notes[0]


def test_validation_carved_from_train_like_training(tiny_bundle: Path, tmp_path: Path) -> None:
    from imgclf.bundle import load_bundle
    from imgclf.evaluation.runner import run_evaluation

    bundle = load_bundle(tiny_bundle)
    bundle.manifest.training = {"seed": 3, "val_fraction": 0.2}
    bundle.save()
    data = write_color_dataset(tmp_path / "ds", per_class=10, splits=("train", "test"))
    expected = load_dataset(data, seed=3, val_fraction=0.2, check_images=False).splits

    run = run_evaluation(
        tiny_bundle, data, splits=["train", "validation"], out_dir=tmp_path / "r", gallery_size=0
    )

    assert list(run.results) == ["train", "validation"]
    assert len(expected["validation"]) == 6
    for split in ("train", "validation"):
        assert {r.path for r in run.predictions[split].records} == {r.path for r in expected[split]}


def test_predict_records_marks_unreadable_rows(tiny_bundle: Path, tmp_path: Path) -> None:
    good = tmp_path / "green.png"
    make_image(COLORS["green"]).save(good)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    records = [ImageRecord(good, 1), ImageRecord(bad, 0), ImageRecord(good, 1)]

    probs = predict_records(tiny_bundle, records, batch_size=2)

    assert probs.shape == (3, 3)
    assert np.isnan(probs[1]).all()
    assert probs[[0, 2]].argmax(axis=1).tolist() == [1, 1]
    np.testing.assert_allclose(probs[[0, 2]].sum(axis=1), 1.0, rtol=1e-5)


def test_report_goes_next_to_the_bundle_by_default(
    tiny_bundle: Path, color_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data", str(color_dataset / "test"), "--gallery-size", "0"]
    code, stdout, _ = _evaluate(capsys, str(tiny_bundle / "manifest.json"), *argv)

    assert code == 0
    assert f"report: {tiny_bundle / 'evaluation' / 'report.html'}" in stdout
    assert (tiny_bundle / "evaluation" / "evaluation.json").is_file()
    assert default_out_dir(None, "clothing") == Path("evaluation-clothing")


@pytest.fixture
def torch_bundle(tmp_path: Path) -> Path:
    """A bundle holding only PyTorch weights: an untrained Lite0 with a 3-class head, 32 px."""
    torch = pytest.importorskip("torch")
    from imgclf.backbones import create_model
    from imgclf.bundle import Bundle, Manifest
    from imgclf.preprocessing import PreprocessConfig

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", 3, pretrained=False)
    root = tmp_path / "torch-bundle"
    root.mkdir()
    torch.save(model.state_dict(), root / "model.pt")
    manifest = Manifest(
        name="colors-torch",
        backbone="tf_efficientnet_lite0",
        labels=list(COLORS),
        preprocessing=PreprocessConfig(input_size=32, crop_pct=1.0).to_dict(),
        training={"model_kwargs": {}},
    )
    Bundle(root=root, manifest=manifest).add_artifact(
        "pytorch", root / "model.pt", format="pytorch"
    )
    return root


@pytest.mark.slow
def test_pytorch_bundle_end_to_end(
    torch_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from imgclf.backbones import load_torch_model
    from imgclf.bundle import load_bundle
    from imgclf.evaluation.metrics import compute_metrics
    from imgclf.preprocessing import preprocess_batch

    out = tmp_path / "report"
    argv = ["--data", str(color_dataset), "--out", str(out), "--batch-size", "5"]
    code, stdout, _ = _evaluate(capsys, str(torch_bundle), *argv)

    assert code == 0
    assert "artifact: pytorch" in stdout  # auto falls back to the weights without an export
    bundle = load_bundle(torch_bundle)
    records, _ = load_folder(color_dataset / "test", bundle.labels)  # labels in model order
    config = bundle.preprocess_config
    with torch.inference_mode():
        batch = torch.from_numpy(preprocess_batch([r.path for r in records], config))
        expected = torch.softmax(load_torch_model(bundle)(batch), dim=1).numpy()
    probs = predict_records(bundle, records, artifact="pytorch", batch_size=7)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    reference = compute_metrics(expected, np.array([r.label for r in records]), bundle.labels)
    split = _document(out)["splits"]["test"]
    assert split["count"] == 36
    # An untrained model's probabilities are nearly tied, so compare the continuous loss; the
    # argmax may flip on float noise between batch sizes.
    assert split["loss"] == pytest.approx(reference.loss, rel=1e-4)
    assert split["top1"] == pytest.approx(np.trace(split["confusion_matrix"]) / 36)


def test_records_passed_in_directly(tiny_bundle: Path, tmp_path: Path) -> None:
    from imgclf.errors import DatasetError

    blue = tmp_path / "blue.png"
    make_image(COLORS["blue"]).save(blue)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")

    results = evaluate_bundle(
        tiny_bundle,
        {"mine": [ImageRecord(blue, 2), ImageRecord(bad, 0)]},
        out_dir=tmp_path / "r",
        gallery_size=0,
    )

    assert (results["mine"].count, results["mine"].top1) == (1, 1.0)
    with pytest.raises(DatasetError, match="none of its 1 images could be read"):
        evaluate_bundle(tiny_bundle, {"t": [ImageRecord(bad, 0)]}, out_dir=tmp_path / "r")
    with pytest.raises(DatasetError, match=r"labels outside 0\.\.2"):
        evaluate_bundle(tiny_bundle, {"t": [ImageRecord(blue, 5)]}, out_dir=tmp_path / "r")
    with pytest.raises(DatasetError, match="has no images"):
        evaluate_bundle(tiny_bundle, {"t": []}, out_dir=tmp_path / "r")


@pytest.mark.slow
def test_exported_onnx_evaluates_like_the_pytorch_weights(
    torch_bundle: Path, color_dataset: Path, tmp_path: Path
) -> None:
    from imgclf.export.api import export_bundle

    export_bundle(torch_bundle, "onnx")
    records, _ = load_folder(color_dataset / "test", list(COLORS))

    from_torch = predict_records(torch_bundle, records, artifact="pytorch")
    from_onnx = predict_records(torch_bundle, records)  # auto now prefers the export

    np.testing.assert_allclose(from_onnx, from_torch, atol=1e-4)
    run_dir = tmp_path / "r"
    results = evaluate_bundle(torch_bundle, color_dataset, out_dir=run_dir, gallery_size=0)
    assert _document(run_dir)["model"]["artifact"] == "onnx"
    assert results["test"].count == len(records)


@pytest.mark.parametrize("option", [["--gallery-size", "-1"], ["--batch-size", "0"]])
def test_bad_numbers_are_usage_errors(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str], option: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_bundle), "--data", str(tiny_bundle), *option])

    assert exit_info.value.code == 2
    assert "must be" in capsys.readouterr().err


def _relabelled_copy(bundle: Path, root: Path, labels: list[str]) -> Path:
    """The same model under other class names (so it is wrong wherever a name moved)."""
    copy = shutil.copytree(bundle, root)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["labels"] = labels
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_compare_pairs_two_models_on_the_same_images(
    tiny_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Red and blue swap names: the other model is right on the 12 green test photos only.
    swapped = _relabelled_copy(tiny_bundle, tmp_path / "swapped", ["blue", "green", "red"])
    out = tmp_path / "report"
    argv = ["--data", str(color_dataset), "--out", str(out), "--compare", str(swapped)]

    code, stdout, _ = _evaluate(capsys, str(tiny_bundle), *argv)

    assert code == 0
    line = stdout.splitlines()[-1]
    assert line.startswith("  test: 36 images, 100.00% vs colors 33.33%: +66.67 points")
    assert "right only here 24, only there 0; McNemar p = 1.19e-07" in line
    document = json.loads((out / "comparison.json").read_text())
    (split,) = document["splits"]
    assert (split["only_this"], split["only_other"], split["count"]) == (24, 0, 36)
    assert split["mcnemar_p"] == pytest.approx(2 / 2**24)
    low, high = split["difference_ci95"]
    assert 0.45 < low < 2 / 3 < high <= 0.85
    assert document["other"]["root"] == str(swapped)

    # The same model twice: no difference, no evidence either way.
    same = tmp_path / "same"
    shutil.copytree(tiny_bundle, same)
    code, stdout, _ = _evaluate(capsys, str(tiny_bundle), *argv[:-1], str(same))
    assert code == 0
    assert "+0.00 points" in stdout and "McNemar p = 1" in stdout and "warning" not in stdout


def test_compare_warns_when_the_other_model_was_trained_on_another_carving(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = write_color_dataset(tmp_path / "photos", per_class=10, splits=("",))
    other = shutil.copytree(tiny_bundle, tmp_path / "other")
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["training"] = {"seed": 1}
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "r"
    argv = ["--data", str(photos), "--split", "test", "--out", str(out), "--compare", str(other)]

    code, stdout, _ = _evaluate(capsys, str(tiny_bundle), *argv)

    assert code == 0
    assert "warning: the splits were carved with {'seed': 0," in stdout
    assert "trained on a split carved with {'seed': 1," in stdout
    (warning,) = json.loads((out / "comparison.json").read_text())["warnings"]
    assert "may be in its training data" in warning


def test_compare_refuses_models_of_other_classes(
    tiny_bundle: Path, color_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _relabelled_copy(tiny_bundle, tmp_path / "other", ["red", "green", "yellow"])
    argv = ["--data", str(color_dataset), "--out", str(tmp_path / "r"), "--compare", str(other)]

    code, _, stderr = _evaluate(capsys, str(tiny_bundle), *argv)

    assert code != 0
    assert "cannot compare models with different classes" in stderr
    assert "blue, yellow" in stderr
    assert not (tmp_path / "r").exists()  # refused before the first model ran
