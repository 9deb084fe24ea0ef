"""Typed settings of the REST service, read from ``IMGCLF_*`` environment variables.

Settings are built once, when the service starts (``ServeSettings()`` or from the CLI), never at
import time. Every limit that protects the service from bad or hostile input lives here, with a
safe default.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from imgclf.image_budget import (
    DEFAULT_MAX_DECODE_BYTES,
    DEFAULT_MAX_PIXELS,
    DecodeLane,
    ImageBudget,
)
from imgclf.inference.fetch import FetchPolicy
from imgclf.serving.header_limits import DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_HEADERS
from imgclf.serving.http.schemas import MAX_BATCH_IMAGES


def _path_to_text(value: Any) -> Any:
    """Accept a ``Path`` for ``model`` (it is a URI or a path, kept as text: ``s3://`` survives)."""
    return str(value) if isinstance(value, Path) else value


class ServeSettings(BaseSettings):
    """Configuration of ``imgclf serve``; every field can be set as ``IMGCLF_<FIELD>``.

    List values (``cors_origins``, ``url_allowed_hosts``) are given as JSON in the environment,
    e.g. ``IMGCLF_CORS_ORIGINS='["https://shop.example"]'``.
    """

    model_config = SettingsConfigDict(env_prefix="IMGCLF_", extra="forbid", frozen=True)

    # What to serve.
    model: Annotated[str | None, BeforeValidator(_path_to_text)] = Field(
        None,
        description="Bundle directory, .tar.gz, s3://bucket/prefix/ or "
        "https://host/bundle.tar.gz[#sha256=...]; unset serves the bundled model",
    )
    model_cache_dir: Path | None = Field(
        None, description="Where remote bundles are cached (default ~/.cache/imgclf/models)"
    )
    artifact: str = Field("auto", description="Artifact to run: auto, onnx-int8, onnx, tflite")
    threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="Runtime intra-op threads per instance (unset: CPUs / instances)",
    )
    model_server_url: str | None = Field(
        None, description="grpc://HOST:PORT of an Open Inference Protocol server (gateway mode)"
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Name the model is served under in every path (/v1/models/NAME, "
        "/v2/models/NAME) and metric; in gateway mode also its name on the model server. "
        "Unset: the bundle's name (gateway: the only model the model server serves)",
    )
    model_server_timeout_s: float = Field(5.0, gt=0, le=300)
    model_server_retries: int = Field(2, ge=0, le=10)

    # Where to listen (used by the CLI).
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    graceful_shutdown_s: float = Field(
        20.0, gt=0, le=600, description="Time allowed to finish in-flight requests on SIGTERM"
    )

    # Micro-batching.
    max_batch_size: int = Field(16, ge=1, le=512, description="1 disables batching")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="Wait for a batch to fill")
    queue_size: int = Field(
        64,
        ge=1,
        le=100_000,
        description="Requests in progress (decoding, queued, running); more get 503",
    )
    decode_threads: int = Field(2, ge=1, le=64, description="Threads decoding images")
    instances: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Batches run at the same time, each on its own thread (model instances); "
        "unset: one per CPU this process may use (cgroup quota, then affinity), at most 8, "
        "or 1 in gateway mode; unless threads is set, each gets an equal share of the CPUs",
    )

    # Input limits.
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Per request body")
    body_timeout_s: float = Field(
        15.0,
        gt=0,
        le=600,
        description="Time allowed to receive a request body after its headers; slower or "
        "stalled uploads get 408 and give up their place",
    )
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=64 * 64, description="Declared image pixels")
    max_decode_bytes: int = Field(
        DEFAULT_MAX_DECODE_BYTES,
        ge=1 << 20,
        description="Estimated memory to decode one image (pixels x bytes per pixel, plus the "
        "conversion to RGB); more gets 413",
    )
    decode_memory_bytes: int = Field(
        192 * 1024 * 1024,
        ge=1 << 20,
        description="Estimated memory of all images being decoded at once; a decode that does "
        "not fit waits for others (up to its deadline)",
    )
    large_decode_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1 << 20,
        description="Images estimated to need more memory than this to decode are costly: "
        "they are decoded one at a time on a low-priority thread of their own, so they never "
        "hold up ordinary photos",
    )
    costly_decode_scan_pixels: int = Field(
        100_000_000,
        ge=1_000_000,
        description="JPEGs whose scans x pixels exceed this are costly too (a progressive "
        "photo costs libjpeg a pass over every pixel per scan; a 24 MP baseline one has 1 to 3)",
    )
    costly_decode_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="How many nice levels below the server the costly-decode thread runs (on "
        "Linux, where each thread has its own priority): when the CPUs are busy it gets what "
        "ordinary requests leave",
    )
    costly_decode_queue: int = Field(
        4,
        ge=1,
        le=1000,
        description="Costly decodes waiting or running at once; more get 503 + Retry-After "
        "(four of about a second each stay within the decode deadline)",
    )
    decode_timeout_s: float = Field(
        5.0, gt=0, le=120, description="Wall-clock time to decode one image; longer gets 422"
    )
    tune_malloc: bool = Field(
        True,
        description="Fix glibc's mmap threshold at 1 MiB and use 2 malloc arenas, so memory "
        "freed after large images goes back to the system (see imgclf.serving.memory)",
    )
    max_header_bytes: int = Field(
        DEFAULT_MAX_HEADER_BYTES,
        ge=1024,
        le=1 << 20,
        description="Request line plus headers; larger gets 431",
    )
    max_headers: int = Field(DEFAULT_MAX_HEADERS, ge=8, le=10_000, description="More get 431")
    max_batch_images: int = Field(
        32, ge=1, le=MAX_BATCH_IMAGES, description="Images per batch request"
    )
    max_json_values: int = Field(
        1_000_000,
        ge=1000,
        le=100_000_000,
        description="JSON values (numbers, strings, arrays, objects) per V2 request body, where "
        "UINT8 pixels take one per channel value (150528 per 224x224 image); decoding costs "
        "the event loop about 0.1 us per value, so this bounds how long one body can stall it",
    )
    default_top_k: int = Field(5, ge=1, le=1000)

    # URL inputs.
    url_inputs: bool = Field(True, description="Accept {'url': ...} inputs")
    url_allowed_hosts: list[str] = Field(default_factory=list, description="Empty: any host")
    url_allow_loopback: bool = Field(False, description="Testing only: allow 127.0.0.1 URLs")
    url_timeout_s: float = Field(10.0, gt=0, le=120, description="Whole URL fetch deadline")
    url_max_redirects: int = Field(3, ge=0, le=10)

    # Access control and abuse limits.
    api_key: SecretStr | None = Field(None, description="If set, required on inference routes")
    api_key_header: str = "X-API-Key"
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins")
    rate_limit_per_s: float | None = Field(None, gt=0, description="Per-client requests/second")
    rate_limit_burst: int = Field(20, ge=1, description="Per-client burst size")
    # Half the default queue: one client cannot fill it, yet a load test or a proxy not yet
    # listed in trusted_proxies (all its clients look like one) is not cut to a trickle.
    max_requests_per_client: int = Field(
        32,
        ge=1,
        le=100_000,
        description="Inference requests in progress per client address (after the "
        "trusted-proxy rule); more get 429 at once, so one client cannot fill the queue",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="IP addresses or CIDR networks of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed (the client is the last address not in the list); "
        "empty: the connecting peer is the client, whatever it claims",
    )

    # Logging.
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = Field(True, description="One JSON object per log line")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        """Accept a JSON list or a comma-separated string (as uvicorn's FORWARDED_ALLOW_IPS)."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else text.split(",")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        """Each entry must be an IP or a network: a typo must not silently trust nobody."""
        normalised = []
        for entry in (item.strip() for item in value):
            if not entry:
                continue
            try:
                if "/" in entry:
                    normalised.append(str(ipaddress.ip_network(entry, strict=False)))
                else:
                    normalised.append(str(ipaddress.ip_address(entry)))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)"
                ) from None
        return normalised

    @model_validator(mode="after")
    def _check_mode(self) -> ServeSettings:
        if self.model_server_url is not None and self.model is not None:
            raise ValueError("set either model (embedded) or model_server_url (gateway), not both")
        if self.model_server_url is not None and not self.model_server_url.startswith("grpc://"):
            raise ValueError(
                f"model_server_url must look like grpc://HOST:PORT, got {self.model_server_url!r}"
            )
        return self

    def image_budget(self) -> ImageBudget:
        """The per-image decode limits these settings describe."""
        return ImageBudget(
            max_pixels=self.max_pixels,
            max_decode_bytes=min(self.max_decode_bytes, self.decode_memory_bytes),
            timeout_s=self.decode_timeout_s,
        )

    def decode_lane(self) -> DecodeLane:
        """The images the ordinary decode threads take; costlier ones go to the costly lane."""
        return DecodeLane(self.large_decode_bytes, self.costly_decode_scan_pixels)

    def fetch_policy(self) -> FetchPolicy:
        """The URL-fetch limits these settings describe (bytes capped like uploads)."""
        return FetchPolicy.create(
            allowed_hosts=self.url_allowed_hosts,
            allow_loopback=self.url_allow_loopback,
            max_bytes=self.max_upload_bytes,
            total_timeout_s=self.url_timeout_s,
            connect_timeout_s=min(3.0, self.url_timeout_s),
            read_timeout_s=min(5.0, self.url_timeout_s),
            max_redirects=self.url_max_redirects,
        )
