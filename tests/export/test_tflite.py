"""TFLite export through litert-torch, run by the LiteRT interpreter.

litert-torch pins older pydantic, typing-extensions and anyio than the serving stack uses, so it is
installed in its own environment (``pip install 'imgclf[tflite]'``); without it the export test is
skipped and only the clear "install the extra" error is checked.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from imgclf.bundle import load_bundle
from imgclf.errors import ConfigError
from imgclf.export.api import export_bundle
from imgclf.inference import Predictor

LABELS = ["blue", "green", "red"]  # the fixture bundle's classes


def test_missing_extra_is_a_clear_error(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "litert_torch" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"imgclf\[tflite\]'\); missing: litert_torch"):
        export_bundle(tiny_bundle, "tflite")


@pytest.mark.slow
def test_tflite_round_trip(torch_bundle: Path, colour_data: Path) -> None:
    pytest.importorskip(
        "litert_torch",
        reason="litert-torch (the 'tflite' extra) is not installed in this environment",
    )
    pytest.importorskip("ai_edge_litert")
    export_bundle(torch_bundle, "tflite", data=colour_data, parity_images=9)
    info = load_bundle(torch_bundle).manifest.artifacts["tflite"]
    assert info.format == "tflite"
    assert info.details["parity"]["passed"] is True
    assert info.details["parity"]["images_from"].startswith("validation split")
    predictor = Predictor.from_bundle(torch_bundle, artifact="tflite", threads=1)
    paths = [sorted((colour_data / "test" / label).iterdir())[0] for label in LABELS]
    assert [p.label for p in predictor.predict_batch(paths)] == LABELS  # batch of 3
    assert predictor.predict(paths[0]).label == LABELS[0]  # back to a batch of 1
    probs = predictor.run(np.zeros((5, 3, 64, 64), np.float32))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
