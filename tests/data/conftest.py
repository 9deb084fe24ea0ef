"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dataserver import Server, serve_folder


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A local HTTP server for the files under ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    with serve_folder(root) as running:
        yield running
