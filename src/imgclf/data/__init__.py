"""Datasets: find folder-per-class layouts, split them, check every image, download known ones.

The public API::

    from imgclf.data import load_dataset

    dataset = load_dataset("datasets/clothing-small")
    dataset.classes                      # sorted class folder names
    dataset.splits["train"]              # [ImageRecord(path, label), ...]
    dataset.problems                     # [DatasetProblem(path, reason, split), ...]
    dataset.summary("clothing-small")    # imgclf.bundle.DatasetSummary for the manifest

Names load on first use (PEP 562), so ``imgclf.data.cli`` stays cheap to import for ``--help``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "KNOWN_DATASETS",
    "DatasetProblem",
    "DatasetSource",
    "DatasetSplits",
    "ImageRecord",
    "download_dataset",
    "load_dataset",
    "load_folder",
]

if TYPE_CHECKING:
    from imgclf.data.dataset import (
        DatasetProblem,
        DatasetSplits,
        ImageRecord,
        load_dataset,
        load_folder,
    )
    from imgclf.data.download import download_dataset
    from imgclf.data.sources import KNOWN_DATASETS, DatasetSource

_LAZY = {
    "DatasetProblem": "imgclf.data.dataset",
    "DatasetSplits": "imgclf.data.dataset",
    "ImageRecord": "imgclf.data.dataset",
    "load_dataset": "imgclf.data.dataset",
    "load_folder": "imgclf.data.dataset",
    "KNOWN_DATASETS": "imgclf.data.sources",
    "DatasetSource": "imgclf.data.sources",
    "download_dataset": "imgclf.data.download",
}


def __getattr__(name: str) -> Any:
    """Import public names on first use (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imgclf.data' has no attribute {name!r}")
