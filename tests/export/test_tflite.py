"""TFLite export through litert-torch, run by the LiteRT interpreter.

litert-torch pins older pydantic, typing-extensions and anyio than the serving stack uses, so it is
installed in its own environment (``pip install 'imgclf[train,tflite]'``, no serving extras;
``make test-tflite`` builds it and runs this file there). Without it the round trip is skipped and
only the clear "install the extra" error is checked; with ``IMGCLF_REQUIRE_TFLITE=1`` (set by
``make test-tflite``) a missing extra fails the round trip instead of skipping it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from imgclf.bundle import load_bundle
from imgclf.cli import main
from imgclf.errors import ConfigError
from imgclf.export.api import export_bundle
from imgclf.inference import Predictor

LABELS = ["blue", "green", "red"]  # the fixture bundle's classes


def test_missing_extra_is_a_clear_error(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "litert_torch" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"imgclf\[train,tflite\]'\); missing: litert_torch"):
        export_bundle(tiny_bundle, "tflite")


def require_tflite_extra() -> None:
    """Skip without the tflite extra, or fail when ``IMGCLF_REQUIRE_TFLITE=1`` says it is there."""
    missing = [m for m in ("litert_torch", "ai_edge_litert") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"the 'tflite' extra is not installed here (missing: {', '.join(missing)})"
    if os.environ.get("IMGCLF_REQUIRE_TFLITE") == "1":
        pytest.fail(f"IMGCLF_REQUIRE_TFLITE=1 but {message}")
    pytest.skip(message)


@pytest.mark.slow
def test_tflite_round_trip(
    torch_bundle: Path, colour_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tflite_extra()
    # Through the command line: it must work in an environment without the serving extras.
    argv = ["export", str(torch_bundle), "--format", "tflite", "--data", str(colour_data)]
    assert main([*argv, "--parity-images", "9"]) == 0
    assert "model.tflite" in capsys.readouterr().out
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
