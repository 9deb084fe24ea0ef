"""Dynamic batching: concurrent requests for one model are run together as one batch.

Each request waits at most ``max_queue_delay_s`` after the oldest pending request arrived for
others to join it; a batch never exceeds ``max_batch_size`` rows. Small models on a few cores run
a batch of 8 in far less than 8 times the time of one image, so under concurrency this raises
throughput without changing any answer (each request gets exactly its own rows back).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from imgclf.errors import ModelNotReadyError

RunBatch = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Pending:
    rows: np.ndarray
    arrived: float
    future: Future[np.ndarray] = field(default_factory=Future)


class DynamicBatcher:
    """Groups concurrent :meth:`submit` calls into batches run by worker threads.

    Args:
        run: Computes outputs ``(N, ...)`` for inputs ``(N, ...)``; called from worker threads.
        max_batch_size: Most rows per batch (requests are never split).
        max_queue_delay_s: Longest time the oldest request waits for a batch to fill.
        workers: Worker threads (one per model instance).
    """

    def __init__(
        self, run: RunBatch, *, max_batch_size: int, max_queue_delay_s: float, workers: int = 1
    ) -> None:
        self._run = run
        self._max_rows = max(1, max_batch_size)
        self._delay = max(0.0, max_queue_delay_s)
        self._pending: deque[_Pending] = deque()
        self._pending_rows = 0
        self._closed = False
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._work, name=f"batcher-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, rows: np.ndarray) -> np.ndarray:
        """Run ``rows`` as part of a batch and return its own outputs. Blocking, thread-safe.

        Raises:
            ModelNotReadyError: The batcher was closed (the model is being unloaded).
        """
        item = _Pending(rows=rows, arrived=time.monotonic())
        with self._cond:
            if self._closed:
                raise ModelNotReadyError("the model is being unloaded; retry the request")
            self._pending.append(item)
            self._pending_rows += len(rows)
            self._cond.notify()
        return item.future.result()

    def close(self) -> None:
        """Stop accepting requests; pending ones still run. Waits for the workers to finish."""
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
            self._run_batch(batch)

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._pending:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._pending[0].arrived + self._delay
            while self._pending_rows < self._max_rows and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[_Pending] = []
            rows = 0
            while self._pending and (
                not batch or rows + len(self._pending[0].rows) <= self._max_rows
            ):
                item = self._pending.popleft()
                rows += len(item.rows)
                batch.append(item)
            self._pending_rows -= rows
            if self._pending:
                self._cond.notify()  # let another worker start on the remainder
            return batch

    def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            inputs = batch[0].rows if len(batch) == 1 else np.concatenate([b.rows for b in batch])
            outputs = self._run(inputs)
        except BaseException as exc:  # every waiting caller must hear about the failure
            for item in batch:
                item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            item.future.set_result(outputs[start : start + len(item.rows)])
            start += len(item.rows)
