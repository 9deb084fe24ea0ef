"""The hostile-input phase of bench_reliability: what a hostile client sends, all at once.

While a matrix of hostile requests runs (4 workers, every case at least 5 times, in rounds until
the stalled uploads are answered; at most 50 rounds), stalled uploads hold connections open,
slowloris clients trickle request headers and an ordinary client keeps classifying real photos; a
separate process probes ``/health`` every 50 ms and samples the server's RSS. Every hostile
request must be answered 4xx (never 5xx, never unanswered), ``/health`` must stay fast and the
server's memory bounded.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import multiprocessing
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, unquote

import httpx
from PIL import Image

from serving_harness import ServerProcess, percentile, rss_mb

#: Thresholds the phase is judged by.
HEALTH_P99_MS = 50.0
PEAK_RSS_MB = 400.0

_JSON = {"Content-Type": "application/json"}
_V2 = "/v2/models/{name}/infer"
_TF = "/v1/models/{name}:predict"


@dataclass
class Case:
    """One hostile request: path, httpx keyword arguments and what it stands for."""

    name: str
    path: str
    kwargs: dict[str, Any]
    #: Sent over a plain socket instead (bodies the server refuses before they are sent).
    raw: bytes | None = None
    statuses: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    largest_answer: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures and all(400 <= s < 500 for s in self.statuses)


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width x height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")
        return len(data).to_bytes(4, "big") + kind + data + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def _upload(data: bytes, name: str = "x.jpg") -> dict[str, Any]:
    return {"files": {"file": (name, data, "image/jpeg")}}


def _raw_json(text: str | bytes) -> dict[str, Any]:
    return {"content": text.encode() if isinstance(text, str) else text, "headers": _JSON}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _v2(tensor: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"json": {"inputs": [tensor], **extra}}


def _oversize_upload() -> bytes:
    """The start of an 11 MB upload: a client that waits for the answer before sending the rest.

    The server refuses from the ``Content-Length`` header and closes the connection; a client
    still writing the body then sees a reset instead of the answer (httpx does), which says
    nothing about the server.
    """
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {11 * 1024 * 1024}\r\n\r\n"
    )
    return head.encode() + b"\xff\xd8" + bytes(1022)


async def _raw_exchange(port: int, data: bytes) -> tuple[int, int]:
    """Send ``data``, read until the server closes: (status, answer bytes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        async with asyncio.timeout(30):
            answer = await reader.read()
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, len(answer.partition(b"\r\n\r\n")[2])


def upload_cases(jpeg: bytes) -> list[Case]:
    """Uploads to ``/predict``: bombs, broken and disguised files, oversize bodies."""
    big = io.BytesIO()
    Image.new("L", (6000, 6000)).save(big, "PNG")
    return [
        Case("PNG declaring 100000x100000 px", "/predict",
             _upload(png_bomb(100_000, 100_000), "bomb.png")),
        Case(f"6000x6000 PNG ({len(big.getvalue()) // 1024} KB)", "/predict",
             _upload(big.getvalue())),
        Case("zero-byte upload", "/predict", _upload(b"")),
        Case("truncated JPEG", "/predict", _upload(jpeg[: len(jpeg) // 3])),
        Case("corrupt JPEG", "/predict", _upload(jpeg[:300] + bytes(2000))),
        Case("text named .jpg", "/predict", _upload(b"just some text, not an image" * 10)),
        Case("PDF named .jpg", "/predict",
             _upload(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj")),
        Case("11 MB body (first 1 KB sent)", "/predict", {}, raw=_oversize_upload()),
        Case("unsupported content type", "/predict",
             {"content": b"x", "headers": {"Content-Type": "text/csv"}}),
        Case("multipart without boundary", "/predict",
             {"content": b"x" * 100, "headers": {"Content-Type": "multipart/form-data"}}),
        Case("100 files to /predict/batch", "/predict/batch",
             {"files": [("files", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(100)]}),
        Case("top_k=-1", "/predict", {"json": {"image": _b64(jpeg)}, "params": {"top_k": -1}}),
    ]  # fmt: skip


def json_cases(redirector: str) -> list[Case]:
    """JSON bodies: malformed, deep, huge numbers, junk batches, bad URLs and redirects."""
    deep = "[" * 2000 + "]" * 2000
    huge_int = "1" * 5000
    junk_2mb = '{"images": [' + ",".join(["1"] * 1_000_000) + "]}"
    junk_10mb = '{"images": [' + ",".join(["[]"] * 3_200_000) + "]}"
    cases = [
        Case("bad base64", "/predict", {"json": {"image": "not-base64!!"}}),
        Case("malformed JSON", "/predict", _raw_json('{"image": ')),
        Case("JSON nested 2000 deep", "/predict", _raw_json(deep)),
        Case("5000-digit integer", "/predict", _raw_json('{"image": ' + huge_int + "}")),
        Case("2 MB batch of junk [1,1,...]", "/predict/batch", _raw_json(junk_2mb)),
        Case("10 MB of [],[],... to /predict/batch", "/predict/batch", _raw_json(junk_10mb)),
        Case("33 images in a batch", "/predict/batch",
             {"json": {"images": [{"image": "AAAA"}] * 33}}),
        Case("32 junk objects in a batch", "/predict/batch",
             {"json": {"images": [{"nope": "x" * 10_000}] * 32}}),
        Case("URL to cloud metadata", "/predict",
             {"json": {"url": "http://169.254.169.254/latest/"}}),
        Case("file:// URL", "/predict", {"json": {"url": "file:///etc/passwd"}}),
    ]  # fmt: skip
    for target in ("javascript:alert(1)", "mailto:a@b.example", "data:image/png;base64,AAAA"):
        url = f"{redirector}/redirect?to={quote(target, safe='')}"
        scheme = target.partition(":")[0]
        cases.append(Case(f"URL redirecting to {scheme}:", "/predict", {"json": {"url": url}}))
    return cases


def protocol_cases(model: str) -> list[Case]:
    """KServe V2 and TF Serving bodies: overflowing shapes, wrong types, deep and huge JSON."""
    v2, tf = _V2.format(name=model), _TF.format(name=model)
    pixels = {"name": "p", "datatype": "UINT8"}
    return [
        Case("V2 shape [2^32, 2^32]", v2, _v2({**pixels, "shape": [2**32, 2**32], "data": []})),
        Case("V2 inputs [1]", v2, {"json": {"inputs": [1]}}),
        Case("V2 outputs [1]", v2, _v2({**pixels, "shape": [1], "data": [1]}, outputs=[1])),
        Case("V2 100000 outputs", v2,
             _v2({**pixels, "shape": [1], "data": [1]}, outputs=[1] * 100_000)),
        Case("V2 JSON nested 2000 deep", v2,
             _raw_json('{"inputs": [], "parameters": {"x": ' + "[" * 2000 + "]" * 2000 + "}}")),
        Case("V2 5000-digit shape", v2,
             _raw_json('{"inputs": [{"name": "p", "shape": [' + "9" * 5000 + "]}]}")),
        Case("V2 9 MB of integers (4.5 M values)", v2,
             _raw_json(json.dumps({"inputs": [
                 {**pixels, "shape": [32, 224, 224, 3], "data": [0] * 4_500_000}]},
                 separators=(",", ":")))),
        Case("V2 ragged UINT8 data", v2,
             _v2({**pixels, "shape": [1, 224, 224, 3], "data": [[0], 0]})),
        Case("TF Serving 100000 instances", tf, {"json": {"instances": [1] * 100_000}}),
        Case("TF Serving nested 2000 deep", tf,
             _raw_json('{"instances": ' + "[" * 2000 + "]" * 2000 + "}")),
    ]  # fmt: skip


class _Redirector(BaseHTTPRequestHandler):
    """``/redirect?to=URL`` answers 302 to URL (a page linking where no fetch should go)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", unquote(self.path.partition("to=")[2]))
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def redirect_server() -> Iterator[str]:
    """A local HTTP server whose answers redirect to other schemes."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _watch(port: int, pid: int, stop: Any, out: Any) -> None:
    """Probe ``/health`` every 50 ms on one keep-alive connection; sample the server's RSS."""
    health: list[tuple[int, float]] = []
    peak = rss_mb(pid)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.wait(0.05):
        peak = max(peak, rss_mb(pid))
        start = time.perf_counter()
        try:
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            connection.close()
            status = 0
        health.append((status, 1000 * (time.perf_counter() - start)))
    connection.close()
    out.send((health, peak))


class Watcher:
    """:func:`_watch` in its own process, so the load this process generates does not delay it."""

    def __init__(self, server: ServerProcess) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_watch, args=(server.port, server.process.pid, self._stop, send), daemon=True
        )
        self.health: list[tuple[int, float]] = []
        self.peak_rss_mb = server.rss_mb

    def start(self) -> None:
        self._process.start()

    def finish(self) -> None:
        self._stop.set()
        self.health, self.peak_rss_mb = self._receive.recv()
        self._process.join()


async def _run_cases(
    base: str, cases: list[Case], repeats: int, workers: int, until: asyncio.Event
) -> None:
    """Send every case ``repeats`` times, then go on in rounds until ``until`` is set."""
    queue: asyncio.Queue[Case] = asyncio.Queue()
    rounds = 0

    def refill() -> None:
        nonlocal rounds
        if rounds < repeats or (not until.is_set() and rounds < 50):
            rounds += 1
            for case in cases:
                queue.put_nowait(case)

    port = int(base.rsplit(":", 1)[1])

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            if queue.empty():
                refill()
                if queue.empty():
                    return
            case = queue.get_nowait()
            start = time.perf_counter()
            try:
                if case.raw is not None:
                    status, size = await _raw_exchange(port, case.raw)
                else:
                    response = await client.post(f"{base}{case.path}", **case.kwargs)
                    status, size = response.status_code, len(response.content)
            except (httpx.HTTPError, OSError, TimeoutError, ValueError) as exc:
                case.failures.append(type(exc).__name__)
                continue
            case.times_ms.append(1000 * (time.perf_counter() - start))
            case.statuses[status] = case.statuses.get(status, 0) + 1
            case.largest_answer = max(case.largest_answer, size)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))


async def _stalled_upload(port: int, timeout_s: float) -> tuple[str, float]:
    """Announce 100 KB, send 100 bytes, wait for the answer: (status line or error, seconds)."""
    start = time.perf_counter()
    head = (
        "POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        "Content-Length: 100000\r\n\r\n"
    )
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head.encode() + b"\xff\xd8" * 50)
        async with asyncio.timeout(timeout_s):
            line = (await reader.readline()).decode("latin-1").strip()
        writer.close()
    except (OSError, TimeoutError) as exc:
        line = type(exc).__name__
    return line or "closed", time.perf_counter() - start


async def _slowloris(port: int, seconds: float) -> bool:
    """Trickle a request's headers, one byte a second; True if the server closed on us."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            writer.write(b"X")
            await writer.drain()
            await asyncio.sleep(1.0)
        closed = reader.at_eof()
        writer.close()
        return closed
    except OSError:
        return True


async def ordinary_client(
    base: str, images: list[bytes], stop: asyncio.Event, pause_s: float = 0.5
) -> list[tuple[int, float]]:
    """Classify photos one after another, ``pause_s`` apart: (status, ms) of each (0: failed)."""
    answers: list[tuple[int, float]] = []
    async with httpx.AsyncClient(timeout=60) as client:
        index = 0
        while not stop.is_set():
            files = {"file": ("x.jpg", images[index % len(images)], "image/jpeg")}
            start = time.monotonic()
            try:
                status = (await client.post(f"{base}/predict", files=files)).status_code
            except httpx.HTTPError:
                status = 0
            answers.append((status, (time.monotonic() - start) * 1000))
            index += 1
            await asyncio.sleep(pause_s)
    return answers


@dataclass
class HostileResult:
    """Everything the hostile phase measured."""

    cases: list[Case]
    health: list[tuple[int, float]]
    peak_rss_mb: float
    rss_before_mb: float
    stalled: list[tuple[str, float]]
    slowloris_closed: int
    slowloris_count: int
    ordinary: list[int]
    wall_s: float

    @property
    def hostile_requests(self) -> int:
        return sum(sum(c.statuses.values()) + len(c.failures) for c in self.cases)

    @property
    def server_errors(self) -> int:
        return sum(n for c in self.cases for s, n in c.statuses.items() if s >= 500)

    @property
    def unanswered(self) -> int:
        return sum(len(c.failures) for c in self.cases) + sum(
            1 for line, _ in self.stalled if " 408 " not in f"{line} "
        )

    @property
    def health_p99_ms(self) -> float:
        return percentile([ms for _, ms in self.health], 99)

    @property
    def passed(self) -> bool:
        health_ok = all(s == 200 for s, _ in self.health) and self.health_p99_ms < HEALTH_P99_MS
        return (
            self.server_errors == 0
            and self.unanswered == 0
            and all(c.ok for c in self.cases)
            and health_ok
            and self.peak_rss_mb < PEAK_RSS_MB
        )


def run_hostile_phase(
    server: ServerProcess,
    images: list[bytes],
    *,
    model: str,
    body_timeout_s: float,
    repeats: int = 5,
    stalled: int = 16,
    slowloris: int = 32,
) -> HostileResult:
    """Run every hostile case ``repeats`` times while stalls, slowloris and probes go on."""
    with redirect_server() as redirector:
        cases = upload_cases(images[0]) + json_cases(redirector) + protocol_cases(model)
        watcher = Watcher(server)
        rss_before = server.rss_mb
        start = time.perf_counter()
        watcher.start()
        try:
            result = asyncio.run(
                _all_at_once(server, images, cases, repeats, body_timeout_s, stalled, slowloris)
            )
        finally:
            watcher.finish()
    stalls, closed, ordinary = result
    return HostileResult(
        cases=cases,
        health=watcher.health,
        peak_rss_mb=watcher.peak_rss_mb,
        rss_before_mb=rss_before,
        stalled=stalls,
        slowloris_closed=sum(closed),
        slowloris_count=slowloris,
        ordinary=ordinary,
        wall_s=time.perf_counter() - start,
    )


async def _all_at_once(
    server: ServerProcess,
    images: list[bytes],
    cases: list[Case],
    repeats: int,
    body_timeout_s: float,
    stalled: int,
    slowloris: int,
) -> tuple[list[tuple[str, float]], list[bool], list[int]]:
    stop = asyncio.Event()
    ordinary = asyncio.create_task(ordinary_client(server.base, images, stop))
    lingering = body_timeout_s + 5
    loris = [asyncio.create_task(_slowloris(server.port, lingering)) for _ in range(slowloris)]
    stalls = [
        asyncio.create_task(_stalled_upload(server.port, body_timeout_s + 10))
        for _ in range(stalled)
    ]
    stalls_done = asyncio.Event()
    matrix = asyncio.create_task(_run_cases(server.base, cases, repeats, 4, stalls_done))
    stall_results = await asyncio.gather(*stalls)
    stalls_done.set()
    await matrix
    closed = await asyncio.gather(*loris)
    stop.set()
    return stall_results, closed, [status for status, _ in await ordinary]


def case_rows(result: HostileResult) -> list[list[str]]:
    """One table row per hostile case."""
    rows = []
    for case in result.cases:
        statuses = ", ".join(f"{s}" for s in sorted(case.statuses))
        if case.failures:
            statuses += f" + {len(case.failures)} unanswered ({', '.join(set(case.failures))})"
        rows.append(
            [
                case.name,
                f"`{case.path}`",
                str(sum(case.statuses.values()) + len(case.failures)),
                statuses,
                f"{max(case.times_ms):.0f}" if case.times_ms else "-",
                f"{case.largest_answer:,}",
                "yes" if case.ok else "**NO**",
            ]
        )
    return rows


def summary(result: HostileResult, body_timeout_s: float) -> str:
    """The phase in a few sentences, against its thresholds."""
    probes = [ms for _, ms in result.health]
    health_ok = sum(1 for s, _ in result.health if s == 200)
    stall_408 = sum(1 for line, _ in result.stalled if " 408 " in f"{line} ")
    stall_s = [s for _, s in result.stalled]
    ordinary_ok = result.ordinary.count(200)
    verdict = "**all met**" if result.passed else "**NOT all met**"
    return (
        f"{result.hostile_requests} hostile requests in {result.wall_s:.0f} s: "
        f"**{result.server_errors} answered 5xx**, {result.unanswered} unanswered. "
        f"At the same time {len(result.stalled)} stalled uploads (100 KB announced, 100 bytes "
        f"sent) got {stall_408} x 408 after {min(stall_s):.1f}-{max(stall_s):.1f} s "
        f"(body deadline {body_timeout_s:g} s), {result.slowloris_count} slowloris connections "
        f"trickled headers for {body_timeout_s + 5:g} s, and an ordinary client classifying a "
        f"photo every 0.5 s got {ordinary_ok} x 200 of {len(result.ordinary)} "
        f"({json.dumps({str(k): result.ordinary.count(k) for k in sorted(set(result.ordinary))})})."
        f" `/health`, probed every 50 ms: {health_ok} / {len(probes)} answered 200, "
        f"p50 {percentile(probes, 50):.1f} ms, **p99 {result.health_p99_ms:.1f} ms**, max "
        f"{max(probes):.1f} ms (goal p99 < {HEALTH_P99_MS:.0f} ms). Server RSS "
        f"{result.rss_before_mb:.0f} MB before, **peak {result.peak_rss_mb:.0f} MB** (goal < "
        f"{PEAK_RSS_MB:.0f} MB). Goals: {verdict}."
    )
