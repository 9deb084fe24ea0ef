"""Shared pieces of the REST serving benchmarks: data, server processes, load generators, docs.

Everything runs on 127.0.0.1 and is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import clothing_dir

REPO = Path(__file__).resolve().parents[1]


def load_test_jpegs(limit: int | None = None) -> list[bytes]:
    """The clothing test split's JPEG files (interleaved across classes)."""
    test = clothing_dir() / "test"
    if not test.is_dir():
        sys.exit(f"clothing dataset not found at {test}; set IMGCLF_CLOTHING_DIR")
    per_class = [sorted(d.glob("*.jpg")) for d in sorted(test.iterdir()) if d.is_dir()]
    paths = [p for group in zip(*per_class, strict=False) for p in group]
    paths += [p for group in per_class for p in group if p not in set(paths)]
    return [p.read_bytes() for p in paths[:limit]]


def has_onnx(path: Path) -> bool:
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    artifacts = json.loads(manifest.read_text()).get("artifacts", {})
    return any(key in artifacts for key in ("onnx", "onnx-int8"))


def resolve_bundle(requested: Path | None) -> Path:
    """The bundle to benchmark: the one asked for, else the bundled model, else the run dir."""
    if requested is not None:
        return requested
    from imgclf.bundle import default_bundle_path

    for candidate in (default_bundle_path(), Path("/work/runs/clothing-lite0")):
        if has_onnx(candidate):
            return candidate
    sys.exit("no bundle with an ONNX artifact found; pass --bundle (see imgclf export)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    """``imgclf serve`` in a subprocess on a free loopback port."""

    def __init__(self, bundle: Path, log: Path, *options: str, log_level: str = "warning") -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        cmd = [sys.executable, "-m", "imgclf", "serve", "--model", str(bundle)]
        cmd += ["--port", str(self.port), "--log-level", log_level, *options]
        self.process = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"server exited with code {self.process.returncode}; see its log")
            try:
                if httpx.get(f"{self.base}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        sys.exit("server did not become ready")

    def access_statuses(self, route: str = "/predict") -> dict[int, int]:
        """Statuses of the requests the server logged (needs ``log_level="info"``)."""
        counts: dict[int, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("logger") == "imgclf.access" and entry.get("route") == route:
                    counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        return counts

    @property
    def rss_mb(self) -> float:
        return rss_mb(self.process.pid)

    def terminate(self, timeout_s: float = 30.0) -> float:
        """SIGTERM and wait; returns seconds until the process exited."""
        start = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return time.monotonic() - start


@dataclass
class LoadResult:
    """Outcome of one load phase."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    refused_ms: list[float] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    @property
    def throughput(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def record(self, status: int, ms: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies_ms.append(ms)
        elif status == 503:
            self.refused_ms.append(ms)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _post(client: httpx.AsyncClient, url: str, image: bytes, result: LoadResult) -> None:
    start = time.perf_counter()
    try:
        response = await client.post(url, files={"file": ("x.jpg", image, "image/jpeg")})
        result.record(response.status_code, (time.perf_counter() - start) * 1000)
    except httpx.HTTPError as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")


async def closed_loop(
    url: str, images: Sequence[bytes], *, concurrency: int, requests: int, max_seconds: float
) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the last one answers."""
    result = LoadResult()
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in counter:
            if time.monotonic() > deadline:
                return
            await _post(client, url, images[index % len(images)], result)

    cpu = time.process_time()
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - cpu
    return result


async def open_loop(
    url: str, images: Sequence[bytes], *, rate: float, seconds: float, max_connections: int = 256
) -> LoadResult:
    """Requests arrive at ``rate`` per second whatever the answers (a Poisson-free steady pace)."""
    result = LoadResult()
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    tasks: list[asyncio.Task[None]] = []
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        index = 0
        while (now := time.perf_counter() - start) < seconds:
            due = index / rate
            if due > now:
                await asyncio.sleep(due - now)
            image = images[index % len(images)]
            tasks.append(asyncio.create_task(_post(client, url, image, result)))
            index += 1
        await asyncio.gather(*tasks)
        result.wall_s = time.perf_counter() - start
    return result
