"""Checks an exported model must pass: parity with its source model, and accuracy on a split."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from imgclf.errors import ExportError
from imgclf.preprocessing import PreprocessConfig, normalize

log = logging.getLogger(__name__)

#: Tolerances on logits for fp32 exports, as timm checks its ONNX exports.
PARITY_RTOL = 1e-3
PARITY_ATOL = 1e-4

BatchFunction = Callable[[np.ndarray], np.ndarray]


def run_batched(
    function: BatchFunction, pixels: np.ndarray, config: PreprocessConfig, batch_size: int = 16
) -> np.ndarray:
    """Logits of ``function`` (normalised NCHW float32 in) over uint8 NHWC pixels, in batches."""
    outputs = [
        function(normalize(pixels[start : start + batch_size], config))
        for start in range(0, len(pixels), batch_size)
    ]
    return np.concatenate(outputs)


def check_parity(
    expected: np.ndarray,
    actual: np.ndarray,
    *,
    what: str,
    force: bool = False,
    rtol: float = PARITY_RTOL,
    atol: float = PARITY_ATOL,
) -> dict[str, Any]:
    """Compare exported logits with the source model's, and describe the result.

    Args:
        expected: Source model logits ``(N, C)``.
        actual: Exported model logits ``(N, C)``.
        what: Name of the export, for the error message.
        force: Log instead of raising when the check fails.
        rtol: Relative tolerance (``numpy.testing.assert_allclose``).
        atol: Absolute tolerance.

    Returns:
        Numbers worth recording in the manifest.

    Raises:
        ExportError: The logits differ beyond the tolerances and ``force`` is False.
    """
    diff = np.abs(expected.astype(np.float64) - actual.astype(np.float64))
    report: dict[str, Any] = {
        "images": len(expected),
        "max_abs_diff": float(diff.max(initial=0.0)),
        "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": top1_agreement(expected, actual),
        "rtol": rtol,
        "atol": atol,
    }
    try:
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)
    except AssertionError as exc:
        report["passed"] = False
        message = (
            f"{what} disagrees with PyTorch beyond rtol={rtol}, atol={atol} "
            f"(max |diff| {report['max_abs_diff']:.3g}, top-1 agreement "
            f"{report['top1_agreement']:.1%})"
        )
        if not force:
            raise ExportError(f"{message}; pass --force to keep it anyway") from exc
        log.warning("%s; kept because of --force", message)
    else:
        report["passed"] = True
    return report


def top1_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Share of rows whose highest-scoring class is the same in both outputs."""
    if len(first) == 0:
        return 1.0
    return float(np.mean(np.argmax(first, axis=1) == np.argmax(second, axis=1)))


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest-scoring class is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels)) if len(labels) else 0.0
