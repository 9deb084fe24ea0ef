"""Evaluation: metrics, plots and reports for a model bundle on any split or folder.

The public API (heavy pieces load on first use, so importing this package stays cheap)::

    from imgclf.evaluation import compute_metrics, evaluate_bundle

    results = evaluate_bundle("runs/clothing", "datasets/clothing-small", splits=["all"],
                              out_dir="runs/clothing/evaluation")
    print(results["test"].summary())   # {"top1": ..., "top3": ..., "loss": ..., "macro_f1": ...}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgclf._lazy import lazy_exports

__all__ = [
    "SplitMetrics",
    "SplitPredictions",
    "compute_metrics",
    "evaluate_bundle",
    "predict_records",
    "write_report",
]

if TYPE_CHECKING:
    from imgclf.evaluation.metrics import SplitMetrics, compute_metrics
    from imgclf.evaluation.report import write_report
    from imgclf.evaluation.results import SplitPredictions
    from imgclf.evaluation.runner import evaluate_bundle, predict_records

_LAZY: dict[str, str] = {
    "SplitMetrics": "imgclf.evaluation.metrics",
    "compute_metrics": "imgclf.evaluation.metrics",
    "SplitPredictions": "imgclf.evaluation.results",
    "write_report": "imgclf.evaluation.report",
    "evaluate_bundle": "imgclf.evaluation.runner",
    "predict_records": "imgclf.evaluation.runner",
}


__getattr__ = lazy_exports(__name__, _LAZY)
