"""Fixtures: a repository exported from the tiny colour bundle, and a running model server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc")

from imgclf.export.triton import export_triton_repository
from imgclf.serving.model_server.server import ModelServer, ModelServerSettings


@pytest.fixture
def repository(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A repository with model ``colors`` version 1 (max batch 8)."""
    repo = tmp_path / "repo"
    export_triton_repository(tiny_bundle, repo, max_batch_size=8, max_queue_delay_us=1000)
    return repo


@pytest.fixture
def model_server(repository: Path) -> Iterator[ModelServer]:
    """A model server on free loopback ports, polling the repository every 0.1 s."""
    server = ModelServer(
        ModelServerSettings(repository=repository, grpc_port=0, http_port=0, poll_interval_s=0.1)
    )
    server.start()
    yield server
    server.stop(grace_s=0)
