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

from typing import TYPE_CHECKING

from imgclf._lazy import lazy_exports

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

_LAZY: dict[str, str] = {
    "DatasetProblem": "imgclf.data.dataset",
    "DatasetSplits": "imgclf.data.dataset",
    "ImageRecord": "imgclf.data.dataset",
    "load_dataset": "imgclf.data.dataset",
    "load_folder": "imgclf.data.dataset",
    "KNOWN_DATASETS": "imgclf.data.sources",
    "DatasetSource": "imgclf.data.sources",
    "download_dataset": "imgclf.data.download",
}


__getattr__ = lazy_exports(__name__, _LAZY)
