"""Fixtures for the REST service: apps over the tiny colour bundle (or a fake backend)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from http_fakes import ClientFactory

from imgclf.serving.http import ServeSettings, create_app


@pytest.fixture
def make_client(tiny_bundle: Path) -> Iterator[ClientFactory]:
    """Factory: ``make_client(backend=None, **settings)`` -> a started TestClient (lifespan run).

    Without ``backend`` the app loads the tiny colour bundle through its normal start-up path.
    """
    clients: list[TestClient] = []

    def factory(backend: Any = None, **overrides: Any) -> TestClient:
        overrides.setdefault("model", tiny_bundle)
        overrides.setdefault("threads", 1)
        settings = ServeSettings(**overrides)
        client = TestClient(create_app(settings, backend=backend), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """An app serving the tiny colour bundle with default settings."""
    return make_client()
