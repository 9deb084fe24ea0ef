"""``imgclf data inspect``: the table, the JSON and the exit codes people and scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imgclf.cli import main
from imgtools import write_color_dataset


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = write_color_dataset(tmp_path / "colors", per_class=4)
    for index in range(4):  # red: 8 train images, green and blue 4: imbalance 2.00
        source = root / "train" / "red" / f"red_{index:03d}.jpg"
        (root / "train" / "red" / f"extra_{index}.jpg").write_bytes(source.read_bytes())
    (root / "test" / "blue" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 nope")
    return root


def test_inspect_prints_a_table(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(dataset)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["dataset", str(dataset.resolve())]
    assert "classes   3: blue, green, red" in lines
    assert ["class", "train", "validation", "test"] in [line.split() for line in lines]
    assert ["red", "8", "4", "4"] in [line.split() for line in lines]
    assert ["blue", "4", "4", "4"] in [line.split() for line in lines]
    assert ["total", "16", "12", "12"] in [line.split() for line in lines]
    assert ["imbalance", "2.00", "1.00", "1.00"] in [line.split() for line in lines]
    assert "problems  1 files skipped:" in lines
    problem = lines[lines.index("problems  1 files skipped:") + 1]
    assert problem.startswith("  test/blue/broken.jpg: ")
    assert "skipping" not in captured.err  # the report lists problems; no duplicate warnings
    assert (
        "duplicates 4 groups of identical files (0 across splits, 0 with different classes):"
        in (lines)
    )
    assert "  train/red/extra_0.jpg (train) = train/red/red_000.jpg (train)" in lines


def test_inspect_json(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(dataset), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["root"] == str(dataset.resolve())
    assert report["classes"] == ["blue", "green", "red"]
    assert report["splits"] == {"train": 16, "validation": 12, "test": 12}
    assert report["counts"]["train"] == {"blue": 4, "green": 4, "red": 8}
    assert report["imbalance"] == {"train": 2.0, "validation": 1.0, "test": 1.0}
    assert report["carved"] == []
    [problem] = report["problems"]
    assert problem["path"] == "test/blue/broken.jpg"
    assert problem["split"] == "test"
    assert "corrupt" in problem["reason"] or "truncated" in problem["reason"]
    assert len(report["duplicates"]) == 4
    assert report["duplicates"][0] == {
        "paths": ["train/red/extra_0.jpg", "train/red/red_000.jpg"],
        "files": [
            {"path": "train/red/extra_0.jpg", "split": "train", "class": "red"},
            {"path": "train/red/red_000.jpg", "split": "train", "class": "red"},
        ],
        "splits": ["train"],
        "classes": ["red"],
        "across_splits": False,
        "conflicting_labels": False,
    }


def test_leaked_and_mislabelled_copies_are_flagged(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaked = (dataset / "test" / "green" / "green_002.jpg").read_bytes()
    (dataset / "train" / "blue" / "copy.jpg").write_bytes(leaked)
    assert main(["data", "inspect", str(dataset), "--json", "--no-check"]) == 0
    groups = json.loads(capsys.readouterr().out)["duplicates"]
    [leak] = [group for group in groups if group["across_splits"]]
    assert leak == {
        "paths": ["test/green/green_002.jpg", "train/blue/copy.jpg"],
        "files": [
            {"path": "test/green/green_002.jpg", "split": "test", "class": "green"},
            {"path": "train/blue/copy.jpg", "split": "train", "class": "blue"},
        ],
        "splits": ["test", "train"],
        "classes": ["blue", "green"],
        "across_splits": True,
        "conflicting_labels": True,
    }
    assert main(["data", "inspect", str(dataset), "--no-check"]) == 0
    out = capsys.readouterr().out
    assert "(1 across splits, 1 with different classes)" in out
    assert (
        "  test/green/green_002.jpg (test) = train/blue/copy.jpg (train)  "
        "[across splits, different classes]" in out.splitlines()
    )
    assert main(["data", "inspect", str(dataset), "--no-check", "--strict"]) == 1
    capsys.readouterr()
    assert main(["data", "inspect", str(dataset), "--no-duplicates", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] is None


def test_inspect_single_folder_shows_the_carved_splits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_color_dataset(tmp_path / "flat", per_class=10, splits=("",))
    args = ["data", "inspect", str(root), "--val-fraction", "0.2", "--test-fraction", "0.3"]
    assert main([*args, "--seed", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"] == {"train": 15, "validation": 6, "test": 9}
    assert report["carved"] == ["validation", "test"]
    assert main(args) == 0
    assert "validation, test made by a seeded stratified split" in capsys.readouterr().out


def test_duplicates_name_the_carved_split_of_each_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation carved from train/: a copy across it is a leak the paths alone do not show."""
    root = write_color_dataset(tmp_path / "two", per_class=10, splits=("train", "test"))
    red = root / "train" / "red"
    for index in range(10):  # every red image twice: some pairs straddle train and validation
        (red / f"copy_{index}.jpg").write_bytes((red / f"red_{index:03d}.jpg").read_bytes())
    assert main(["data", "inspect", str(root), "--no-check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["carved"] == ["validation"]
    leaks = [group for group in report["duplicates"] if group["across_splits"]]
    assert leaks, "the seeded split should put some pair on both sides"
    [validation] = [f for f in leaks[0]["files"] if f["split"] == "validation"]
    assert validation["path"].startswith("train/red/")
    assert main(["data", "inspect", str(root), "--no-check"]) == 0
    out = capsys.readouterr().out.splitlines()
    expected = f"{validation['path']} (validation, carved)"
    assert any(expected in line and line.endswith("[across splits]") for line in out), out


def test_strict_fails_on_problems(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(dataset), "--strict"]) == 1
    (dataset / "test" / "blue" / "broken.jpg").unlink()
    assert main(["data", "inspect", str(dataset), "--strict"]) == 0


def test_no_check_skips_decoding(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(dataset), "--no-check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == []
    assert report["splits"]["test"] == 13


def test_inspect_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("imgclf data: error: ")
    assert "not a folder" in err
    with pytest.raises(SystemExit):
        main(["data", "inspect", str(tmp_path), "--val-fraction", "1.5"])


def test_data_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 2
    out = capsys.readouterr().out
    assert "inspect" in out
    assert "download" in out


@pytest.mark.slow
def test_console_entry_point(dataset: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "imgclf", "data", "inspect", str(dataset), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["splits"]["train"] == 16
