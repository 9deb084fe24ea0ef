"""Micro-batching: concurrent requests share one model call, on a bounded queue.

Requests put their decoded pixels on a queue and await a future. One collector task takes
everything waiting (up to ``max_batch_size`` images), waits at most ``max_wait_s`` for more when
the batch is not full, and runs the model on a worker thread so the event loop never blocks.
While the batches run, new requests queue up and form the next batch, so under load batches fill
by themselves and the wait is only paid when the service is nearly idle.

``instances`` batches may run at once, each on its own worker thread (Triton's instance count).
On small CPUs, two single-threaded batches side by side get more out of the cores than one batch
split over both: the int8 Lite0 model alone did 35% more images per second that way on a 2-core
machine (docs/benchmarks.md), because its many small layers leave threads of a shared batch
waiting on each other.

The queue is bounded in *images*: a request that would overflow it is refused at once with
:class:`~imgclf.errors.OverloadedError` (503 + ``Retry-After``) instead of piling up latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from imgclf.errors import OverloadedError

logger = logging.getLogger(__name__)

InferFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchStats:
    """Callbacks for metrics; the defaults do nothing."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Groups concurrent inference requests into batches on a bounded queue.

    Args:
        infer: Blocking function from uint8 ``(N, H, W, 3)`` pixels to ``(N, C)`` probabilities.
        max_batch_size: Most images per model call (1 disables batching).
        max_wait_s: Longest a partial batch waits for more requests.
        queue_size: Most images waiting; more are refused with ``OverloadedError``.
        retry_after_s: Value of the ``Retry-After`` hint given to refused requests.
        instances: Batches that may run at the same time, each on its own thread.
        stats: Metric callbacks.
    """

    def __init__(
        self,
        infer: InferFn,
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        queue_size: int = 64,
        retry_after_s: float = 1.0,
        instances: int = 1,
        stats: BatchStats | None = None,
    ) -> None:
        if instances < 1:
            raise ValueError(f"instances must be at least 1, got {instances}")
        self._infer = infer
        self.instances = instances
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._stats = stats or BatchStats()
        self._queue: deque[_Item] = deque()
        self._pending_images = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._free = asyncio.Semaphore(instances)
        self._executor = ThreadPoolExecutor(
            max_workers=instances, thread_name_prefix="imgclf-infer"
        )

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self._pending_images

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done() and not self._closing

    def start(self) -> None:
        """Start the collector task on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect_forever())

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued, then stop the worker thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)
        self._executor.shutdown(wait=True)

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Queue uint8 ``(N, H, W, 3)`` pixels and wait for their ``(N, C)`` probabilities.

        Raises:
            OverloadedError: The queue is full, or the service is shutting down.
        """
        count = int(pixels.shape[0])
        if self._closing:
            raise OverloadedError("the service is shutting down; retry on another replica", 1.0)
        if self._pending_images + count > self.queue_size and self._pending_images > 0:
            raise OverloadedError(
                f"the inference queue is full ({self._pending_images} images waiting, limit "
                f"{self.queue_size}); retry after {self.retry_after_s:g} s",
                self.retry_after_s,
            )
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(pixels, future))
        self._pending_images += count
        self._stats.on_queue_depth(self._pending_images)
        self._wakeup.set()
        return await future

    async def _collect_forever(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for a free instance first: meanwhile the queue grows and the batch fills.
            await self._free.acquire()
            items = await self._take_batch()
            task = asyncio.get_running_loop().create_task(self._run_batch(items))
            self._running.add(task)
            task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._free.release()

    async def _take_batch(self) -> list[_Item]:
        """Take queued items up to the batch size, waiting briefly for more if not full."""
        deadline = time.perf_counter() + self.max_wait_s
        items: list[_Item] = []
        size = 0
        while True:
            while self._queue and (
                not items or size + len(self._queue[0].pixels) <= self.max_batch_size
            ):
                item = self._queue.popleft()
                items.append(item)
                size += len(item.pixels)
                self._pending_images -= len(item.pixels)
            remaining = deadline - time.perf_counter()
            if size >= self.max_batch_size or self._queue or remaining <= 0 or self._closing:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
        self._stats.on_queue_depth(self._pending_images)
        return items

    async def _run_batch(self, items: list[_Item]) -> None:
        live = [item for item in items if not item.future.done()]  # skip cancelled requests
        if not live:
            return
        start = time.perf_counter()
        try:
            batch = live[0].pixels if len(live) == 1 else np.concatenate([i.pixels for i in live])
            probs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._infer, batch
            )
        except Exception as exc:  # every waiter gets the backend's error
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        self._stats.on_batch(len(batch), time.perf_counter() - start)
        offset = 0
        for item in live:
            count = len(item.pixels)
            if not item.future.done():
                item.future.set_result(probs[offset : offset + count])
            offset += count
