"""Micro-batching for the REST service: an asyncio adapter over the one inference batcher.

Requests hand their decoded pixels to :class:`imgclf.inference.batching.Batcher` (shared with the
model server) and await its future on the event loop, which never blocks. The batcher's wait
policy, instances and bounded queue are described there; this module adds only what belongs to an
asyncio service: awaiting, cancelling a request whose client left, and refusing work while the
service shuts down.

``instances`` batches may run at once, each on its own worker thread (Triton's instance count).
On small CPUs, single-threaded batches side by side get more out of the cores than one batch split
over all of them: the int8 Lite0 model alone did 35% more images per second that way on a 2-core
machine (docs/benchmarks.md), because its many small layers leave threads of a shared batch
waiting on each other.

A request that would overflow the queue is refused at once with
:class:`~imgclf.errors.OverloadedError` (503 + ``Retry-After``) instead of piling up latency.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from imgclf.errors import OverloadedError
from imgclf.inference.batching import Batcher, BatchStats, RunBatch

logger = logging.getLogger(__name__)

__all__ = ["BatchStats", "MicroBatcher"]


class MicroBatcher:
    """Groups concurrent inference requests of an asyncio service into batches.

    Args:
        infer: Blocking function from uint8 ``(N, H, W, 3)`` pixels to ``(N, C)`` probabilities.
        max_batch_size: Most images per model call (1 disables batching).
        max_wait_s: Longest a partial batch waits for more requests while another one runs.
        queue_size: Most images waiting; more are refused with ``OverloadedError``.
        retry_after_s: Value of the ``Retry-After`` hint given to refused requests.
        instances: Batches that may run at the same time, each on its own thread.
        stats: Metric callbacks.

    Raises:
        ConfigError: ``instances`` is below 1.
    """

    def __init__(
        self,
        infer: RunBatch,
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        queue_size: int = 64,
        retry_after_s: float = 1.0,
        instances: int = 1,
        stats: BatchStats | None = None,
    ) -> None:
        self._core = Batcher(
            infer,
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            instances=instances,
            queue_size=queue_size,
            retry_after_s=retry_after_s,
            stats=stats,
        )
        self._started = False
        self._closing = False

    @property
    def depth(self) -> int:
        """Images waiting in the queue."""
        return self._core.depth

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started and not self._closing

    def start(self) -> None:
        """Accept requests (the worker threads are already up)."""
        self._started = True

    async def stop(self) -> None:
        """Refuse new work, finish everything already queued, then stop the worker threads."""
        self._closing = True
        await asyncio.to_thread(self._core.close)

    async def submit(self, pixels: np.ndarray) -> np.ndarray:
        """Queue uint8 ``(N, H, W, 3)`` pixels and wait for their ``(N, C)`` probabilities.

        Raises:
            OverloadedError: The queue is full, or the service is shutting down.
        """
        if self._closing:
            raise OverloadedError("the service is shutting down; retry on another replica", 1.0)
        future = self._core.submit_nowait(pixels)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # at once: a batch taken meanwhile must not run rows nobody awaits
            raise
