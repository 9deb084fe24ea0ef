"""Fixtures for the REST service: apps over the tiny colour bundle, and fake backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgclf.errors import ModelServerError
from imgclf.preprocessing import PreprocessConfig
from imgclf.serving.http import ServeSettings, create_app

ClientFactory = Callable[..., TestClient]


class FakeBackend:
    """A backend answering one-hot probabilities after an optional delay; records batch sizes."""

    def __init__(
        self,
        *,
        delay_s: float = 0.0,
        labels: tuple[str, ...] = ("red", "green", "blue"),
        fail: bool = False,
        ready: bool = True,
    ) -> None:
        self.delay_s = delay_s
        self._labels = list(labels)
        self.fail = fail
        self.ready = ready
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    labels = property(lambda self: self._labels)
    preprocess_config = property(lambda self: PreprocessConfig(input_size=32, crop_pct=1.0))
    model_name = property(lambda self: "fake")
    model_version = property(lambda self: "7")

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(pixels))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise ModelServerError("model server unreachable at grpc://10.0.0.1:8001", 503)
        probs = np.zeros((len(pixels), len(self._labels)), dtype=np.float32)
        probs[:, 0] = 1.0
        return probs

    def is_ready(self) -> bool:
        return self.ready


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
