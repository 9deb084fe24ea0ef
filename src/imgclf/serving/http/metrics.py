"""Prometheus metrics of the REST service, on a registry owned by each app (no globals)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from imgclf.inference.batching import BatchStats

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.35, 0.5, 1, 2.5, 5)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128)


@dataclass
class ServiceMetrics:
    """All metrics of one app instance."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    in_flight: Gauge
    batch_size: Histogram
    batch_latency: Histogram
    queue_depth: Gauge
    images: Counter
    model_info: Info

    @classmethod
    def create(cls) -> ServiceMetrics:
        """Register the metrics on a fresh registry."""
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "imgclf_http_requests",
                "HTTP requests by route template, method and status code",
                ["route", "method", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "imgclf_http_request_duration_seconds",
                "Time from request received to response sent, by route",
                ["route", "method"],
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            in_flight=Gauge(
                "imgclf_http_requests_in_flight", "Requests being handled", registry=registry
            ),
            batch_size=Histogram(
                "imgclf_batch_size",
                "Images per model call",
                buckets=_BATCH_BUCKETS,
                registry=registry,
            ),
            batch_latency=Histogram(
                "imgclf_batch_inference_seconds",
                "Model time per batch",
                buckets=_LATENCY_BUCKETS,
                registry=registry,
            ),
            queue_depth=Gauge(
                "imgclf_queue_depth", "Images waiting for the model", registry=registry
            ),
            images=Counter("imgclf_images_classified", "Images classified", registry=registry),
            model_info=Info("imgclf_model", "The model being served", registry=registry),
        )

    def batch_stats(self) -> BatchStats:
        """Callbacks that feed the batcher's observations into these metrics."""

        def on_batch(size: int, seconds: float) -> None:
            self.batch_size.observe(size)
            self.batch_latency.observe(seconds)
            self.images.inc(size)

        return BatchStats(on_batch=on_batch, on_queue_depth=self.queue_depth.set)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
