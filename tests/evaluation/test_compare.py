"""The paired statistics of ``imgclf evaluate --compare``, against values worked by hand."""

from __future__ import annotations

import math

import pytest

from imgclf.errors import BundleError
from imgclf.evaluation.compare import column_order, mcnemar_exact, paired_bootstrap_interval


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
