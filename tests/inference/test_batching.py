"""The one batcher: concurrent requests share batches and each gets exactly its own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from imgclf.errors import ConfigError, ModelNotReadyError, OverloadedError
from imgclf.inference.batching import Batcher


def test_concurrent_requests_are_batched_and_split_back() -> None:
    sizes: list[int] = []
    gate = threading.Barrier(6)

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return batch * 10

    batcher = Batcher(run, max_batch_size=4, max_wait_s=0.2, wait_when_idle=True)

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

    batcher = Batcher(run, max_batch_size=8, max_wait_s=0.01)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit(np.zeros((1, 1)))
    finally:
        batcher.close()


def test_closed_batcher_refuses_new_work() -> None:
    batcher = Batcher(lambda b: b, max_batch_size=2, max_wait_s=0.0, instances=2)
    np.testing.assert_array_equal(batcher.submit(np.ones((2, 1))), np.ones((2, 1)))
    batcher.close()
    with pytest.raises(ModelNotReadyError):
        batcher.submit(np.ones((1, 1)))


@pytest.mark.parametrize("instances", [1, 2])
def test_a_lone_request_does_not_wait_for_a_batch_to_fill(instances: int) -> None:
    """At concurrency 1 the wait buys nothing: an idle batcher runs a request at once."""
    batcher = Batcher(lambda b: b, max_batch_size=16, max_wait_s=1.0, instances=instances)
    try:
        started = time.perf_counter()
        for _ in range(3):
            batcher.submit(np.ones((1, 1)))
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    assert elapsed < 0.5  # three waits of max_wait_s would take 3 s


def test_wait_when_idle_waits_for_the_queue_delay() -> None:
    """Triton's rule, kept for the model server: a lone request waits up to the delay."""
    batcher = Batcher(lambda b: b, max_batch_size=16, max_wait_s=0.2, wait_when_idle=True)
    try:
        started = time.perf_counter()
        batcher.submit(np.ones((1, 1)))
        elapsed = time.perf_counter() - started
    finally:
        batcher.close()
    assert elapsed >= 0.19


def test_a_free_instance_waits_for_stragglers_while_another_batch_runs() -> None:
    """Under load (a batch running) a free instance waits up to max_wait_s to fill its batch."""
    release = threading.Event()
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if len(sizes) == 1:
            release.wait(5)  # the first batch keeps running
        return batch

    batcher = Batcher(run, max_batch_size=3, max_wait_s=0.5, instances=2)
    try:
        first = batcher.submit_nowait(np.ones((1, 1)))
        time.sleep(0.05)  # the first batch is running: instance 2 is free but waits
        rest = [batcher.submit_nowait(np.ones((1, 1))) for _ in range(3)]
        for future in rest:
            future.result(5)
        release.set()
        first.result(5)
    finally:
        batcher.close()
    assert sizes[:2] == [1, 3]


def test_a_bounded_queue_refuses_at_once() -> None:
    release = threading.Event()
    batcher = Batcher(
        lambda b: release.wait(5) and b, max_batch_size=1, queue_size=2, retry_after_s=2.0
    )
    try:
        running = batcher.submit_nowait(np.ones((1, 1)))
        time.sleep(0.05)  # taken by the worker: the queue is empty again
        queued = [batcher.submit_nowait(np.ones((1, 1))) for _ in range(2)]
        with pytest.raises(OverloadedError, match="queue is full") as caught:
            batcher.submit_nowait(np.ones((1, 1)))
        assert caught.value.retry_after_s == 2.0
        release.set()
        assert all(f.result(5).shape == (1, 1) for f in [running, *queued])
    finally:
        release.set()
        batcher.close()


def test_instances_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="instances must be at least 1"):
        Batcher(lambda b: b, instances=0)
