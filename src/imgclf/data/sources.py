"""The table of public datasets ``imgclf data download`` knows, and what their content must be.

Kept apart from the download code so the command line can list the names without importing HTTP
machinery. Adding a dataset is adding a row: its archive URL, licence, and the image counts per
split and :func:`imgclf.data.download.content_digest` of a known-good copy.
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
        url: Zip archive to download.
        description: One line for listings.
        license: SPDX identifier of the data's licence.
        homepage: Where the dataset is documented.
        counts: Split -> number of image files expected.
        digest: :func:`imgclf.data.download.content_digest` of the image files under the splits.
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
    digest: str
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
