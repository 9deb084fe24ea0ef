"""Shared pieces of the REST serving benchmarks: data, server processes, load generators, docs.

Everything runs on 127.0.0.1 and is bounded in requests and seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, all of its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (workers a server forks or spawns), alive now."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def pss_mb(pid: int) -> float:
    """Proportional set size of one process: its private pages plus its share of shared ones.

    Summed over the processes of a server, it counts pages that forked workers share once, where
    RSS would count them once per worker.
    """
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class ManagedServer:
    """A server command in a subprocess on a free loopback port, ready when ``ready_path`` is 200.

    Memory and CPU cover the whole process tree, so servers that run workers in processes of
    their own are measured whole.
    """

    def __init__(
        self,
        command: Sequence[str],
        log: Path,
        *,
        port: int,
        ready_path: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready_timeout_s: float = 180.0,
    ) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            list(command),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # terminate() signals the workers too
        )
        self._wait_ready(ready_path, ready_timeout_s)

    def _wait_ready(self, ready_path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.close()
                sys.exit(f"server exited with code {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.base}{ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.terminate()
        sys.exit(f"server did not become ready; see {self.log_path}")

    @property
    def rss_mb(self) -> float:
        """Resident memory of the server's main process."""
        return rss_mb(self.process.pid)

    @property
    def memory_mb(self) -> float:
        """PSS of every process of the server (see :func:`pss_mb`)."""
        return sum(pss_mb(pid) for pid in process_tree(self.process.pid))

    @property
    def cpu_s(self) -> float:
        """CPU seconds the server's main process has used since it started."""
        return cpu_seconds(self.process.pid)

    @property
    def tree_cpu_s(self) -> float:
        """CPU seconds of every live process of the server since each started."""
        total = 0.0
        for pid in process_tree(self.process.pid):
            try:
                total += cpu_seconds(pid)
            except OSError:
                continue
        return total

    def terminate(self, timeout_s: float = 30.0) -> float:
        """SIGTERM the server's process group and wait; returns seconds until the server exited."""
        start = time.monotonic()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # workers left behind by the server
        self._log.close()
        return time.monotonic() - start


class ServerProcess(ManagedServer):
    """``imgclf serve`` in a subprocess on a free loopback port (``env``: ``IMGCLF_*`` settings)."""

    def __init__(
        self,
        bundle: Path,
        log: Path,
        *options: str,
        log_level: str = "warning",
        env: dict[str, str] | None = None,
    ) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "imgclf", "serve", "--model", str(bundle)]
        cmd += ["--port", str(port), "--log-level", log_level, *options]
        environment = {**os.environ, **(env or {})}
        super().__init__(cmd, log, port=port, ready_path="/ready", env=environment)

    def access_statuses(self, route: str = "/predict") -> dict[int, int]:
        """Statuses of the requests the server logged (needs ``log_level="info"``)."""
        counts: dict[int, int] = {}
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("logger") == "imgclf.access" and entry.get("route") == route:
                    counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        return counts


@dataclass
class LoadResult:
    """Outcome of one load phase."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
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


#: Multipart boundary of the benchmark's uploads (never occurs in JPEG data we send).
_BOUNDARY = "imgclf-bench-7d1f3a"


def multipart_request(url: str, image: bytes) -> bytes:
    """A complete keep-alive HTTP/1.1 request uploading ``image`` as the ``file`` field."""
    parts = urlsplit(url)
    body = (
        (
            f'--{_BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{_BOUNDARY}--\r\n".encode()
    )
    head = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: multipart/form-data; boundary={_BOUNDARY}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class RawConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads the answers.

    A load generator must cost far less CPU than the server it measures, and on this machine it
    shares the server's cores: httpx spends several ms of CPU per request, this spends a
    fraction of one (prepared bytes out, status line and Content-Length in).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, data: bytes, timeout_s: float = 60.0) -> int:
        """Send one request; return its status code (the connection is reopened as needed).

        Any failure (timeout, reset, garbled answer) closes the connection, so a late answer
        can never be read as the reply to the next request.
        """
        try:
            async with asyncio.timeout(timeout_s):
                return await self._exchange(data)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, data: bytes) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(data)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(
            (key.strip().lower(), value.strip())
            for key, _, value in (line.partition(":") for line in lines[1:] if line)
        )
        await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _post(
    connection: RawConnection, request: bytes, result: LoadResult, timeout_s: float = 60.0
) -> None:
    start = time.perf_counter()
    try:
        status = await connection.request(request, timeout_s)
        result.record(status, (time.perf_counter() - start) * 1000)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")


def json_request(url: str, body: bytes) -> bytes:
    """A complete keep-alive HTTP/1.1 request posting ``body`` as ``application/json``."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


#: Turns (URL, image) into the complete HTTP request the load generator sends.
RequestEncoder = Callable[[str, bytes], bytes]


def _prepared(
    url: str, images: Sequence[bytes], encode: RequestEncoder = multipart_request
) -> tuple[str, int, list[bytes]]:
    parts = urlsplit(url)
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 80,
        [encode(url, image) for image in images],
    )


async def closed_loop(
    url: str,
    images: Sequence[bytes],
    *,
    concurrency: int,
    requests: int,
    max_seconds: float,
    encode: RequestEncoder = multipart_request,
) -> LoadResult:
    """``concurrency`` clients, each sending its next request as soon as the last one answers.

    Each image becomes the request ``encode`` makes of it (default: a multipart upload), built
    before the clock starts.
    """
    result = LoadResult()
    host, port, prepared = _prepared(url, images, encode)
    counter = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    async def client_loop() -> None:
        connection = RawConnection(host, port)
        try:
            for index in counter:
                if time.monotonic() > deadline:
                    return
                await _post(connection, prepared[index % len(prepared)], result)
        finally:
            connection.close()

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    result.wall_s = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - cpu
    return result


async def open_loop(
    url: str, images: Sequence[bytes], *, rate: float, seconds: float
) -> LoadResult:
    """Requests arrive at ``rate`` per second whatever the answers (a Poisson-free steady pace).

    Each request gets its own connection, so a slow server cannot hold arrivals back on the
    client side: every request's time includes all of its wait at the server.
    """
    result = LoadResult()
    host, port, prepared = _prepared(url, images)
    tasks: list[asyncio.Task[None]] = []

    async def one(request: bytes) -> None:
        connection = RawConnection(host, port)
        try:
            await _post(connection, request, result)
        finally:
            connection.close()

    cpu = time.process_time()
    start = time.perf_counter()
    index = 0
    while (now := time.perf_counter() - start) < seconds:
        due = index / rate
        if due > now:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one(prepared[index % len(prepared)])))
        index += 1
    await asyncio.gather(*tasks)
    result.wall_s = time.perf_counter() - start
    result.client_cpu_s = time.process_time() - cpu
    return result
