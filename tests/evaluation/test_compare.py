"""The paired statistics of ``imgclf evaluate --compare``, against values worked by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from imgclf.data import ImageRecord
from imgclf.errors import BundleError, DatasetError
from imgclf.evaluation.compare import (
    column_order,
    compare_predictions,
    mcnemar_exact,
    paired_bootstrap_interval,
)
from imgclf.evaluation.results import SplitPredictions


@pytest.mark.parametrize(
    ("only_this", "only_other", "expected"),
    [
        (0, 0, 1.0),  # no disagreement: no evidence either way
        (5, 5, 1.0),
        (1, 0, 1.0),  # one flip proves nothing
        (6, 0, 2 / 64),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
        (2, 10, 2 * (1 + 12 + 66) / 4096),  # two-sided: symmetric
    ],
)
def test_mcnemar_exact_is_a_fair_coin_on_the_disagreements(
    only_this: int, only_other: int, expected: float
) -> None:
    assert mcnemar_exact(only_this, only_other) == pytest.approx(expected)


def test_mcnemar_exact_handles_thousands_of_disagreements() -> None:
    p = mcnemar_exact(2600, 2400)
    # The normal approximation: z = 200 / sqrt(5000) = 2.83, two-sided p ~ 0.0047.
    assert p == pytest.approx(math.erfc(200 / math.sqrt(5000) / math.sqrt(2)), rel=0.1)


def test_paired_bootstrap_interval_brackets_the_difference_and_is_seeded() -> None:
    low, high = paired_bootstrap_interval(372, 12, 8)
    assert low < 4 / 372 < high
    # Standard error of the paired difference: sqrt(b + c - (b - c)^2 / n) / n ~ 1.2 points.
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(20 - 16 / 372) / 372, rel=0.1)
    assert paired_bootstrap_interval(372, 12, 8) == (low, high)
    assert paired_bootstrap_interval(372, 0, 0) == (0.0, 0.0)


def test_columns_are_matched_by_class_name() -> None:
    assert column_order(["a", "b", "c"], ["c", "a", "b"]) == [1, 2, 0]
    with pytest.raises(BundleError, match="in one and not the other: c, d"):
        column_order(["a", "b", "c"], ["a", "b", "d"])


def _predictions(paths: list[str], labels: list[int], predicted: list[int]) -> SplitPredictions:
    """One-hot predictions of ``predicted`` classes (of 3) for records with ``labels``."""
    records = [ImageRecord(Path(path), label) for path, label in zip(paths, labels, strict=True)]
    return SplitPredictions(records, np.eye(3, dtype=np.float32)[predicted])


def test_predictions_are_paired_by_path_and_class_name() -> None:
    # This model: classes a, b, c. The other lists them c, a, b (a 3-cycle, not its own inverse),
    # reads the images in another order, and could not read "4.jpg".
    this = _predictions(["1.jpg", "2.jpg", "3.jpg", "4.jpg"], [0, 1, 2, 0], [0, 1, 2, 1])
    order = column_order(["a", "b", "c"], ["c", "a", "b"])
    # Its columns are (c, a, b): 3.jpg predicted c (right), 1.jpg a (right), 2.jpg c (wrong).
    other = SplitPredictions(
        [
            ImageRecord(Path("3.jpg"), 2),
            ImageRecord(Path("1.jpg"), 0),
            ImageRecord(Path("2.jpg"), 1),
        ],
        np.eye(3, dtype=np.float32)[[0, 1, 0]],
    )
    result = compare_predictions(this, other, order, "test")
    assert result.count == 3  # 4.jpg only one model read
    assert (result.top1, result.other_top1) == (1.0, pytest.approx(2 / 3))
    assert (result.only_this, result.only_other) == (1, 0)


def test_no_image_in_common_is_an_error() -> None:
    this = _predictions(["1.jpg"], [0], [0])
    other = _predictions(["2.jpg"], [0], [0])
    with pytest.raises(DatasetError, match="no image was read by both models"):
        compare_predictions(this, other, [0, 1, 2], "test")
