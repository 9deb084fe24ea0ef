"""The micro-batcher: batches form under concurrency, a full queue refuses at once, stop drains."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from http_fakes import ClientFactory, FakeBackend

from imgclf.errors import ModelServerError, ModelServerUnavailableError, OverloadedError
from imgclf.serving.http.batching import BatchStats, MicroBatcher

ImageBytes = Callable[..., bytes]


class SlowModel:
    """Returns row index markers so results can be matched to inputs; records batch sizes."""

    def __init__(self, delay_s: float = 0.05) -> None:
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        self.gate.wait(5)
        self.batches.append(len(pixels))
        time.sleep(self.delay_s)
        return pixels[:, 0, 0, :1].astype(np.float32)  # each row's marker value


def _pixels(marker: int, count: int = 1) -> np.ndarray:
    return np.full((count, 2, 2, 3), marker, dtype=np.uint8)


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    async def scenario() -> tuple[list[np.ndarray], list[int]]:
        model = SlowModel()
        batcher = MicroBatcher(model, max_batch_size=8, max_wait_s=0.01, queue_size=100)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(_pixels(i)) for i in range(20)))
        await batcher.stop()
        return results, model.batches

    results, batches = asyncio.run(scenario())
    assert [int(r[0, 0]) for r in results] == list(range(20))
    assert sum(batches) == 20
    assert max(batches) == 8
    assert len(batches) <= 4


def test_multi_image_requests_are_kept_together() -> None:
    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(SlowModel(0.0), max_batch_size=4, max_wait_s=0.0, queue_size=100)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit(_pixels(1, 3)), batcher.submit(_pixels(2, 6)), batcher.submit(_pixels(3))
        )
        await batcher.stop()
        return list(results)

    first, second, third = asyncio.run(scenario())
    assert first.shape == (3, 1) and (first == 1).all()
    assert second.shape == (6, 1) and (second == 2).all()
    assert third.shape == (1, 1) and (third == 3).all()


def test_full_queue_refuses_immediately_with_retry_after() -> None:
    async def scenario() -> tuple[float, OverloadedError, list[np.ndarray]]:
        model = SlowModel(0.0)
        model.gate.clear()  # hold the model so the queue fills
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0, queue_size=2)
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(_pixels(0)))
        await asyncio.sleep(0.05)  # taken by the worker: the queue is empty again
        queued = [asyncio.ensure_future(batcher.submit(_pixels(i))) for i in (1, 2)]
        await asyncio.sleep(0)
        start = time.perf_counter()
        with pytest.raises(OverloadedError) as caught:
            await batcher.submit(_pixels(3))
        refused_after = time.perf_counter() - start
        model.gate.set()
        results = await asyncio.gather(running, *queued)
        await batcher.stop()
        return refused_after, caught.value, results

    refused_after, error, results = asyncio.run(scenario())
    assert refused_after < 0.05
    assert error.retry_after_s == 1.0
    assert "queue is full" in str(error)
    assert [int(r[0, 0]) for r in results] == [0, 1, 2]


def test_stop_finishes_queued_work_then_refuses_new() -> None:
    async def scenario() -> tuple[list[np.ndarray], bool]:
        batcher = MicroBatcher(SlowModel(0.02), max_batch_size=2, max_wait_s=0.0, queue_size=50)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_pixels(i))) for i in range(6)]
        await asyncio.sleep(0)
        await batcher.stop()
        results = [task.result() for task in pending]
        try:
            await batcher.submit(_pixels(9))
        except OverloadedError:
            return results, True
        return results, False

    results, refused = asyncio.run(scenario())
    assert [int(r[0, 0]) for r in results] == list(range(6))
    assert refused


def test_backend_errors_reach_every_waiter_and_the_batcher_survives() -> None:
    calls = {"n": 0}

    def flaky(pixels: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ModelServerUnavailableError("remote down")
        return np.ones((len(pixels), 1), dtype=np.float32)

    async def scenario() -> tuple[list[object], np.ndarray]:
        batcher = MicroBatcher(flaky, max_batch_size=4, max_wait_s=0.01, queue_size=10)
        batcher.start()
        first = await asyncio.gather(
            *(batcher.submit(_pixels(i)) for i in range(3)), return_exceptions=True
        )
        after = await batcher.submit(_pixels(5))
        await batcher.stop()
        return list(first), after

    first, after = asyncio.run(scenario())
    assert all(isinstance(r, ModelServerError) for r in first)
    assert after.shape == (1, 1)


def test_cancelled_requests_are_skipped() -> None:
    async def scenario() -> list[int]:
        model = SlowModel(0.0)
        model.gate.clear()
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0.0, queue_size=10)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(_pixels(0)))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(batcher.submit(_pixels(1)))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the batcher's worker threads
        model.gate.set()
        await first
        await batcher.stop()
        return model.batches

    assert asyncio.run(scenario()) == [1]


def test_stats_callbacks_see_batches_and_depth() -> None:
    seen: dict[str, list[float]] = {"batch": [], "depth": []}
    stats = BatchStats(
        on_batch=lambda size, seconds: seen["batch"].append(size),
        on_queue_depth=seen["depth"].append,
    )

    async def scenario() -> None:
        batcher = MicroBatcher(SlowModel(0.0), max_batch_size=4, queue_size=10, stats=stats)
        batcher.start()
        await asyncio.gather(*(batcher.submit(_pixels(i)) for i in range(4)))
        await batcher.stop()

    asyncio.run(scenario())
    assert sum(seen["batch"]) == 4
    assert max(seen["depth"]) >= 1
    assert seen["depth"][-1] == 0


def test_app_overload_answers_503_with_retry_after(
    make_client: ClientFactory, image_bytes: ImageBytes
) -> None:
    """A slow backend, 2 requests admitted at once and 10 concurrent: excess refused at once."""
    backend = FakeBackend(delay_s=0.3)
    client = make_client(backend=backend, max_batch_size=1, queue_size=2)
    body = {"image": base64.b64encode(image_bytes()).decode()}
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: client.post("/predict", json=body), range(10)))
    codes = sorted(r.status_code for r in responses)
    assert set(codes) == {200, 503}
    assert codes.count(200) >= 2
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert "at capacity" in refused.json()["detail"]
    assert client.get("/health").status_code == 200


def test_app_batches_concurrent_requests(
    make_client: ClientFactory, image_bytes: ImageBytes
) -> None:
    backend = FakeBackend(delay_s=0.05)
    client = make_client(backend=backend, max_batch_size=8, max_wait_ms=20, queue_size=64)
    body = {"image": base64.b64encode(image_bytes()).decode()}
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda _: client.post("/predict", json=body), range(16)))
    assert all(r.status_code == 200 for r in responses)
    served = backend.batch_sizes[1:]  # the first call is the start-up warm-up
    assert sum(served) == 16
    assert max(served) > 1


def test_batching_can_be_disabled(make_client: ClientFactory, image_bytes: ImageBytes) -> None:
    backend = FakeBackend(delay_s=0.02)
    client = make_client(backend=backend, max_batch_size=1, queue_size=64)
    body = {"image": base64.b64encode(image_bytes()).decode()}
    with ThreadPoolExecutor(6) as pool:
        assert all(
            r.status_code == 200
            for r in pool.map(lambda _: client.post("/predict", json=body), range(6))
        )
    assert set(backend.batch_sizes) == {1}


class ConcurrencyProbe(SlowModel):
    """A slow model that records how many calls ran at the same time."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self._lock = threading.Lock()
        self._active = 0
        self.most_at_once = 0

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        with self._lock:
            self._active += 1
            self.most_at_once = max(self.most_at_once, self._active)
        try:
            return super().__call__(pixels)
        finally:
            with self._lock:
                self._active -= 1


@pytest.mark.parametrize("instances", [1, 2, 3])
def test_instances_bound_the_batches_running_at_once(instances: int) -> None:
    async def scenario() -> tuple[list[np.ndarray], ConcurrencyProbe]:
        model = ConcurrencyProbe(0.1)
        batcher = MicroBatcher(
            model, max_batch_size=2, max_wait_s=0.0, queue_size=100, instances=instances
        )
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(_pixels(i)) for i in range(12)))
        await batcher.stop()
        return results, model

    results, model = asyncio.run(scenario())
    assert [int(r[0, 0]) for r in results] == list(range(12))
    assert model.most_at_once == instances
    assert sum(model.batches) == 12


def test_stop_waits_for_every_running_instance() -> None:
    async def scenario() -> list[np.ndarray]:
        batcher = MicroBatcher(
            ConcurrencyProbe(0.2), max_batch_size=1, max_wait_s=0.0, queue_size=10, instances=2
        )
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(_pixels(i))) for i in range(5)]
        await asyncio.sleep(0.05)  # two batches are running, three are queued
        await batcher.stop()
        assert all(p.done() for p in pending)
        return [p.result() for p in pending]

    assert [int(r[0, 0]) for r in asyncio.run(scenario())] == list(range(5))


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances must be at least 1"):
        MicroBatcher(SlowModel(), instances=0)
