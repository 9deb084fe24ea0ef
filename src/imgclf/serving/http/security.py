"""Access control and abuse limits: an optional API key and a per-client token bucket."""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBucketLimiter:
    """Per-client rate limit: ``rate`` requests per second on average, bursts up to ``burst``.

    Memory is bounded: only the ``max_clients`` most recently seen clients are tracked (a client
    forgotten this way simply starts again with a full bucket).
    """

    def __init__(self, rate: float, burst: int, *, max_clients: int = 10_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def acquire(self, client: str, now: float | None = None) -> float:
        """Take one token for ``client``.

        Returns:
            0.0 if the request may proceed, else the seconds until a token is available.
        """
        now = time.monotonic() if now is None else now
        bucket = self._buckets.pop(client, None) or _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[client] = bucket
        if len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` wants whole seconds; round up so clients never retry too early."""
    return str(max(1, math.ceil(seconds)))


def api_key_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison, so the key cannot be guessed from response timing."""
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
