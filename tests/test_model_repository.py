"""The repository contract: parameters written by the export are read back by serving."""

from __future__ import annotations

import json

import pytest

from imgclf.errors import ConfigError
from imgclf.model_repository import (
    LABELS_PARAMETER,
    PREPROCESSING_PARAMETER,
    config_parameters,
    read_parameters,
)
from imgclf.preprocessing import PreprocessConfig


def test_parameters_round_trip() -> None:
    config = PreprocessConfig(input_size=96, crop_pct=0.9, mean=(0.1, 0.2, 0.3))
    params = config_parameters(["shirt", "ünïcode"], config)
    assert set(params) == {LABELS_PARAMETER, PREPROCESSING_PARAMETER}
    assert all(isinstance(value, str) for value in params.values())  # config.pbtxt strings
    assert read_parameters(params) == (["shirt", "ünïcode"], config)


def test_absent_parameters_are_none_and_bad_ones_are_refused() -> None:
    assert read_parameters({}) == (None, None)
    with pytest.raises(ConfigError, match="unknown preprocessing keys"):
        read_parameters({PREPROCESSING_PARAMETER: json.dumps({"size": 3})})
