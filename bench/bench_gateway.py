"""Gateway mode vs embedded mode, end to end over loopback.

Three real processes are started on 127.0.0.1:

- embedded: ``imgclf serve --model BUNDLE`` (decode + ONNX Runtime in one process);
- model server: ``imgclf model-server`` on a Triton repository exported from the same bundle;
- gateway: ``imgclf serve --model-server grpc://...`` (decode here, uint8 tensors over V2 gRPC).

Concurrent clients POST real clothing JPEGs to ``/predict`` on each REST front in turn (rounds
alternate so both modes see the same machine noise); the table reports median and p95 latency,
throughput, resident memory of the serving processes, and whether both modes gave the same top-1
for every image. Load is bounded by ``--requests`` per phase and ``--max-seconds``.

Usage::

    .venv/bin/python bench/bench_gateway.py [--bundle DIR] [--update-docs]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

import common
from common import clothing_dir, command_line, markdown_table, pick_images

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Gateway vs embedded"


@dataclass
class Phase:
    mode: str
    concurrency: int
    latencies_ms: list[float]
    wall_s: float
    errors: int
    answers: dict[str, str]


def has_onnx(path: Path) -> bool:
    import json

    manifest = path / "manifest.json"
    return manifest.is_file() and "onnx" in json.loads(manifest.read_text()).get("artifacts", {})


def resolve_bundle(requested: Path | None, workdir: Path) -> tuple[Path, str]:
    """The bundle to serve and a description of where it came from.

    Prefers a bundle with an ONNX artifact (the bundled model, then the training run); a trained
    run with PyTorch weights only is exported to ONNX here; failing both, an ImageNet Lite0 with an
    untrained head stands in (same architecture and cost).
    """
    if requested is not None:
        return requested, str(requested)
    from imgclf.bundle import default_bundle_path

    run = Path("/work/runs/clothing-lite0")
    for candidate in (default_bundle_path(), run):
        if has_onnx(candidate):
            return candidate, str(candidate)
    if (run / "model.pt").is_file():
        return export_onnx_copy(run, workdir / "run"), f"{run} (PyTorch weights exported to ONNX)"
    return build_lite0_bundle(workdir / "lite0"), (
        "EfficientNet-Lite0 ONNX built for this run (ImageNet backbone, untrained 10-class head)"
    )


def export_onnx_copy(source: Path, root: Path) -> Path:
    """A serving copy of a trained bundle: its manifest plus an ONNX export of its weights."""
    from imgclf.backbones import load_torch_model
    from imgclf.bundle import Bundle, load_bundle

    bundle = load_bundle(source)
    manifest = bundle.manifest.model_copy(deep=True)
    manifest.artifacts = {}
    copy = Bundle(root=root, manifest=manifest)
    root.mkdir(parents=True)
    write_onnx(load_torch_model(bundle), bundle.preprocess_config.input_size, root / "model.onnx")
    copy.add_artifact("onnx", root / "model.onnx", format="onnx", input_name="input")
    return root


def build_lite0_bundle(root: Path) -> Path:
    """A Lite0 bundle (10 classes, ImageNet backbone, untrained head) exported to ONNX."""
    from imgclf.backbones import create_model, default_preprocess_config
    from imgclf.bundle import Bundle, Manifest

    classes = sorted(d.name for d in (clothing_dir() / "test").iterdir() if d.is_dir())
    config = default_preprocess_config("lite0")
    root.mkdir(parents=True)
    write_onnx(create_model("lite0", len(classes)).eval(), config.input_size, root / "model.onnx")
    manifest = Manifest(
        name="clothing-lite0", backbone="lite0", labels=classes, preprocessing=config.to_dict()
    )
    bundle = Bundle(root=root, manifest=manifest)
    bundle.add_artifact("onnx", root / "model.onnx", format="onnx", input_name="input")
    return root


def write_onnx(model: object, input_size: int, path: Path) -> None:
    import torch

    example = torch.zeros(1, 3, input_size, input_size)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy exporter: stable here
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "imgclf", *args], stdout=handle, stderr=subprocess.STDOUT
        )


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 300
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    tail = log.read_text(errors="replace")[-3000:]
    sys.exit(f"{url} not ready (exit code {process.poll()}) after {timeout_s} s; log:\n{tail}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_phase(
    mode: str,
    url: str,
    images: list[tuple[str, bytes]],
    *,
    requests: int,
    concurrency: int,
    max_seconds: float,
) -> Phase:
    latencies: list[float] = []
    answers: dict[str, str] = {}
    errors = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + max_seconds
    local = threading.local()

    def one(index: int) -> None:
        nonlocal errors
        if time.monotonic() > stop_at:
            return
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        name, data = images[index % len(images)]
        started = time.perf_counter()
        try:
            response = local.client.post(url, files={"file": (name, data, "image/jpeg")})
        except httpx.HTTPError:  # a timeout or reset is a failed request, not a failed run
            with lock:
                errors += 1
            return
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            if response.status_code != 200:
                errors += 1
                return
            latencies.append(elapsed)
            answers[name] = response.json()["class"]

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(requests)))
    return Phase(mode, concurrency, latencies, time.perf_counter() - started, errors, answers)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def summarise(phases: list[Phase], concurrencies: list[int]) -> list[list[str]]:
    rows = []
    for concurrency in concurrencies:
        for mode in ("embedded", "gateway"):
            mine = [p for p in phases if p.mode == mode and p.concurrency == concurrency]
            lat = [v for p in mine for v in p.latencies_ms] or [float("nan")]
            throughput = statistics.median(len(p.latencies_ms) / p.wall_s for p in mine)
            rows.append(
                [
                    mode,
                    str(concurrency),
                    str(sum(len(p.latencies_ms) for p in mine)),
                    f"{statistics.median(lat):.1f}",
                    f"{percentile(lat, 0.95):.1f}",
                    f"{throughput:.1f}",
                    str(sum(p.errors for p in mine)),
                ]
            )
    return rows


def update_docs(text: str) -> None:
    """Rewrite this benchmark's section of docs/benchmarks.md."""
    common.update_docs(SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle with an onnx artifact")
    parser.add_argument("--images", type=int, default=40, help="distinct test images")
    parser.add_argument("--requests", type=int, default=80, help="requests per phase")
    parser.add_argument("--concurrency", default="1,8", help="client threads, comma separated")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per setting")
    parser.add_argument("--max-seconds", type=float, default=60, help="cap per phase")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite '{SECTION}'")
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    images = [(p.name, p.read_bytes()) for p in pick_images(args.images)]

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        bundle, origin = resolve_bundle(args.bundle, workdir)
        from imgclf.export.triton import export_triton_repository

        export_triton_repository(bundle, workdir / "repo", model_name="clothing", max_batch_size=16)
        load_before = os.getloadavg()[0]
        phases, memory = serve_and_measure(args, bundle, workdir, images, concurrencies)
        load_after = os.getloadavg()[0]

    rows = summarise(phases, concurrencies)
    first = {m: next(p for p in phases if p.mode == m).answers for m in ("embedded", "gateway")}
    shared = sorted(set(first["embedded"]) & set(first["gateway"]))
    agree = sum(first["embedded"][n] == first["gateway"][n] for n in shared)
    header = ["mode", "clients", "requests", "p50 ms", "p95 ms", "images/s", "errors"]
    table = markdown_table(header, rows)
    command = command_line()
    report = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}`. Model: {origin}. "
            f"{len(images)} clothing test JPEGs posted to `/predict`, {args.rounds} alternating "
            "rounds per setting, all processes on one 2-vCPU machine over loopback.",
            "",
            table,
            "",
            f"Top-1 agreement between the modes: {agree}/{len(shared)} images. Resident memory "
            f"after the run: embedded {memory['embedded']:.0f} MB; gateway "
            f"{memory['gateway']:.0f} MB + model server {memory['model-server']:.0f} MB. "
            "The gateway sends uint8 tensors (150 KB per 224 px image, 4x less than float32). "
            f"Machine load average (1 min) before/after: {load_before:.1f}/{load_after:.1f}; "
            "compare the two modes within a run, not absolute numbers across runs.",
        ]
    )
    print(report)
    if args.update_docs:
        update_docs(report)


def serve_and_measure(
    args: argparse.Namespace,
    bundle: Path,
    workdir: Path,
    images: list[tuple[str, bytes]],
    concurrencies: list[int],
) -> tuple[list[Phase], dict[str, float]]:
    grpc_port, gateway_port, embedded_port = free_port(), free_port(), free_port()
    serve = ["serve", "--plain-logs", "--log-level", "warning", "--max-batch-size", "16"]
    processes = {
        "model-server": launch(
            ["model-server", "--repository", str(workdir / "repo"), "--no-http",
             "--grpc-port", str(grpc_port), "--poll-interval", "0"],
            workdir / "model-server.log",
        ),
        "embedded": launch(
            [*serve, "--model", str(bundle), "--artifact", "onnx", "--port", str(embedded_port)],
            workdir / "embedded.log",
        ),
    }  # fmt: skip
    try:
        wait_ready(
            f"http://127.0.0.1:{embedded_port}/ready",
            processes["embedded"],
            workdir / "embedded.log",
        )
        time.sleep(1)  # the model server starts faster than the REST app; give it the same head
        processes["gateway"] = launch(
            [
                *serve,
                "--model-server",
                f"grpc://127.0.0.1:{grpc_port}",
                "--port",
                str(gateway_port),
            ],
            workdir / "gateway.log",
        )
        wait_ready(
            f"http://127.0.0.1:{gateway_port}/ready", processes["gateway"], workdir / "gateway.log"
        )
        urls = {
            "embedded": f"http://127.0.0.1:{embedded_port}/predict",
            "gateway": f"http://127.0.0.1:{gateway_port}/predict",
        }
        for mode, url in urls.items():  # warm both paths: first batches allocate buffers
            run_phase(mode, url, images, requests=16, concurrency=4, max_seconds=args.max_seconds)
        phases = [
            run_phase(
                mode,
                urls[mode],
                images,
                requests=args.requests,
                concurrency=concurrency,
                max_seconds=args.max_seconds,
            )
            for concurrency in concurrencies
            for _ in range(args.rounds)
            for mode in ("embedded", "gateway")
        ]
        memory = {name: rss_mb(p.pid) for name, p in processes.items()}
        return phases, memory
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    main()
