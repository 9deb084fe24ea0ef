"""The int8 accuracy gate: a model losing more than ``max_drop`` points is refused unless forced."""

from __future__ import annotations

import logging

import pytest

from imgclf.errors import ExportError
from imgclf.export.quantize import _check_drop


def metrics(fp32: float, int8: float) -> dict[str, float]:
    return {"val_top1_fp32": fp32, "val_top1_int8": int8, "val_top1_drop": fp32 - int8}


@pytest.mark.parametrize(("fp32", "int8"), [(91.0, 91.0), (91.0, 90.0), (90.0, 91.5)])
def test_drops_within_the_limit_pass(fp32: float, int8: float) -> None:
    _check_drop(metrics(fp32, int8), max_drop=1.0, force=False)


def test_drop_over_the_limit_is_refused_with_numbers_and_remedies() -> None:
    with pytest.raises(ExportError) as info:
        _check_drop(metrics(91.2, 88.9), max_drop=1.0, force=False)
    message = str(info.value)
    assert "fp32 91.20%, int8 88.90% (drop 2.30 points, limit 1.00)" in message
    assert "--calibration-images" in message and "--force" in message


def test_tiny_threshold_refuses_any_loss() -> None:
    with pytest.raises(ExportError, match=r"limit 0\.00"):
        _check_drop(metrics(90.0, 89.7), max_drop=0.0, force=False)


def test_force_keeps_the_model_but_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="imgclf.export.quantize"):
        _check_drop(metrics(91.2, 80.0), max_drop=1.0, force=True)
    assert "--force" in caplog.text
