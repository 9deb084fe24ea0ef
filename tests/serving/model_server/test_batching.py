"""Dynamic batching: concurrent requests share batches and each gets exactly its own rows."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgclf.errors import ModelNotReadyError
from imgclf.serving.model_server.batching import DynamicBatcher


def test_concurrent_requests_are_batched_and_split_back() -> None:
    sizes: list[int] = []
    gate = threading.Barrier(6)

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return batch * 10

    batcher = DynamicBatcher(run, max_batch_size=4, max_queue_delay_s=0.2)

    def submit(i: int) -> np.ndarray:
        gate.wait()
        return batcher.submit(np.full((1 + i % 2, 2), i, dtype=np.int64))

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(submit, range(6)))
    finally:
        batcher.close()
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1 + i % 2, 2), i * 10))
    assert sum(sizes) == 9
    assert max(sizes) <= 4
    assert len(sizes) < 6  # at least some requests shared a batch


def test_a_failing_batch_fails_every_request_in_it() -> None:
    def run(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    batcher = DynamicBatcher(run, max_batch_size=8, max_queue_delay_s=0.01)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(np.zeros((1, 1)))
    finally:
        batcher.close()


def test_closed_batcher_refuses_new_work() -> None:
    batcher = DynamicBatcher(lambda b: b, max_batch_size=2, max_queue_delay_s=0.0, workers=2)
    np.testing.assert_array_equal(batcher.submit(np.ones((2, 1))), np.ones((2, 1)))
    batcher.close()
    with pytest.raises(ModelNotReadyError):
        batcher.submit(np.ones((1, 1)))
