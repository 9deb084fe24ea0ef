"""The costly-input phase of bench_reliability: cost that the size of a request does not show.

Against a default ``imgclf serve`` (2 decode threads), for ``--costly-seconds``: 4 workers from
127.0.0.2 send crafted images (progressive JPEGs with repeated scans, 16-bit and RGBA PNGs near
the caps, a 16-bit PNG that fits, animations, a pixel bomb) and URLs of a hostile upstream (gzip
stacked twice to 1 GiB, a deflate bomb, headers or a body trickled a byte at a time); oversized
headers and 100,000 headers arrive over raw sockets; a greedy client at 127.0.0.3 keeps 64
uploads stalled. Meanwhile an ordinary client (127.0.0.1, in a process of its own, as a real
client would be) classifies photos, as it did for the same time before the attack, and the
server's RSS is sampled every 50 ms.

Goals: 0 answers 5xx, every hostile request answered within its budget (decode deadline or URL
deadline plus 1 s), the ordinary client's p99 during the attack at most 2x its p99 before, peak
RSS under 400 MB, RSS within 50 MB of the start 10 s after the attack.

With ``--costly-compare`` the phase first runs against a server set up as before the costly
lane (:data:`PREVIOUS_DESIGN`), then against the default one, so the two ratios come from the
same machine at the same time.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import multiprocessing
import os
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import httpx

from hostile import ordinary_client
from serving_harness import REPO, ServerProcess, percentile, rss_mb

sys.path.insert(0, str(REPO / "tests"))
from imgtools import animated_gif, many_scan_jpeg, raw_png, trickle

SECTION = "## Reliability: costly inputs"
PEAK_RSS_MB = 400.0
RETURN_MB = 50.0
P99_RATIO = 2.0
DECODE_BUDGET_S = 5.0 + 1.0  # the service's decode deadline, plus the trip
URL_BUDGET_S = 10.0 + 1.0  # the service's URL deadline, plus the trip
#: The settings that undo the costly lane: every decode at the server's priority, JPEGs with
#: many scans on the ordinary decode threads, no bound on the images waiting for the thread that
#: takes those over 32 MiB.
PREVIOUS_DESIGN = {
    "IMGCLF_COSTLY_DECODE_NICE": "0",
    "IMGCLF_COSTLY_DECODE_SCAN_PIXELS": "400000000",
    "IMGCLF_COSTLY_DECODE_QUEUE": "1000",
}


@dataclass
class CostlyCase:
    """One costly request and what it must get."""

    name: str
    budget_s: float
    expected: int
    image: bytes | None = None
    upstream_path: str | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    times_s: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        in_budget = all(t <= self.budget_s for t in self.times_s)
        return in_budget and set(self.statuses) == {self.expected}


def costly_cases() -> list[CostlyCase]:
    """Crafted images (varied formats, bit depths, scans, frames) and hostile upstream URLs."""

    def image(name: str, expected: int, data: bytes) -> CostlyCase:
        return CostlyCase(name, DECODE_BUDGET_S, expected, image=data)

    def url(name: str, expected: int, upstream_path: str) -> CostlyCase:
        return CostlyCase(name, URL_BUDGET_S, expected, upstream_path=upstream_path)

    return [
        image("progressive JPEG 4000x4000, 506 scans", 422, many_scan_jpeg((4000, 4000), 500)),
        image("progressive JPEG 4000x4000, 60 scans", 422, many_scan_jpeg((4000, 4000), 54)),
        image("progressive JPEG 2000x2000, 40 scans", 200, many_scan_jpeg((2000, 2000), 34)),
        image("16-bit grey PNG 4800x5000", 413, raw_png((4800, 5000), 16, 0)),
        image("16-bit RGBA PNG 3000x3000", 413, raw_png((3000, 3000), 16, 6)),
        image("8-bit grey+alpha PNG 4000x4000", 413, raw_png((4000, 4000), 8, 4)),
        image("16-bit grey PNG 3000x3000 (fits)", 200, raw_png((3000, 3000), 16, 0)),
        image("8-bit RGBA PNG 2800x2800 (fits)", 200, raw_png((2800, 2800), 8, 6)),
        image("animated GIF, 1001 frames", 422, animated_gif(1001)),
        image("animated GIF 1000x1000, 300 frames", 200, animated_gif(300, (1000, 1000))),
        image("PNG declaring 100000x100000", 413, raw_png((64, 64), 8, 0, (100_000, 100_000))),
        url("URL: Content-Encoding gzip, gzip (1 GiB)", 413, upstream_path="/gzip-gzip"),
        url("URL: Content-Encoding deflate (256 MiB)", 413, upstream_path="/deflate"),
        url("URL: headers trickled 1 byte/s", 400, upstream_path="/trickle-headers"),
        url("URL: body trickled 1 byte/s", 400, upstream_path="/trickle-body"),
    ]


def _compressed(size: int, wrap: int, layers: int) -> bytes:
    """``size`` zero bytes compressed ``layers`` times (zlib ``wrap``: 31 gzip, 15 zlib)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wrap)
    block = bytes(1 << 20)
    pieces = [compressor.compress(block) for _ in range(size >> 20)]
    data = b"".join(pieces) + compressor.flush()
    for _ in range(layers - 1):
        data = gzip.compress(data, 9)
    return data


class _Upstream(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[dict[str, tuple[str, bytes]]] = {}

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/trickle"):
            head = b"HTTP/1.1 200 OK\r\nX-Slow: "
            if self.path == "/trickle-body":
                head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
            trickle(self.wfile, head, every_s=1.0, count=60)
            return
        coding, body = self.bodies[self.path]
        self.send_response(200)
        self.send_header("Content-Encoding", coding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def hostile_upstream() -> Iterator[str]:
    """A local upstream serving compression bombs and trickled answers; yields its base URL."""
    _Upstream.bodies = {
        "/gzip-gzip": ("gzip, gzip", _compressed(1 << 30, 31, 2)),
        "/deflate": ("deflate", _compressed(256 << 20, 15, 1)),
    }
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def _send_case(client: httpx.AsyncClient, base: str, upstream: str, case: CostlyCase) -> None:
    start = time.monotonic()
    try:
        if case.image is not None:
            files = {"file": ("x.img", case.image, "application/octet-stream")}
            answer = await client.post(f"{base}/predict", files=files)
        else:
            answer = await client.post(
                f"{base}/predict", json={"url": upstream + str(case.upstream_path)}
            )
        status = answer.status_code
    except httpx.HTTPError:
        status = 0
    case.times_s.append(time.monotonic() - start)
    case.statuses[status] = case.statuses.get(status, 0) + 1


async def _attackers(
    base: str, upstream: str, cases: list[CostlyCase], stop: asyncio.Event
) -> None:
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:

        async def worker(offset: int) -> None:
            index = offset
            while not stop.is_set():
                await _send_case(client, base, upstream, cases[index % len(cases)])
                index += 1

        await asyncio.gather(*(worker(i * 3) for i in range(4)))


async def _raw_status(
    port: int, data: bytes, source: str = "127.0.0.2", wait_s: float = 10.0
) -> tuple[int, float]:
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait_s)
        return int(line.split()[1]), time.monotonic() - start
    except (OSError, TimeoutError, IndexError, ValueError):
        return 0, time.monotonic() - start
    finally:
        writer.close()


def header_requests() -> dict[str, bytes]:
    """A 1 MB header and 100,000 headers, as raw requests."""
    big = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
    many = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X: 1\r\n" * 100_000 + b"\r\n"
    return {"1 MB header": big, "100,000 headers": many}


async def _greedy(port: int, stop: asyncio.Event) -> dict[int, int]:
    """64 stalled uploads from 127.0.0.3, reopened as the server drops them."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    statuses: dict[int, int] = {}

    async def stall() -> None:
        while not stop.is_set():
            status, _ = await _raw_status(port, head, "127.0.0.3", wait_s=30.0)
            statuses[status] = statuses.get(status, 0) + 1
            await asyncio.sleep(0.2)

    await asyncio.gather(*(stall() for _ in range(64)))
    return statuses


def _ordinary_for(base: str, images: list[bytes], seconds: float) -> list[float]:
    """Photos classified one after another (0.1 s apart) for ``seconds``: the latencies in ms
    (inf: not 200)."""

    async def run() -> list[tuple[int, float]]:
        stop = asyncio.Event()
        answers, _ = await asyncio.gather(
            ordinary_client(base, images, stop, pause_s=0.1), _for(seconds, stop)
        )
        return answers

    return [ms if status == 200 else float("inf") for status, ms in asyncio.run(run())]


async def _ordinary(
    base: str, images: list[bytes], seconds: float, client: ProcessPoolExecutor
) -> list[float]:
    """The ordinary client, in a process of its own: what it measures is the server, not the
    event loop of the process that sends the attack (64 reconnecting uploads, header floods)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(client, _ordinary_for, base, images, seconds)


async def _for(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    stop.set()


@dataclass
class CostlyResult:
    """What the costly-input phase measured."""

    cases: list[CostlyCase]
    headers: dict[str, list[tuple[int, float]]]
    greedy: dict[int, int]
    before_ms: list[float]
    during_ms: list[float]
    rss_start_mb: float
    peak_rss_mb: float
    rss_after_mb: float

    @property
    def server_errors(self) -> int:
        statuses = [s for c in self.cases for s in c.statuses]
        statuses += [s for answers in self.headers.values() for s, _ in answers]
        return sum(1 for s in [*statuses, *self.greedy] if s >= 500)

    @property
    def p99_ratio(self) -> float:
        return percentile(self.during_ms, 99) / percentile(self.before_ms, 99)

    @property
    def headers_ok(self) -> bool:
        return all(s == 431 and t < 1.0 for answers in self.headers.values() for s, t in answers)

    @property
    def passed(self) -> bool:
        return (
            self.server_errors == 0
            and all(c.ok for c in self.cases)
            and self.headers_ok
            and set(self.greedy) <= {429, 408}
            and self.p99_ratio <= P99_RATIO
            and self.peak_rss_mb < PEAK_RSS_MB
            and self.rss_after_mb - self.rss_start_mb <= RETURN_MB
        )


async def _attack(  # type: ignore[no-untyped-def]
    server: ServerProcess,
    upstream: str,
    images: list[bytes],
    seconds: float,
    client: ProcessPoolExecutor,
):
    stop = asyncio.Event()
    cases = costly_cases()
    headers: dict[str, list[tuple[int, float]]] = {name: [] for name in header_requests()}

    async def header_loop() -> None:
        while not stop.is_set():
            for name, data in header_requests().items():
                headers[name].append(await _raw_status(server.port, data))
            await asyncio.sleep(1.0)

    results = await asyncio.gather(
        _ordinary(server.base, images, seconds, client),
        _attackers(server.base, upstream, cases, stop),
        _greedy(server.port, stop),
        header_loop(),
        _for(seconds, stop),
    )
    return cases, headers, results[2], results[0]


def run_costly_phase(
    bundle: Path,
    images: list[bytes],
    log: Path,
    seconds: float = 30.0,
    env: dict[str, str] | None = None,
) -> CostlyResult:
    """Start a server (default, or with ``env``'s ``IMGCLF_*`` settings), measure the ordinary
    client alone, then under the attack."""
    server = ServerProcess(bundle, log, env=env)
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            peak[0] = max(peak[0], rss_mb(server.process.pid))

    client = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        before = client.submit(_ordinary_for, server.base, images, seconds).result()
        start_mb = server.rss_mb
        threading.Thread(target=sample, daemon=True).start()
        with hostile_upstream() as upstream:
            attack = _attack(server, upstream, images, seconds, client)
            cases, headers, greedy, during = asyncio.run(attack)
        time.sleep(10.0)
        sampling.set()
        after_mb = server.rss_mb
    finally:
        client.shutdown()
        server.terminate()
    return CostlyResult(cases, headers, greedy, before, during, start_mb, peak[0], after_mb)


def _fmt_s(values: list[float]) -> str:
    return f"{max(values):.2f}" if values else "-"


def costly_text(
    result: CostlyResult, command: str, load: str, previous: CostlyResult | None = None
) -> str:
    """The docs section: the cases, the headers and greedy client, and the goals; with
    ``previous`` (the same attack on :data:`PREVIOUS_DESIGN`), its latencies side by side."""
    rows = [
        "| costly input | expected | statuses | max s | budget s | ok |",
        "|---|---|---|---|---|---|",
    ]
    for case in result.cases:
        statuses = ", ".join(f"{s} x{n}" for s, n in sorted(case.statuses.items()))
        rows.append(
            f"| {case.name} | {case.expected} | {statuses} | {_fmt_s(case.times_s)} | "
            f"{case.budget_s:g} | {'yes' if case.ok else 'NO'} |"
        )
    for name, answers in result.headers.items():
        statuses = ", ".join(sorted({str(s) for s, _ in answers}))
        ok = all(s == 431 and t < 1 for s, t in answers)
        times = [t for _, t in answers]
        rows.append(
            f"| {name} | 431 | {statuses} x{len(answers)} | {_fmt_s(times)} | 1 | "
            f"{'yes' if ok else 'NO'} |"
        )
    greedy = ", ".join(f"{s} x{n}" for s, n in sorted(result.greedy.items()))
    rows.append(
        "| 64 stalled uploads from one client | 429 (those under the per-client cap: 408) | "
        f"{greedy} | - | - | "
        f"{'yes' if set(result.greedy) <= {429, 408} else 'NO'} |"
    )
    before, during = percentile(result.before_ms, 99), percentile(result.during_ms, 99)
    comparison = []
    if previous is not None:
        comparison = [
            "",
            "| same run, ordinary client | p50 alone ms | p99 alone ms | p50 attack ms | "
            "p99 attack ms | p99 ratio | 5xx | peak RSS MB |",
            "|---|---|---|---|---|---|---|---|",
            _latency_row("before the costly lane (" + _env_text() + ")", previous),
            _latency_row("costly lane (defaults)", result),
        ]
    return (
        "\n".join(
            [
                SECTION,
                "",
                f"`{command}` (server and clients on the same cores, at nice {os.nice(0)}; load "
                f"average before the run: {load})",
                "",
                *rows,
                "",
                f"- 5xx answers: {result.server_errors}",
                f"- ordinary client p99: {before:.0f} ms alone, {during:.0f} ms during the attack "
                f"(ratio {result.p99_ratio:.2f}, goal <= {P99_RATIO:g})",
                f"- server RSS: {result.rss_start_mb:.0f} MB at the start, "
                f"peak {result.peak_rss_mb:.0f} MB "
                f"(goal < {PEAK_RSS_MB:.0f}), {result.rss_after_mb:.0f} MB 10 s after "
                f"(goal: within {RETURN_MB:.0f} MB of the start)",
                f"- all goals met: {'yes' if result.passed else 'NO'}",
                *comparison,
            ]
        )
        + "\n"
    )


def _env_text() -> str:
    return ", ".join(f"{k.removeprefix('IMGCLF_').lower()}={v}" for k, v in PREVIOUS_DESIGN.items())


def _latency_row(name: str, result: CostlyResult) -> str:
    return (
        f"| {name} | {percentile(result.before_ms, 50):.0f} | "
        f"{percentile(result.before_ms, 99):.0f} | {percentile(result.during_ms, 50):.0f} | "
        f"{percentile(result.during_ms, 99):.0f} | {result.p99_ratio:.2f} | "
        f"{result.server_errors} | {result.peak_rss_mb:.0f} |"
    )


def costly_facts(result: CostlyResult) -> dict[str, str]:
    """The numbers README quotes (``<!-- bench:costly.* -->``), as shown there."""
    return {
        "costly.peak_rss_mb": f"{result.peak_rss_mb:.0f}",
        "costly.rss_start_mb": f"{result.rss_start_mb:.0f}",
        "costly.rss_after_mb": f"{result.rss_after_mb:.0f}",
    }
