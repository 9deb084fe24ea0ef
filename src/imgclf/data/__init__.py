"""Datasets: find folder-per-class layouts, split them, check every image, download known ones.

The public API::

    from imgclf.data import load_dataset

    dataset = load_dataset("datasets/clothing-small")
    dataset.classes                      # sorted class folder names
    dataset.splits["train"]              # [ImageRecord(path, label), ...]
    dataset.problems                     # [DatasetProblem(path, reason, split), ...]
    dataset.summary("clothing-small")    # imgclf.bundle.DatasetSummary for the manifest
"""

from __future__ import annotations

from imgclf.data.dataset import (
    DatasetProblem,
    DatasetSplits,
    ImageRecord,
    load_dataset,
    load_folder,
)

__all__ = [
    "DatasetProblem",
    "DatasetSplits",
    "ImageRecord",
    "load_dataset",
    "load_folder",
]
