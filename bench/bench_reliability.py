"""Reliability of ``imgclf serve`` under bad input, overload, SIGTERM and a sustained run.

Against a real uvicorn subprocess on 127.0.0.1, with real clothing test JPEGs:

1. **bad inputs**: each hostile or broken request must answer 4xx within 1 s (the 100000x100000
   PNG bomb within 0.1 s);
1b. **hostile inputs, all at once** (``hostile.py``): a matrix of hostile requests (bombs,
   oversize and junk bodies, deep JSON, huge numbers and shapes, bad content types, redirects to
   other schemes, ...) sent by 4 workers, in rounds, while stalled uploads, slowloris headers
   and an ordinary client run: 0 answers 5xx, ``/health`` p99 under 50 ms meanwhile, server peak
   RSS under 400 MB;
2. **2x overload**: requests arrive at twice the measured peak on a bounded queue; excess must be
   refused (503) in under 50 ms while accepted requests keep their latency and ``/health`` answers;
3. **SIGTERM under load**: no request already sent may fail; the process exits within its grace;
4. **sustained**: a bounded run at ~70% of peak with 0 errors; server memory growth per 1000
   requests is measured;
5. **costly inputs** (``costly.py``, its own section): crafted images whose decode cost their size
   does not show, hostile upstreams, oversized headers and a greedy client, against a default
   server: 0 5xx, every request within its budget, an ordinary client's p99 at most 2x, peak RSS
   under 400 MB and back within 50 MB 10 s after.

Usage::

    .venv/bin/python bench/bench_reliability.py [--bundle DIR] [--sustained-seconds 150]
        [--hostile-only | --costly-only] [--costly-seconds 30] [--costly-compare]
        [--update-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import struct
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from common import command_line, markdown_table, update_docs
from costly import PREVIOUS_DESIGN, costly_facts, costly_text, run_costly_phase
from costly import SECTION as COSTLY_SECTION
from hostile import HostileResult, case_rows, run_hostile_phase, summary
from serving_harness import (
    LoadResult,
    ServerProcess,
    closed_loop,
    load_test_jpegs,
    open_loop,
    percentile,
    resolve_bundle,
)

SECTION = "## Reliability"


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1024))
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def bad_requests(jpeg: bytes) -> list[tuple[str, dict[str, Any], float]]:
    """(name, httpx request kwargs, time limit in seconds)."""
    big = io.BytesIO()
    Image.new("L", (6000, 6000)).save(big, "PNG")

    def upload(data: bytes, name: str = "x.jpg") -> dict[str, Any]:
        return {"files": {"file": (name, data, "image/jpeg")}}

    return [
        ("PNG declaring 100000x100000 px", upload(png_bomb(100_000, 100_000), "bomb.png"), 0.1),
        (f"6000x6000 PNG ({len(big.getvalue()) // 1024} KB)", upload(big.getvalue()), 1.0),
        ("zero-byte upload", upload(b""), 1.0),
        ("truncated JPEG", upload(jpeg[: len(jpeg) // 3]), 1.0),
        ("corrupt JPEG", upload(jpeg[:300] + bytes(2000)), 1.0),
        ("text named .jpg", upload(b"just some text, not an image" * 10), 1.0),
        ("PDF named .jpg", upload(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj"), 1.0),
        ("11 MB body", upload(b"\xff\xd8" + bytes(11 * 1024 * 1024)), 1.0),
        ("bad base64", {"json": {"image": "not-base64!!"}}, 1.0),
        ("malformed JSON", {"content": b'{"image": ', "headers": _json}, 1.0),
        ("URL to cloud metadata", {"json": {"url": "http://169.254.169.254/latest/"}}, 1.0),
        ("file:// URL", {"json": {"url": "file:///etc/passwd"}}, 1.0),
        ("unsupported content type", {"content": b"x", "headers": _csv}, 1.0),
        ("top_k=-1", {"json": {"image": _b64(jpeg)}, "params": {"top_k": -1}}, 1.0),
    ]  # fmt: skip


_json = {"Content-Type": "application/json"}
_csv = {"Content-Type": "text/csv"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def check_bad_inputs(base: str, jpeg: bytes, repeats: int = 5) -> tuple[list[list[str]], bool]:
    rows, all_ok = [], True
    with httpx.Client(timeout=10) as client:
        client.get(f"{base}/health")
        for name, kwargs, limit in bad_requests(jpeg):
            times, statuses = [], set()
            for _ in range(repeats):
                start = time.perf_counter()
                response = client.post(f"{base}/predict", **kwargs)
                times.append(time.perf_counter() - start)
                statuses.add(response.status_code)
            ok = all(400 <= s < 500 for s in statuses)
            ok = ok and statistics.median(times) < limit and max(times) < 1.0
            all_ok &= ok
            rows.append(
                [
                    name,
                    ", ".join(str(s) for s in sorted(statuses)),
                    f"{1000 * statistics.median(times):.1f}",
                    f"{1000 * max(times):.1f}",
                    f"< {1000 * limit:.0f}",
                    "yes" if ok else "**NO**",
                ]
            )
    return rows, all_ok


async def _probe_health(base: str, stop: asyncio.Event, out: list[tuple[int, float]]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = (await client.get(f"{base}/health")).status_code
            except httpx.HTTPError:
                status = 0
            out.append((status, 1000 * (time.perf_counter() - start)))
            await asyncio.sleep(0.1)


async def load_with_probe(
    base: str, images: list[bytes], rate: float, seconds: float
) -> tuple[LoadResult, list[tuple[int, float]]]:
    stop = asyncio.Event()
    probes: list[tuple[int, float]] = []
    probe = asyncio.create_task(_probe_health(base, stop, probes))
    result = await open_loop(f"{base}/predict", images, rate=rate, seconds=seconds)
    stop.set()
    await probe
    return result, probes


def overload(server: ServerProcess, images: list[bytes], peak: float) -> dict[str, Any]:
    base_result, _ = asyncio.run(load_with_probe(server.base, images, 0.5 * peak, 8))
    over, probes = asyncio.run(load_with_probe(server.base, images, 2.0 * peak, 10))
    return {"baseline": base_result, "overload": over, "probes": probes}


async def _sigterm_run(
    server: ServerProcess, images: list[bytes], after_s: float
) -> dict[str, Any]:
    """16 clients post until just after SIGTERM; sort what happened to requests sent before it."""
    before: list[str] = []  # "200", another status, or the client-side exception name
    signal_at = {"t": float("inf")}

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        while (started := time.monotonic()) < signal_at["t"] + 0.5:
            files = {"file": ("x.jpg", images[index % len(images)], "image/jpeg")}
            try:
                outcome = str(
                    (await client.post(f"{server.base}/predict", files=files)).status_code
                )
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if started < signal_at["t"]:
                before.append(outcome)
            index += 16

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=16)) as client:
        tasks = [asyncio.create_task(client_loop(client, i)) for i in range(16)]
        await asyncio.sleep(after_s)
        signal_at["t"] = time.monotonic()
        exit_s = await asyncio.to_thread(server.terminate, 60.0)
        await asyncio.gather(*tasks)
    return {"before": before, "exit_s": exit_s, "server_saw": server.access_statuses()}


def sustained(
    server: ServerProcess, images: list[bytes], rate: float, seconds: float
) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []

    async def run() -> LoadResult:
        load = asyncio.create_task(
            open_loop(f"{server.base}/predict", images, rate=rate, seconds=seconds)
        )
        start = time.perf_counter()
        while not load.done():
            samples.append((time.perf_counter() - start, server.rss_mb))
            await asyncio.sleep(2.0)
        return await load

    result = asyncio.run(run())
    warm = [s for s in samples if s[0] >= min(15.0, seconds / 4)]
    growth = warm[-1][1] - warm[0][1] if len(warm) > 1 else float("nan")
    requests_after = rate * (warm[-1][0] - warm[0][0]) if len(warm) > 1 else 0
    return {
        "result": result,
        "rss_start": warm[0][1] if warm else float("nan"),
        "rss_end": warm[-1][1] if warm else float("nan"),
        "growth_per_1000": growth / (requests_after / 1000) if requests_after else float("nan"),
        "rss_peak": max(s[1] for s in samples),
    }


def _fmt(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


HOSTILE_HEADER = ["hostile input", "path", "sent", "status", "max ms", "answer bytes", "ok"]


def hostile_text(hostile: HostileResult, args: argparse.Namespace) -> str:
    return "\n\n".join(
        [
            "**Hostile inputs, all at once** (4 concurrent workers send every case at least 5 "
            "times, in rounds until the stalled uploads are answered; ok means every answer 4xx; "
            "answer bytes is the largest answer):",
            markdown_table(HOSTILE_HEADER, case_rows(hostile)),
            summary(hostile, args.body_timeout_s),
        ]
    )


def report(
    bad_rows: list[list[str]],
    bad_ok: bool,
    hostile: HostileResult,
    peak: float,
    over: dict[str, Any],
    term: dict[str, Any],
    sus: dict[str, Any],
    args: argparse.Namespace,
) -> str:
    bad = markdown_table(["bad input", "status", "median ms", "max ms", "limit ms", "ok"], bad_rows)
    base, load = over["baseline"], over["overload"]
    probes = over["probes"]
    overload_rows = [
        ["offered rate (req/s)", f"{0.5 * peak:.1f}", f"{2 * peak:.1f}"],
        ["answered 200", str(base.ok), str(load.ok)],
        ["refused 503", str(base.statuses.get(503, 0)), str(load.statuses.get(503, 0))],
        ["other failures", str(_failures(base)), str(_failures(load))],
        ["accepted p50 / p99 ms", f"{_fmt(base.latencies_ms, 50)} / {_fmt(base.latencies_ms, 99)}",
         f"{_fmt(load.latencies_ms, 50)} / {_fmt(load.latencies_ms, 99)}"],
        ["refused p50 / p99 ms", "-", f"{_fmt(load.refused_ms, 50)} / {_fmt(load.refused_ms, 99)}"],
        ["/health during load: ok / probes, p99 ms", "-",
         f"{sum(1 for s, _ in probes if s == 200)} / {len(probes)}, "
         f"{_fmt([ms for _, ms in probes], 99)}"],
    ]  # fmt: skip
    res = sus["result"]
    return "\n\n".join(
        [
            SECTION,
            f"`{command_line()}` (server, clients and model on the same 2 cores)",
            "**Bad inputs** (each sent 5 times to `/predict`; time is the client's round trip; ok "
            "means every answer 4xx, median under the limit and max under 1 s):",
            bad,
            hostile_text(hostile, args),
            f"**2x overload**: peak measured first at {peak:.1f} req/s (closed loop, 32 clients); "
            f"then open-loop arrivals at half and at twice that rate, queue of {args.queue_size} "
            "images, max batch 16:",
            markdown_table(["", "50% of peak", "200% of peak"], overload_rows),
            sigterm_text(term, args.grace),
            f"**Sustained run**: {args.sustained_seconds:.0f} s at {0.7 * peak:.1f} req/s "
            f"(70% of peak): {res.ok} answered 200, {_failures(res) + res.statuses.get(503, 0)} "
            f"errors, p50 {_fmt(res.latencies_ms, 50)} ms, p99 {_fmt(res.latencies_ms, 99)} ms; "
            f"server RSS {sus['rss_start']:.0f} MB after warm-up, {sus['rss_end']:.0f} MB at the "
            f"end (peak {sus['rss_peak']:.0f} MB): {sus['growth_per_1000']:+.2f} MB per 1000 "
            "requests.",
            goals_text(bad_ok, hostile, over, term, sus),
        ]
    )


def goals_text(
    bad_ok: bool,
    hostile: HostileResult,
    over: dict[str, Any],
    term: dict[str, Any],
    sus: dict[str, Any],
) -> str:
    """Each phase against its goal, from the numbers above."""
    refused = over["overload"].refused_ms
    refused_p99 = percentile(refused, 99) if refused else float("nan")
    saw = term["server_saw"]
    res = sus["result"]
    checks = [
        ("every bad input answered 4xx in time", bad_ok),
        (
            f"hostile inputs: 0 answers 5xx (got {hostile.server_errors}), /health p99 "
            f"{hostile.health_p99_ms:.1f} ms < 50 ms, peak RSS {hostile.peak_rss_mb:.0f} MB "
            "< 400 MB",
            hostile.passed,
        ),
        (f"2x overload: refused in p99 {refused_p99:.0f} ms < 50 ms", refused_p99 < 50),
        ("SIGTERM: every request the server received answered 200", set(saw) <= {200}),
        ("sustained run: 0 errors", _failures(res) + res.statuses.get(503, 0) == 0),
    ]
    return (
        "Against the goals: "
        + "; ".join(f"{text}: {'met' if ok else '**NOT met**'}" for text, ok in checks)
        + "."
    )


def sigterm_text(term: dict[str, Any], grace: float) -> str:
    before: list[str] = term["before"]
    ok = before.count("200")
    never_read = {k: before.count(k) for k in set(before) if not k.isdigit()}
    statuses = {k: before.count(k) for k in set(before) if k.isdigit() and k != "200"}
    saw = term["server_saw"]
    return (
        f"**SIGTERM under load** (16 clients, SIGTERM after 3 s, grace {grace:.0f} s): "
        f"{len(before)} requests sent before the signal; {ok} answered 200, "
        f"{sum(statuses.values())} answered an error status {statuses or ''}, "
        f"{sum(never_read.values())} lost their connection before the server read them "
        f"{never_read or ''}. The server logged {sum(saw.values())} requests, statuses {saw}: "
        + (
            "every request it had received was answered 200. "
            if set(saw) <= {200}
            else "**some requests it had received failed**. "
        )
        + f"It exited {term['exit_s']:.2f} s after the signal."
    )


def _failures(result: LoadResult) -> int:
    return sum(n for code, n in result.statuses.items() if code not in (200, 503)) + len(
        result.errors
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle with an ONNX artifact")
    parser.add_argument("--sustained-seconds", type=float, default=150)
    parser.add_argument("--queue-size", type=int, default=32)
    parser.add_argument("--grace", type=float, default=20)
    parser.add_argument("--body-timeout-s", type=float, default=15)
    parser.add_argument(
        "--hostile-only", action="store_true", help="only the bad- and hostile-input phases"
    )
    parser.add_argument(
        "--costly-only", action="store_true", help="only the costly-input phase (its own section)"
    )
    parser.add_argument("--costly-seconds", type=float, default=30)
    parser.add_argument(
        "--costly-compare",
        action="store_true",
        help="run the costly-input phase on the design before the costly lane first, and "
        "show both side by side",
    )
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    if args.hostile_only and args.update_docs:
        parser.error("--update-docs needs every phase; drop --hostile-only")

    bundle = resolve_bundle(args.bundle)
    images = load_test_jpegs()
    # The redirecting page and the hostile upstreams are on 127.0.0.1.
    os.environ["IMGCLF_URL_ALLOW_LOOPBACK"] = "true"
    if args.costly_only:
        run_costly(bundle, images, args)
        return
    options = ["--queue-size", str(args.queue_size), "--graceful-shutdown-s", str(args.grace)]
    options += ["--body-timeout-s", str(args.body_timeout_s)]
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(bundle, Path(tmp) / "main.log", *options)
        try:
            bad_rows, bad_ok = check_bad_inputs(server.base, images[0])
            print(markdown_table(["bad input", "status", "median", "max", "limit", "ok"], bad_rows))
            model = httpx.get(f"{server.base}/model", timeout=10).json()["name"]
            hostile = run_hostile_phase(
                server, images, model=model, body_timeout_s=args.body_timeout_s
            )
            print(hostile_text(hostile, args))
            print("hostile goals met:", hostile.passed)
            if args.hostile_only:
                return
            url = f"{server.base}/predict"
            peak = asyncio.run(
                closed_loop(url, images, concurrency=32, requests=400, max_seconds=40)
            ).throughput
            print(f"peak {peak:.1f} req/s")
            over = overload(server, images, peak)
            sus = sustained(server, images, 0.7 * peak, args.sustained_seconds)
        finally:
            server.terminate()
        term_server = ServerProcess(bundle, Path(tmp) / "term.log", *options, log_level="info")
        term = asyncio.run(_sigterm_run(term_server, images, 3.0))
    text = report(bad_rows, bad_ok, hostile, peak, over, term, sus, args)
    print(text)
    print("bad inputs all ok:", bad_ok)
    if args.update_docs:
        update_docs(SECTION, text)
    run_costly(bundle, images, args)


def run_costly(bundle: Path, images: list[bytes], args: argparse.Namespace) -> None:
    """The costly-input phase on a fresh default server; prints (and records) its section."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        previous = None
        if args.costly_compare:
            previous = run_costly_phase(
                bundle, images, Path(tmp) / "previous.log", args.costly_seconds, PREVIOUS_DESIGN
            )
        result = run_costly_phase(bundle, images, Path(tmp) / "costly.log", args.costly_seconds)
    text = costly_text(result, command_line(), load, previous)
    print(text)
    if args.update_docs:
        update_docs(COSTLY_SECTION, text, costly_facts(result))


if __name__ == "__main__":
    main()
