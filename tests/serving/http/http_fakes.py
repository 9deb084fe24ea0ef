"""Test doubles for the REST service: a fake backend and the client factory type."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
from fastapi.testclient import TestClient

from imgclf.errors import ModelServerUnavailableError
from imgclf.preprocessing import PreprocessConfig

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
        self.last_pixels: np.ndarray | None = None
        self.lock = threading.Lock()

    labels = property(lambda self: self._labels)
    preprocess_config = property(lambda self: PreprocessConfig(input_size=32, crop_pct=1.0))
    model_name = property(lambda self: "fake")
    model_version = property(lambda self: "7")

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        with self.lock:
            self.batch_sizes.append(len(pixels))
            self.last_pixels = pixels.copy()
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise ModelServerUnavailableError("model server unreachable at grpc://10.0.0.1:8001")
        probs = np.zeros((len(pixels), len(self._labels)), dtype=np.float32)
        probs[:, 0] = 1.0
        return probs

    def is_ready(self) -> bool:
        return self.ready
