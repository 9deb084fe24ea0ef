"""The export format table: lookups, option validation and the CLI built from it (no torch run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclf.cli import main
from imgclf.errors import ConfigError
from imgclf.export.api import export_bundle
from imgclf.export.formats import FORMATS, OPTIONS, check_options, get_format


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_every_row_is_complete(fmt: object) -> None:
    row = get_format(fmt.name)  # type: ignore[attr-defined]
    assert row.options, "every format accepts at least one option"
    assert set(row.options) <= set(OPTIONS)
    module, function = row.exporter.split(":")
    assert module.startswith("imgclf.export.") and function
    if row.artifact is not None:
        assert row.suffix


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown export format 'saved_model'.*onnx-int8"):
        get_format("saved_model")


def test_option_not_accepted_names_accepted_ones() -> None:
    with pytest.raises(ConfigError) as info:
        check_options(FORMATS["onnx"], {"max_drop": 0.5, "opset": 17})
    message = str(info.value)
    assert "format 'onnx' does not accept --max-drop" in message
    assert "--opset" in message and "--data" in message


def test_completely_unknown_option() -> None:
    with pytest.raises(ConfigError, match="'half'"):
        check_options(FORMATS["onnx"], {"half": True})


def test_choices_are_checked() -> None:
    with pytest.raises(ConfigError, match="--calibration-method must be one of"):
        check_options(FORMATS["onnx-int8"], {"calibration_method": "kl"})
    check_options(FORMATS["onnx-int8"], {"calibration_method": "entropy", "max_drop": 0.5})


def test_option_is_refused_before_the_bundle_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tflite' does not accept --opset"):
        export_bundle(tmp_path / "no-such-bundle", "tflite", opset=17)


def test_cli_refuses_an_option_the_format_does_not_take(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["export", str(tiny_bundle), "--format", "onnx", "--calibration-images", "10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "does not accept --calibration-images" in err


def test_cli_help_lists_formats_and_their_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    out = capsys.readouterr().out
    for name in FORMATS:
        assert name in out
    assert "--max-drop" in out


def test_bundle_without_pytorch_weights(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    code = main(["export", str(tiny_bundle), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2
    assert "has no PyTorch weights (model.pt)" in err


def test_missing_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    code = main(["export", str(tmp_path / "missing"), "--format", "onnx"])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
