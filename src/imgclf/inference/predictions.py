"""Typed predictions: what every entry point returns, whatever runtime computed it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from imgclf.errors import InputError


@dataclass(frozen=True)
class ClassScore:
    """One class and its probability."""

    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"class": ..., "prob": ...}``."""
        return {"class": self.label, "prob": self.probability}


@dataclass(frozen=True)
class Prediction:
    """The most likely class of one image, with the ``top_k`` classes in descending order.

    Attributes:
        label: The most likely class.
        probability: Its probability (softmax over all classes).
        top_k: The k most likely classes, best first; ``top_k[0]`` is ``label``.
    """

    label: str
    probability: float
    top_k: list[ClassScore]

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"class", "probability", "top_k": [{"class", "prob"}, ...]}``."""
        return {
            "class": self.label,
            "probability": self.probability,
            "top_k": [score.to_dict() for score in self.top_k],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits, stable for large values; returns float32."""
    shifted = logits.astype(np.float32) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / np.sum(exp, axis=-1, keepdims=True)  # type: ignore[no-any-return]


def check_top_k(top_k: int) -> None:
    """Refuse a ``top_k`` below 1 (it comes from requests, hence an input error).

    Raises:
        InputError: ``top_k`` is not a positive integer.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}")


def to_predictions(probs: np.ndarray, labels: Sequence[str], top_k: int = 5) -> list[Prediction]:
    """Turn ``(N, C)`` probabilities into one :class:`Prediction` per row.

    Args:
        probs: Class probabilities, one row per image.
        labels: Class names in column order.
        top_k: How many classes each prediction lists; capped at the number of classes.

    Raises:
        InputError: ``top_k`` is below 1.
        ValueError: ``probs`` does not have one column per label.
    """
    check_top_k(top_k)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"expected probabilities of shape (N, {len(labels)}), got {probs.shape}")
    k = min(top_k, len(labels))
    # argsort on the negated row: stable, so ties keep label order.
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    predictions = []
    for row, indices in zip(probs, order, strict=True):
        scores = [ClassScore(labels[i], float(row[i])) for i in indices]
        predictions.append(Prediction(scores[0].label, scores[0].probability, scores))
    return predictions
