"""REST serving throughput: micro-batched server vs naive server vs the model-only ceiling.

In one run, on the same machine and bundle:

- **model ceiling**: ``Predictor.run_pixels`` on pre-decoded batches (no decode, no HTTP);
- **model + decode**: the same, decoding the JPEGs in-process first (what the server must also do);
- **REST, micro-batched**: ``imgclf serve`` (uvicorn subprocess) with many concurrent keep-alive
  clients posting real clothing test JPEGs to ``/predict``: with its defaults (instances and
  threads chosen from the CPUs the process may use), with one instance on all threads, and with
  one single-threaded instance per thread;
- **REST, naive**: the same server with ``--max-batch-size 1`` (one request, one model call).

Usage::

    .venv/bin/python bench/bench_serving.py [--bundle DIR] [--update-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import command_line, markdown_table, update_docs
from serving_harness import (
    LoadResult,
    ServerProcess,
    closed_loop,
    load_test_jpegs,
    percentile,
    resolve_bundle,
)

SECTION = "## REST serving throughput"


@dataclass
class Ceiling:
    """In-process figures: the model alone (two ways to use the cores), decode + model, CPU cost.

    ``one_stream`` runs one batch at a time on all runtime threads; ``streams`` runs as many
    single-threaded batches side by side as there are threads. The ceiling is the better one.
    """

    one_stream: float
    one_stream_cpu_ms: float
    streams: float
    streams_cpu_ms: float
    with_decode: float
    with_decode_cpu_ms: float
    decode_cpu_ms: float
    artifact: str

    @property
    def model_only(self) -> float:
        """The ceiling: the faster way of running the model alone."""
        return max(self.one_stream, self.streams)

    @property
    def model_cpu_ms(self) -> float:
        """CPU per image of the model, run the faster way."""
        return self.streams_cpu_ms if self.streams > self.one_stream else self.one_stream_cpu_ms


def pace(step: Callable[[int], int], seconds: float, workers: int = 1) -> tuple[float, float]:
    """Images/s and process CPU ms per image (every thread included) of ``step`` run in a loop.

    ``step(worker)`` processes some images and returns how many; ``workers`` threads call it.
    """
    done = [0] * workers
    start, cpu = time.perf_counter(), time.process_time()

    def loop(worker: int) -> None:
        while time.perf_counter() - start < seconds:
            done[worker] += step(worker)

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = sum(done)
    return total / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / total


def model_ceiling(
    bundle: Path, images: list[bytes], *, threads: int, batch: int, seconds: float
) -> Ceiling:
    """Images/s of the model alone and of decode + model in this process, with CPU per image."""
    from imgclf.inference import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    single = Predictor.from_bundle(bundle, threads=1)
    pixels = np.stack([predictor.load_pixels(data) for data in images])
    predictor.run_pixels(pixels[:batch])  # warm-up
    single.run_pixels(pixels[:batch])
    rng = np.random.default_rng(0)

    def chunk() -> slice:
        start = int(rng.integers(0, len(images) - batch))
        return slice(start, start + batch)

    def model_only(_: int) -> int:
        predictor.run_pixels(pixels[chunk()])
        return batch

    def model_streams(_: int) -> int:
        single.run_pixels(pixels[chunk()])
        return batch

    def with_decode(_: int) -> int:
        decoded = np.stack([predictor.load_pixels(d) for d in images[chunk()]])
        predictor.run_pixels(decoded)
        return batch

    def decode_only(_: int) -> int:
        for data in images[chunk()]:
            predictor.load_pixels(data)
        return batch

    one_stream, one_stream_cpu = pace(model_only, seconds)
    streams, streams_cpu = pace(model_streams, seconds, workers=threads)
    decode_rate, decode_rate_cpu = pace(with_decode, seconds)
    _, decode_cpu = pace(decode_only, seconds)
    return Ceiling(
        one_stream,
        one_stream_cpu,
        streams,
        streams_cpu,
        decode_rate,
        decode_rate_cpu,
        decode_cpu,
        predictor.artifact,
    )


def serve_and_load(
    bundle: Path, images: list[bytes], log: Path, args: argparse.Namespace, *options: str
) -> tuple[LoadResult, float]:
    server = ServerProcess(bundle, log, *options)
    try:
        url = f"{server.base}/predict"
        asyncio.run(closed_loop(url, images, concurrency=8, requests=40, max_seconds=30))
        cpu_before = server.cpu_s
        result = asyncio.run(
            closed_loop(
                url,
                images,
                concurrency=args.concurrency,
                requests=args.requests,
                max_seconds=args.max_seconds,
            )
        )
        result.server_cpu_s = server.cpu_s - cpu_before
        return result, server.rss_mb
    finally:
        server.terminate()


def row(name: str, result: LoadResult, ceiling: float, rss: float) -> list[str]:
    lat = result.latencies_ms
    failed = sum(n for code, n in result.statuses.items() if code != 200) + len(result.errors)
    return [
        name,
        f"{result.throughput:.1f}",
        f"{100 * result.throughput / ceiling:.0f}%",
        f"{statistics.median(lat):.0f}" if lat else "-",
        f"{percentile(lat, 99):.0f}" if lat else "-",
        str(failed),
        f"{1000 * result.server_cpu_s / max(1, result.ok):.1f}",
        f"{100 * result.server_cpu_s / result.wall_s:.0f}%" if result.wall_s else "-",
        f"{1000 * result.client_cpu_s / max(1, result.ok):.2f}",
        f"{rss:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle with an ONNX artifact")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=800, help="requests per server phase")
    parser.add_argument("--max-seconds", type=float, default=60, help="cap per server phase")
    parser.add_argument("--threads", type=int, default=2, help="runtime threads")
    parser.add_argument("--batch", type=int, default=16, help="max batch size")
    parser.add_argument("--ceiling-seconds", type=float, default=10, help="per ceiling mode")
    parser.add_argument("--update-docs", action="store_true", help="rewrite docs section")
    args = parser.parse_args()

    bundle = resolve_bundle(args.bundle)
    images = load_test_jpegs()
    ceiling = model_ceiling(
        bundle, images, threads=args.threads, batch=args.batch, seconds=args.ceiling_seconds
    )
    model_only = ceiling.model_only
    print(f"ceiling {model_only:.1f} images/s, with decode {ceiling.with_decode:.1f}", flush=True)
    batch_option = ("--max-batch-size", str(args.batch))
    threads = ("--threads", str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        default, default_rss = serve_and_load(
            bundle, images, Path(tmp) / "default.log", args, *batch_option
        )
        print(f"batched, defaults {default.throughput:.1f} req/s", flush=True)
        batched, batched_rss = serve_and_load(
            bundle,
            images,
            Path(tmp) / "batched.log",
            args,
            *batch_option,
            "--instances",
            "1",
            *threads,
        )
        print(f"batched, one instance {batched.throughput:.1f} req/s", flush=True)
        per_core, per_core_rss = serve_and_load(
            bundle,
            images,
            Path(tmp) / "instances.log",
            args,
            *batch_option,
            *("--instances", str(args.threads), "--threads", "1"),
        )
        print(f"batched, {args.threads} instances {per_core.throughput:.1f} req/s", flush=True)
        naive, naive_rss = serve_and_load(
            bundle,
            images,
            Path(tmp) / "naive.log",
            args,
            *("--max-batch-size", "1", "--instances", "1", *threads),
        )

    header = [
        "mode", "images/s", "of ceiling", "p50 ms", "p99 ms", "failed", "CPU ms/img",
        "CPU use", "client CPU ms/req", "server RSS MB",
    ]  # fmt: skip
    both = ceiling.model_cpu_ms + ceiling.decode_cpu_ms
    ceiling_note = f"{args.threads} threads, one batch at a time"
    streams_note = f"{args.threads} single-threaded batches side by side"

    def in_process(name: str, rate: float | None, cpu_ms: float) -> list[str]:
        """A row measured in this process: no latency, failures, CPU use, client or RSS."""
        rate_cells = (
            ["-", "-"] if rate is None else [f"{rate:.1f}", f"{100 * rate / model_only:.0f}%"]
        )
        return [name, *rate_cells, *["-"] * 3, f"{cpu_ms:.1f}", *["-"] * 3]

    rows = [
        in_process(f"model alone ({ceiling_note})", ceiling.one_stream, ceiling.one_stream_cpu_ms),
        in_process(f"model alone ({streams_note})", ceiling.streams, ceiling.streams_cpu_ms),
        in_process("JPEG decode + resize alone, one thread", None, ceiling.decode_cpu_ms),
        in_process(
            f"model + JPEG decode, in-process ({ceiling_note})",
            ceiling.with_decode,
            ceiling.with_decode_cpu_ms,
        ),
        row(
            f"REST micro-batched (max batch {args.batch}), default instances and threads",
            default,
            model_only,
            default_rss,
        ),
        row(
            f"REST micro-batched, `--instances 1 --threads {args.threads}`",
            batched,
            model_only,
            batched_rss,
        ),
        row(
            f"REST micro-batched, `--instances {args.threads} --threads 1`",
            per_core,
            model_only,
            per_core_rss,
        ),
        row("REST naive (one request, one model call, one instance)", naive, model_only, naive_rss),
    ]
    cores = os.cpu_count() or 1
    bound = 1000 * cores / both
    budget = (
        "The ceiling (100%) is the faster of the two model-alone rows. "
        f"CPU budget: the model costs {ceiling.model_cpu_ms:.1f} ms of CPU per image and decoding "
        f"{ceiling.decode_cpu_ms:.1f} ms, so {cores} fully used cores can serve at most "
        f"{bound:.0f} images/s ({100 * bound / model_only:.0f}% of the ceiling) even if HTTP, "
        "parsing and queueing cost nothing."
    )
    table = markdown_table(header, rows)
    print(table)
    meta = (
        f"Bundle `{bundle.name}` (artifact `{ceiling.artifact}`), "
        f"{len(images)} clothing test JPEGs, "
        f"{args.concurrency} concurrent keep-alive clients (raw asyncio HTTP/1.1), "
        f"{args.requests} requests per server phase, "
        f"runtime threads {args.threads}, Python {platform.python_version()}. Clients, server "
        "and model share the same 2 cores."
    )
    print(meta)
    print(budget)
    facts = {
        "serving.rest_ips": f"{batched.throughput:.0f}",
        "serving.rest_p50_ms": rows[5][3],  # rows[4] is the defaults row
        "serving.instances_ips": f"{per_core.throughput:.0f}",
        "serving.instances_p50_ms": rows[6][3],
        "serving.instances_of_ceiling": rows[6][2],
        "serving.model_cpu_ms": f"{ceiling.model_cpu_ms:.1f}",
        "serving.decode_cpu_ms": f"{ceiling.decode_cpu_ms:.1f}",
        "serving.cpu_bound_of_ceiling": f"{100 * bound / model_only:.0f}%",
    }
    if args.update_docs:
        command = f"`{command_line()}`"
        text = f"{SECTION}\n\n{command}\n\n{meta}\n\n{table}\n\n{budget}\n"
        update_docs(SECTION, text, facts)


if __name__ == "__main__":
    main()
