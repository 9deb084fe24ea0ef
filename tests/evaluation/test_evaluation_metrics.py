"""Metrics against small cases computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from imgclf.errors import ConfigError
from imgclf.evaluation.metrics import LOSS_EPSILON, compute_metrics, top_k_accuracy, wilson_interval

NAMES = ["a", "b", "c"]
# Class "c" is never predicted; rows 4 and 5 have ties that exercise the tie rule.
PROBS = np.array(
    [
        [0.7, 0.2, 0.1],  # a -> a
        [0.2, 0.5, 0.3],  # a -> b
        [0.1, 0.8, 0.1],  # b -> b
        [0.6, 0.3, 0.1],  # b -> a
        [0.3, 0.4, 0.3],  # c -> b
        [0.5, 0.25, 0.25],  # c -> a
    ]
)
LABELS = np.array([0, 0, 1, 1, 2, 2])


def test_hand_computed_case_with_a_class_never_predicted() -> None:
    metrics = compute_metrics(PROBS, LABELS, NAMES)

    assert metrics.count == 6
    assert metrics.top1 == pytest.approx(2 / 6)
    assert metrics.top3 == pytest.approx(1.0)  # 3 classes: top-3 always hits
    assert metrics.top_k == 3
    expected_loss = -np.mean(np.log([0.7, 0.2, 0.8, 0.3, 0.3, 0.25]))
    assert metrics.loss == pytest.approx(expected_loss)
    np.testing.assert_array_equal(metrics.confusion, [[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    a, b, c = metrics.per_class
    assert (a.precision, a.recall, a.f1) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert (b.precision, b.recall, b.f1) == pytest.approx((1 / 3, 1 / 2, 0.4))
    assert (c.precision, c.recall, c.f1, c.support, c.predicted) == (0.0, 0.0, 0.0, 2, 0)
    assert metrics.macro_f1 == pytest.approx(0.8 / 3)
    assert metrics.weighted_f1 == pytest.approx(0.8 / 3)
    assert metrics.macro_precision == pytest.approx(2 / 9)
    assert metrics.macro_recall == pytest.approx(1 / 3)


def test_top_k_ranks_ties_by_class_order() -> None:
    # Top-2 hits rows 0, 2, 3; row 1's true class is third; rows 4, 5 lose their ties.
    assert top_k_accuracy(PROBS, LABELS, 2) == pytest.approx(0.5)
    assert top_k_accuracy(PROBS, LABELS, 1) == pytest.approx(2 / 6)


def test_top3_is_capped_at_the_number_of_classes() -> None:
    metrics = compute_metrics(np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([0, 0]), ["x", "y"])

    assert metrics.top1 == pytest.approx(0.5)
    assert metrics.top3 == pytest.approx(1.0)
    assert metrics.top_k == 2


def test_macro_average_skips_classes_absent_from_labels_and_predictions() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3]])
    metrics = compute_metrics(probs, np.array([0, 0, 0, 0]), NAMES)

    # Class a: precision 1, recall 0.5, F1 2/3; class b: predicted twice, never right: F1 0.
    # Class c is neither present nor predicted and does not drag the average down.
    assert metrics.macro_f1 == pytest.approx(1 / 3)
    assert metrics.weighted_f1 == pytest.approx(2 / 3)
    assert metrics.per_class[2].support == 0


def test_loss_is_clipped_for_zero_probability() -> None:
    metrics = compute_metrics(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1, 1]), ["x", "y"])

    assert metrics.loss == pytest.approx(-math.log(LOSS_EPSILON) / 2)
    assert math.isfinite(metrics.loss)


def test_perfect_predictions() -> None:
    probs = np.eye(3)[[0, 1, 2, 2]]
    metrics = compute_metrics(probs, np.array([0, 1, 2, 2]), NAMES)

    assert (metrics.top1, metrics.macro_f1, metrics.weighted_f1) == (1.0, 1.0, 1.0)
    assert metrics.loss == pytest.approx(0.0, abs=1e-12)


def test_summary_and_dict_are_json_friendly() -> None:
    metrics = compute_metrics(PROBS, LABELS, NAMES)

    assert set(metrics.summary()) == {
        "top1",
        "top1_ci95_low",
        "top1_ci95_high",
        "top3",
        "loss",
        "macro_f1",
    }
    correct = round(metrics.top1 * len(LABELS))
    assert metrics.to_dict()["top1_ci95"] == list(wilson_interval(correct, len(LABELS)))
    data = json.loads(json.dumps(metrics.to_dict()))
    assert data["confusion_matrix"] == [[1, 1, 0], [1, 1, 0], [1, 1, 0]]
    assert data["per_class"]["c"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 2,
        "predicted": 0,
    }
    assert data["labels"] == NAMES
    assert data["top1"] == pytest.approx(2 / 6)


@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        (np.ones((2, 2)) / 2, np.array([0, 1]), "shape \\(N, 3\\)"),
        (np.ones((2, 3)) / 3, np.array([0, 1, 2]), "labels must have shape"),
        (np.ones((0, 3)), np.zeros(0, dtype=int), "no predictions"),
        (np.ones((2, 3)) / 3, np.array([0, 3]), "labels must be in"),
        (np.ones((2, 3)) / 3, np.array([0.0, 1.0]), "integer class indices"),
        (np.full((2, 3), np.nan), np.array([0, 1]), "NaN"),
    ],
)
def test_bad_input_is_refused_with_a_reason(
    probs: np.ndarray, labels: np.ndarray, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        compute_metrics(probs, labels, NAMES)


@pytest.mark.parametrize(
    ("correct", "total", "low", "high"),
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I,
    # method 3 (Wilson score, no continuity correction).
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_interval_matches_the_published_table(
    correct: int, total: int, low: float, high: float
) -> None:
    assert wilson_interval(correct, total) == pytest.approx((low, high), abs=5e-5)


def test_wilson_interval_stays_inside_zero_and_one() -> None:
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
