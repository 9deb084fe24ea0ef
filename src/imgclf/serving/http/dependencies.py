"""What route handlers need, as FastAPI dependencies (``Annotated`` aliases).

The app keeps one :class:`Services` object on ``app.state``; it is filled by the lifespan (backend,
batcher) and read through :func:`get_services`. Tests swap pieces through ``create_app(settings,
backend=...)`` or ``app.dependency_overrides`` instead of patching modules.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from imgclf.errors import ModelNotReadyError
from imgclf.image_budget import DecodeLane, DecodeMemoryPool, ImageBudget
from imgclf.inference.fetch import FetchPolicy
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.batching import MicroBatcher
from imgclf.serving.http.metrics import ServiceMetrics
from imgclf.serving.http.security import (
    TokenBucketLimiter,
    api_key_matches,
    retry_after_header,
)
from imgclf.serving.http.settings import ServeSettings


@dataclass
class Services:
    """Everything a request handler may use; one per app."""

    settings: ServeSettings
    metrics: ServiceMetrics
    fetch_policy: FetchPolicy
    image_budget: ImageBudget
    decode_memory: DecodeMemoryPool
    decode_lane: DecodeLane
    backend: InferenceBackend | None = None
    batcher: MicroBatcher | None = None
    decode_pool: ThreadPoolExecutor | None = None
    #: One low-priority thread for images costlier than ``decode_lane`` takes.
    costly_decode_pool: ThreadPoolExecutor | None = None
    #: Costly decodes waiting for that thread or running on it.
    costly_decodes: int = 0
    limiter: TokenBucketLimiter | None = None
    warmed: bool = False
    draining: bool = False
    admitted: int = 0
    #: Inference requests in progress per client address (only addresses with some).
    admitted_by_client: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> Services:
        """The services of a new app: limits from ``settings``, nothing loaded yet."""
        return cls(
            settings=settings,
            metrics=ServiceMetrics.create(),
            fetch_policy=settings.fetch_policy(),
            image_budget=settings.image_budget(),
            decode_memory=DecodeMemoryPool(settings.decode_memory_bytes),
            decode_lane=settings.decode_lane(),
            limiter=(
                TokenBucketLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
                if settings.rate_limit_per_s
                else None
            ),
        )

    def ready_backend(self) -> tuple[InferenceBackend, MicroBatcher, ThreadPoolExecutor]:
        """The loaded backend, its batcher and the decode pool.

        Raises:
            ModelNotReadyError: Still loading, or shutting down.
        """
        if (
            self.backend is None
            or self.batcher is None
            or self.decode_pool is None
            or not self.batcher.running
        ):
            raise ModelNotReadyError("the model is not loaded yet or the service is stopping")
        return self.backend, self.batcher, self.decode_pool

    def is_ready(self) -> bool:
        """Model loaded and warmed, batcher running, backend reachable."""
        try:
            backend, _, _ = self.ready_backend()
        except ModelNotReadyError:
            return False
        return self.warmed and not self.draining and backend.is_ready()


def get_services(request: Request) -> Services:
    """The app's :class:`Services`."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(request: Request, services: ServicesDep) -> None:
    """Refuse the request with 401 unless it carries the configured API key (if any)."""
    expected = services.settings.api_key
    if expected is None:
        return
    given = request.headers.get(services.settings.api_key_header)
    if not api_key_matches(given, expected.get_secret_value()):
        raise HTTPException(
            401,
            f"missing or wrong API key; send it in the {services.settings.api_key_header} header",
            headers={"WWW-Authenticate": f'ApiKey header="{services.settings.api_key_header}"'},
        )


def enforce_rate_limit(request: Request, services: ServicesDep) -> None:
    """Refuse the request with 429 when its client has used up its token bucket."""
    if services.limiter is None:
        return
    client = request.client.host if request.client else "unknown"
    wait_s = services.limiter.acquire(client)
    if wait_s > 0:
        raise HTTPException(
            429,
            f"rate limit of {services.limiter.rate:g} requests/s exceeded; retry later",
            headers={"Retry-After": retry_after_header(wait_s)},
        )


#: Put on every inference route: API key first (cheap, no state), then the rate limit.
#: Admission (the bound on requests in progress) runs earlier, before the body is read: see
#: :mod:`imgclf.serving.http.admission`.
InferenceGuards = [
    Depends(require_api_key),
    Depends(enforce_rate_limit),
]
