"""REST serving throughput: micro-batched server vs naive server vs the model-only ceiling.

In one run, on the same machine and bundle:

- **model ceiling**: ``Predictor.run_pixels`` on pre-decoded batches (no decode, no HTTP);
- **model + decode**: the same, decoding the JPEGs in-process first (what the server must also do);
- **REST, micro-batched**: ``imgclf serve`` (uvicorn subprocess) with many concurrent keep-alive
  clients posting real clothing test JPEGs to ``/predict``;
- **REST, naive**: the same server with ``--max-batch-size 1`` (one request, one model call).

Usage::

    .venv/bin/python bench/bench_serving.py [--bundle DIR] [--update-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import markdown_table, update_docs
from serving_harness import (
    LoadResult,
    ServerProcess,
    closed_loop,
    load_test_jpegs,
    percentile,
    resolve_bundle,
)

SECTION = "## REST serving throughput"


def model_ceiling(
    bundle: Path, images: list[bytes], *, threads: int, batch: int, seconds: float
) -> tuple[float, float, str]:
    """Images/s of the model alone and of decode + model, in this process."""
    from imgclf.inference import Predictor

    predictor = Predictor.from_bundle(bundle, threads=threads)
    pixels = np.stack([predictor.load_pixels(data) for data in images])
    predictor.run_pixels(pixels[:batch])  # warm-up

    def pace(step: callable) -> float:  # type: ignore[valid-type]
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            done += step(done)
        return done / (time.perf_counter() - start)

    def model_only(done: int) -> int:
        start = done % (len(pixels) - batch)
        predictor.run_pixels(pixels[start : start + batch])
        return batch

    def with_decode(done: int) -> int:
        start = done % (len(images) - batch)
        chunk = np.stack([predictor.load_pixels(d) for d in images[start : start + batch]])
        predictor.run_pixels(chunk)
        return batch

    return pace(model_only), pace(with_decode), predictor.artifact


def serve_and_load(
    bundle: Path, images: list[bytes], log: Path, args: argparse.Namespace, *options: str
) -> tuple[LoadResult, float]:
    server = ServerProcess(bundle, log, "--threads", str(args.threads), *options)
    try:
        url = f"{server.base}/predict"
        asyncio.run(closed_loop(url, images, concurrency=8, requests=40, max_seconds=30))
        result = asyncio.run(
            closed_loop(
                url,
                images,
                concurrency=args.concurrency,
                requests=args.requests,
                max_seconds=args.max_seconds,
            )
        )
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
    model_only, with_decode, artifact = model_ceiling(
        bundle, images, threads=args.threads, batch=args.batch, seconds=args.ceiling_seconds
    )
    print(f"ceiling {model_only:.1f} images/s, with decode {with_decode:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        batched, batched_rss = serve_and_load(
            bundle, images, Path(tmp) / "batched.log", args, "--max-batch-size", str(args.batch)
        )
        print(f"batched {batched.throughput:.1f} req/s", flush=True)
        naive, naive_rss = serve_and_load(
            bundle, images, Path(tmp) / "naive.log", args, "--max-batch-size", "1"
        )

    header = [
        "mode", "images/s", "of ceiling", "p50 ms", "p99 ms", "failed", "client CPU ms/req",
        "server RSS MB",
    ]  # fmt: skip
    dash = ["-"] * 5
    rows = [
        ["model ceiling (pre-decoded batches)", f"{model_only:.1f}", "100%", *dash],
        [
            "model + JPEG decode, in-process",
            f"{with_decode:.1f}",
            f"{100 * with_decode / model_only:.0f}%",
            *dash,
        ],
        row(f"REST micro-batched (max batch {args.batch})", batched, model_only, batched_rss),
        row("REST naive (one request, one model call)", naive, model_only, naive_rss),
    ]
    table = markdown_table(header, rows)
    print(table)
    meta = (
        f"Bundle `{bundle.name}` (artifact `{artifact}`), {len(images)} clothing test JPEGs, "
        f"{args.concurrency} concurrent keep-alive clients (raw asyncio HTTP/1.1), "
        f"{args.requests} requests per server phase, "
        f"runtime threads {args.threads}, Python {platform.python_version()}. Clients, server "
        "and model share the same 2 cores."
    )
    print(meta)
    if args.update_docs:
        command = "`.venv/bin/python bench/bench_serving.py --update-docs"
        command += f" --bundle {args.bundle}`" if args.bundle else "`"
        update_docs(SECTION, f"{SECTION}\n\n{command}\n\n{meta}\n\n{table}\n")


if __name__ == "__main__":
    main()
