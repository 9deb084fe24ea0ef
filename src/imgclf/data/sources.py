"""The table of public datasets ``imgclf data download`` knows, and what their content must be.

Kept apart from the download code so the command line can list the names without importing HTTP
machinery. Adding a dataset is adding a row: where its archive is (an ``https://`` URL, or
``kaggle://OWNER/DATASET`` for the official Kaggle client), how the archive becomes split and class
folders (:attr:`DatasetSource.archive_format`), its licence, and what the result must be: the image
counts per split, plus the archive's sha256 and/or the
:func:`imgclf.data.download.content_digest` of a known-good copy.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imgclf.data.layout import SPLIT_ORDER
from imgclf.errors import ConfigError


@dataclass(frozen=True)
class DatasetSource:
    """A public dataset imgclf can download, and what its verified content looks like.

    Attributes:
        name: Short name used on the command line.
        url: Archive to download: ``https://...`` or ``kaggle://OWNER/DATASET``.
        description: One line for listings.
        license: SPDX identifier of the data's licence (or a short note where there is none).
        homepage: Where the dataset is documented.
        counts: Split -> number of image files expected.
        digest: :func:`imgclf.data.download.content_digest` of the image files under the splits,
            or None where only the archive can be pinned (its images are written by us, or the
            publisher's archive is not reproducible).
        archive_sha256: sha256 of the downloaded archive, checked before it is opened; None
            where the content digest is the check.
        archive_format: How the archive becomes split folders: ``"zip"`` (a zip of split and
            class folders, found as ``imgclf data inspect`` finds them) or ``"cifar-python"``
            (the CIFAR-10 python-version tarball of pickled batches, written out as PNGs).
        max_download_bytes: Refuse archives larger than this.
        max_extracted_bytes: Refuse archives that would unpack to more than this.
        max_files: Refuse archives with more entries than this.
    """

    name: str
    url: str
    description: str
    license: str
    homepage: str
    counts: Mapping[str, int]
    digest: str | None
    archive_sha256: str | None = None
    archive_format: str = "zip"
    max_download_bytes: int = 2 << 30
    max_extracted_bytes: int = 4 << 30
    max_files: int = 200_000
    splits: tuple[str, ...] = field(default=SPLIT_ORDER)


#: Datasets ``imgclf data download NAME`` knows.
KNOWN_DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="clothing-small",
            url="https://github.com/alexeygrigorev/clothing-dataset-small/archive/refs/heads/master.zip",
            description="clothing photos, 10 classes (dress, hat, ..., t-shirt), 3781 JPEGs",
            license="CC0-1.0",
            homepage="https://github.com/alexeygrigorev/clothing-dataset-small",
            counts={"train": 3068, "validation": 341, "test": 372},
            digest="297dce0c2b9b4e3533abd57bbad296ae5ed3f93712356f067ca5739ca915bef5",
        ),
        # Kaggle serves the publisher's zip (seg_train/seg_train/<class>, seg_test/seg_test/<class>
        # and the unlabelled seg_pred, which is left out). Kaggle does not promise the zip's bytes,
        # so the check is the published image counts per split.
        DatasetSource(
            name="intel-scenes",
            url="kaggle://puneet6060/intel-image-classification",
            description=(
                "Intel scene photos, 6 classes (buildings, forest, glacier, mountain, sea, "
                "street), 150x150 JPEGs; needs a Kaggle API token"
            ),
            license="see the Kaggle page (published by Intel for a challenge)",
            homepage="https://www.kaggle.com/datasets/puneet6060/intel-image-classification",
            counts={"train": 14034, "test": 3000},
            digest=None,
            splits=("train", "test"),
        ),
        # The official python-version tarball; the PNGs we write from it are checked by count,
        # the tarball itself by the sha256 the dataset's users have pinned for years.
        DatasetSource(
            name="cifar10",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            description="CIFAR-10, 10 object classes, 60,000 32x32 photos written as PNGs",
            license="see the homepage (Krizhevsky 2009; cite the technical report)",
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            counts={"train": 50000, "test": 10000},
            digest=None,
            archive_sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            archive_format="cifar-python",
            max_download_bytes=200 << 20,
            max_extracted_bytes=400 << 20,
            splits=("train", "test"),
        ),
    )
}


def get_source(name: str) -> DatasetSource:
    """The registry entry for ``name``.

    Raises:
        ConfigError: ``name`` is not a known dataset.
    """
    try:
        return KNOWN_DATASETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(KNOWN_DATASETS))}"
        ) from None


def default_destination(name: str) -> Path:
    """``$IMGCLF_DATA_DIR/<name>``, by default ``./datasets/<name>``."""
    return Path(os.environ.get("IMGCLF_DATA_DIR", "datasets")) / name
