"""The shipped clothing model on the real clothing-small test split (skipped when absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgclf.bundle import MANIFEST_NAME, default_bundle_path, load_bundle
from imgclf.evaluation.runner import evaluate_bundle
from imgtools import clothing_dir

CLOTHING = clothing_dir()


@pytest.mark.slow
@pytest.mark.skipif(not (CLOTHING / "test").is_dir(), reason="clothing-small dataset not found")
@pytest.mark.skipif(
    not (default_bundle_path() / MANIFEST_NAME).is_file(), reason="bundled model not built yet"
)
def test_bundled_model_on_the_clothing_test_split(tmp_path: Path) -> None:
    manifest = load_bundle(None, verify=False).manifest
    recorded = manifest.metrics.get("test", {}).get("top1")
    # Metrics are the trained fp32 network's; an int8 artifact is held to within one point.
    int8 = any(info.precision == "int8" for info in manifest.artifacts.values())
    tolerance = 0.01 if int8 else 0.002

    results = evaluate_bundle(None, CLOTHING, splits=["test"], out_dir=tmp_path)

    test = results["test"]
    assert test.count >= 370
    assert test.top1 > 0.85
    if recorded is not None:  # the shipped artifact reproduces what training measured
        assert test.top1 == pytest.approx(recorded, abs=tolerance)
    assert test.top3 >= test.top1
    assert all(item.support > 0 for item in test.per_class)
    document = json.loads((tmp_path / "evaluation.json").read_text())
    assert document["splits"]["test"]["top1"] == test.top1
    wrong = test.count - round(test.top1 * test.count)
    assert len(document["mistakes"]["test"]) == min(24, wrong)
