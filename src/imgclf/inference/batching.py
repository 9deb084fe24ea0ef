"""The one batcher: concurrent requests for a model share runtime calls, on a bounded queue.

Every transport that serves concurrent requests puts its rows (pixels or model inputs) here: the
REST service through an asyncio adapter (:class:`imgclf.serving.http.batching.MicroBatcher`), the
model server's V2 REST and gRPC APIs directly from their handler threads. ``instances`` worker
threads each take what is waiting (up to ``max_batch_size`` rows, requests are never split), run
it and hand each request exactly its own rows back. While batches run, new requests queue up and
form the next batch, so under load batches fill by themselves.

Wait policy: a request that finds an idle batcher runs at once. Waiting ``max_wait_s`` for a batch
to fill only pays when more requests are surely on their way, i.e. while another batch is running
(a lone request at concurrency 1 used to pay the whole wait for nothing). ``wait_when_idle=True``
restores Triton's rule (always wait up to the queue delay), which the model server honours when a
repository's ``config.pbtxt`` asks for it.

With ``queue_size`` set, the queue is bounded in *rows*: a request that would overflow it is
refused at once with :class:`~imgclf.errors.OverloadedError` instead of piling up latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from imgclf.errors import ConfigError, ModelNotReadyError, OverloadedError

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class BatchStats:
    """Callbacks for metrics, called from worker threads; the defaults do nothing."""

    on_batch: Callable[[int, float], None] = lambda size, seconds: None
    on_queue_depth: Callable[[int], None] = lambda depth: None


@dataclass
class _Pending:
    rows: np.ndarray
    arrived: float = field(default_factory=time.monotonic)
    future: Future[np.ndarray] = field(default_factory=Future)


class Batcher:
    """Groups concurrent submissions into batches run by ``instances`` worker threads.

    Args:
        run: Computes outputs ``(N, ...)`` for inputs ``(N, ...)``; called from worker threads.
        max_batch_size: Most rows per run (1 disables batching).
        max_wait_s: Longest the oldest waiting request waits for a batch to fill.
        instances: Worker threads, i.e. batches that may run at the same time.
        queue_size: Most rows waiting; None leaves the queue unbounded.
        retry_after_s: ``Retry-After`` hint given to requests refused for a full queue.
        wait_when_idle: Also wait for a batch to fill when no other batch is running.
        stats: Metric callbacks.

    Raises:
        ConfigError: ``instances`` is below 1.
    """

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.002,
        instances: int = 1,
        queue_size: int | None = None,
        retry_after_s: float = 1.0,
        wait_when_idle: bool = False,
        stats: BatchStats | None = None,
    ) -> None:
        if instances < 1:
            raise ConfigError(f"instances must be at least 1, got {instances}")
        self._run = run
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait_s = max(0.0, max_wait_s)
        self.instances = instances
        self.queue_size = queue_size
        self.retry_after_s = retry_after_s
        self._wait_when_idle = wait_when_idle
        self._stats = stats or BatchStats()
        self._pending: deque[_Pending] = deque()
        self._pending_rows = 0
        self._busy = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"imgclf-infer-{i}", daemon=True)
            for i in range(instances)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        """Rows waiting in the queue (not yet running)."""
        return self._pending_rows

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def submit_nowait(self, rows: np.ndarray) -> Future[np.ndarray]:
        """Queue ``rows`` and return the future of their own outputs. Thread-safe.

        Cancelling the future before its batch starts keeps its rows out of the run.

        Raises:
            OverloadedError: The queue is bounded and full.
            ModelNotReadyError: The batcher was closed (the model is being unloaded).
        """
        item = _Pending(rows)
        count = len(rows)
        with self._cond:
            if self._closed:
                raise ModelNotReadyError("the model is being unloaded; retry the request")
            limit = self.queue_size
            if limit is not None and self._pending_rows > 0 and self._pending_rows + count > limit:
                raise OverloadedError(
                    f"the inference queue is full ({self._pending_rows} images waiting, limit "
                    f"{limit}); retry after {self.retry_after_s:g} s",
                    self.retry_after_s,
                )
            self._pending.append(item)
            self._pending_rows += count
            self._stats.on_queue_depth(self._pending_rows)  # under the lock: depths stay ordered
            self._cond.notify()
        return item.future

    def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run ``rows`` as part of a batch and return its own outputs. Blocking, thread-safe.

        Raises:
            OverloadedError: The queue is bounded and full.
            ModelNotReadyError: The batcher was closed (the model is being unloaded).
        """
        return self.submit_nowait(rows).result()

    def close(self) -> None:
        """Refuse new requests, run every queued one, then stop the worker threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run_batch(batch)
            finally:
                with self._cond:
                    self._busy -= 1

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            if self._wait_when_idle or self._busy > 0:
                self._wait_for_rows(self._pending[0].arrived + self.max_wait_s)
            batch: list[_Pending] = []
            rows = 0
            while self._pending and (
                not batch or rows + len(self._pending[0].rows) <= self.max_batch_size
            ):
                item = self._pending.popleft()
                rows += len(item.rows)
                batch.append(item)
            self._pending_rows -= rows
            self._busy += 1
            self._stats.on_queue_depth(self._pending_rows)
            if self._pending:
                self._cond.notify()  # let another worker start on the remainder
            return batch

    def _wait_for_rows(self, deadline: float) -> None:
        """Wait (holding the condition) until a batch is full, the deadline passes, or close."""
        while self._pending_rows < self.max_batch_size and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _run_batch(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            inputs = live[0].rows if len(live) == 1 else np.concatenate([i.rows for i in live])
            outputs = self._run(inputs)
        except BaseException as exc:  # every waiting caller must hear about the failure
            for item in live:
                item.future.set_exception(exc)
            return
        self._stats.on_batch(len(inputs), time.perf_counter() - started)
        start = 0
        for item in live:
            item.future.set_result(outputs[start : start + len(item.rows)])
            start += len(item.rows)
