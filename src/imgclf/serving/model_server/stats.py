"""Per-model-version inference statistics, as Triton's ``ModelStatistics`` reports them.

Counts requests (success/fail with their total duration), rows inferred (``inference_count``),
model executions (``execution_count``; fewer than requests when dynamic batching groups them) and,
per batch size, how many executions ran and how long they took. Transports turn a
:class:`StatsSnapshot` into the V2 ``ModelStatistics`` message.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Duration:
    """A count of events and their total duration in nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> Duration:
        """This duration with one more event lasting ``ns``."""
        return Duration(self.count + 1, self.ns + ns)


@dataclass(frozen=True)
class StatsSnapshot:
    """Statistics of one model version at one moment."""

    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    compute_infer: Duration
    batches: dict[int, Duration]


@dataclass
class ModelStats:
    """Thread-safe accumulator behind :class:`StatsSnapshot`."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last_inference_ms: int = 0
    _inference_count: int = 0
    _execution_count: int = 0
    _success: Duration = Duration()
    _fail: Duration = Duration()
    _compute_infer: Duration = Duration()
    _batches: dict[int, Duration] = field(default_factory=dict)

    def record_request(self, *, ok: bool, duration_ns: int, rows: int) -> None:
        """One request finished (successfully or not) after ``duration_ns``."""
        with self._lock:
            self._last_inference_ms = int(time.time() * 1000)
            if ok:
                self._success = self._success.add(duration_ns)
                self._inference_count += rows
            else:
                self._fail = self._fail.add(duration_ns)

    def record_execution(self, *, batch_size: int, duration_ns: int) -> None:
        """The model ran once on a batch of ``batch_size`` rows."""
        with self._lock:
            self._execution_count += 1
            self._compute_infer = self._compute_infer.add(duration_ns)
            self._batches[batch_size] = self._batches.get(batch_size, Duration()).add(duration_ns)

    def snapshot(self) -> StatsSnapshot:
        """A consistent copy of the current statistics."""
        with self._lock:
            return StatsSnapshot(
                last_inference_ms=self._last_inference_ms,
                inference_count=self._inference_count,
                execution_count=self._execution_count,
                success=self._success,
                fail=self._fail,
                compute_infer=self._compute_infer,
                batches=dict(sorted(self._batches.items())),
            )
