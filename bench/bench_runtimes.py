"""Runtimes side by side: ONNX Runtime fp32 and int8, LiteRT (TFLite), PyTorch eager.

For each runtime the table reports the artifact size, single-image latency (p50/p99, model only,
``--threads`` threads), end-to-end latency of one JPEG (decode, resize, normalise, run), throughput
at batch 16, cold start (a new process importing the runtime, loading the model and classifying
one JPEG; median of ``--cold-starts``) and that process's peak RSS.

Latency blocks of all runtimes are interleaved round by round in one process, so machine noise hits
them alike; medians are reported. When the bundle's dataset is present, top-1 on its test split is
measured for every runtime through the same preprocessing.

Usage::

    nice -n 10 .venv/bin/python bench/bench_runtimes.py --bundle DIR [--update-docs]

Without ``--bundle``, a stand-in Lite0 bundle (ImageNet backbone, random 10-class head; same speed,
meaningless accuracy) is built and exported under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common import clothing_dir, command_line, update_docs

SECTION = "## Runtimes: size, latency, throughput, cold start, memory"


def clothing_classes() -> list[str]:
    """Class names of the clothing dataset, in the order training gives them (sorted folders)."""
    train = clothing_dir() / "train"
    if not train.is_dir():
        sys.exit(f"clothing dataset not found at {train}; set IMGCLF_CLOTHING_DIR")
    return sorted(d.name for d in train.iterdir() if d.is_dir())


@dataclass
class Runtime:
    """One runtime under test: how to run a batch, and how to cold-start it in a new process."""

    name: str
    size_mb: float
    run: Callable[[np.ndarray], np.ndarray]
    cold_code: str
    cold_args: list[str]
    single_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    batch_ips: list[float] = field(default_factory=list)
    cold_s: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    test_top1: float | None = None


COLD_PREDICTOR = """
import sys
from imgclf.inference import Predictor
p = Predictor.from_bundle(sys.argv[1], artifact=sys.argv[2], threads=2)
print(p.predict(sys.argv[3]).label)
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""

COLD_TORCH = """
import sys
import torch
torch.set_num_threads(2)
from imgclf.bundle import load_bundle
from imgclf.preprocessing import preprocess
from imgclf.backbones import load_torch_model
bundle = load_bundle(sys.argv[1], verify=False)
model = load_torch_model(bundle)
with torch.inference_mode():
    logits = model(torch.from_numpy(preprocess(sys.argv[3], bundle.preprocess_config)[None]))
print(bundle.labels[int(logits.argmax())])
print(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
"""


def build_stand_in(work: Path) -> Path:
    """A Lite0 bundle with ImageNet weights and a random 10-class head, exported to ONNX."""
    import torch

    from imgclf.backbones import create_model, default_preprocess_config
    from imgclf.bundle import Bundle, Manifest
    from imgclf.export.api import export_bundle

    root = work / "stand-in-lite0"
    if (root / "model.int8.onnx").is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    labels = clothing_classes()
    model = create_model("tf_efficientnet_lite0", len(labels), pretrained=True)
    torch.save(model.state_dict(), root / "model.pt")
    config = default_preprocess_config("tf_efficientnet_lite0")
    manifest = Manifest(
        name="stand-in-lite0",
        backbone="tf_efficientnet_lite0",
        labels=labels,
        preprocessing=config.to_dict(),
        training={"model_kwargs": {}},
    )
    bundle = Bundle(root=root, manifest=manifest)
    bundle.add_artifact("pytorch", root / "model.pt", format="pytorch")
    export_bundle(root, "onnx-int8", data=clothing_dir(), force=True)
    return root


def load_runtimes(bundle_dir: Path, threads: int, with_torch: bool) -> list[Runtime]:
    from imgclf.bundle import load_bundle
    from imgclf.inference import Predictor

    bundle = load_bundle(bundle_dir)
    runtimes = []
    for key in ("onnx", "onnx-int8", "tflite"):
        if key not in bundle.manifest.artifacts:
            continue
        predictor = Predictor.from_bundle(bundle_dir, artifact=key, threads=threads)
        size = bundle.manifest.artifacts[key].bytes / 1e6
        label = {
            "onnx": "ONNX Runtime fp32",
            "onnx-int8": "ONNX Runtime int8",
            "tflite": "LiteRT (TFLite) fp32",
        }[key]
        runtimes.append(Runtime(label, size, predictor.run, COLD_PREDICTOR, [str(bundle_dir), key]))
    if with_torch and "pytorch" in bundle.manifest.artifacts:
        import torch

        from imgclf.backbones import load_torch_model

        torch.set_num_threads(threads)
        model = load_torch_model(bundle)

        def run_torch(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).numpy()  # type: ignore[no-any-return]

        size = bundle.manifest.artifacts["pytorch"].bytes / 1e6
        cold_args = [str(bundle_dir), "pytorch"]
        runtimes.append(Runtime("PyTorch eager fp32", size, run_torch, COLD_TORCH, cold_args))
    return runtimes


def time_once(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure_round(
    runtimes: list[Runtime],
    single: np.ndarray,
    batch: np.ndarray,
    jpeg: Path,
    config: object,
    iters: int,
) -> None:
    from imgclf.preprocessing import load_pixels, normalize

    for runtime in runtimes:
        runtime.run(single)  # warm
        runtime.single_ms += [
            1000 * time_once(lambda r=runtime: r.run(single)) for _ in range(iters)
        ]
        runtime.e2e_ms += [
            1000
            * time_once(lambda r=runtime: r.run(normalize(load_pixels(jpeg, config)[None], config)))
            for _ in range(max(iters // 4, 3))
        ]
        runtime.batch_ips.append(len(batch) / time_once(lambda r=runtime: r.run(batch)))


def cold_start(runtime: Runtime, jpeg: Path) -> tuple[float, float]:
    """Seconds from spawning a process to its first prediction, and the process's peak RSS.

    Peak RSS is the child's own VmHWM: ``ru_maxrss`` would include the memory of this (large)
    process, which the child shares between fork and exec.
    """
    args = [sys.executable, "-c", runtime.cold_code, *runtime.cold_args, str(jpeg)]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = process.communicate()
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        raise RuntimeError(f"{runtime.name} cold start failed: {err.decode()}")
    return elapsed, int(out.split()[-1]) / 1024


def test_top1(runtimes: list[Runtime], bundle_dir: Path, data: Path) -> None:
    from imgclf.bundle import load_bundle
    from imgclf.export.checks import top1_accuracy
    from imgclf.export.reference import split_pixels
    from imgclf.preprocessing import normalize

    bundle = load_bundle(bundle_dir, verify=False)
    test = split_pixels(bundle, data, "test")
    assert test.labels is not None
    config = bundle.preprocess_config
    for runtime in runtimes:
        logits = np.concatenate(
            [
                runtime.run(normalize(test.pixels[i : i + 16], config))
                for i in range(0, len(test.pixels), 16)
            ]
        )
        runtime.test_top1 = 100 * top1_accuracy(logits, test.labels)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def render(runtimes: list[Runtime], meta: dict[str, str]) -> str:
    head = (
        "| runtime | size MB | p50 ms | p99 ms | JPEG->label p50 ms | batch 16 img/s "
        "| cold start s | peak RSS MB | test top-1 % |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in runtimes:
        top1 = f"{r.test_top1:.2f}" if r.test_top1 is not None else "-"
        lines.append(
            f"| {r.name} | {r.size_mb:.1f} | {statistics.median(r.single_ms):.2f} | "
            f"{pct(r.single_ms, 99):.2f} | {statistics.median(r.e2e_ms):.2f} | "
            f"{statistics.median(r.batch_ips):.0f} | {statistics.median(r.cold_s):.2f} | "
            f"{statistics.median(r.rss_mb):.0f} | {top1} |"
        )
    intro = [
        f"Command: `{meta['command']}`. Model: {meta['model']}. {meta['threads']} intra-op "
        f"threads; {meta['rounds']} interleaved rounds of {meta['iters']} single-image runs per "
        "runtime (p50/p99 over all runs: model only, input already preprocessed); "
        '"JPEG->label" adds decoding, resizing and normalising one clothing photo; cold start '
        f"is the median of {meta['cold']} new processes from spawn to first prediction, with "
        "their median peak RSS. Load average at start: "
        f"{meta['load']} (the machine is shared; absolute numbers are noisy, ratios less so).",
        "",
    ]
    return "\n".join([*intro, *lines, ""])


def facts(runtimes: list[Runtime]) -> dict[str, str]:
    """The numbers README quotes (``<!-- bench:runtimes.* -->``), as it shows them."""
    out: dict[str, str] = {}
    for key, name in (("int8", "ONNX Runtime int8"), ("fp32", "ONNX Runtime fp32")):
        for r in (r for r in runtimes if r.name == name):
            out[f"runtimes.{key}_size_mb"] = f"{r.size_mb:.3g}"
            out[f"runtimes.{key}_p50_ms"] = f"{statistics.median(r.single_ms):.1f}"
            out[f"runtimes.{key}_jpeg_p50_ms"] = f"{statistics.median(r.e2e_ms):.1f}"
            out[f"runtimes.{key}_batch16_ips"] = f"{statistics.median(r.batch_ips):.0f}"
            out[f"runtimes.{key}_peak_rss_mb"] = f"{statistics.median(r.rss_mb):.0f}"
            out[f"runtimes.{key}_cold_start_s"] = f"{statistics.median(r.cold_s):.2f}"
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle with onnx / onnx-int8 artifacts")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imgclf-bench")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="also the number of cold starts")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch eager")
    parser.add_argument("--update-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    data = clothing_dir()
    bundle_dir = args.bundle or build_stand_in(args.work)
    runtimes = load_runtimes(bundle_dir, args.threads, not args.no_torch)
    from imgclf.bundle import load_bundle
    from imgclf.preprocessing import load_pixels, normalize

    bundle = load_bundle(bundle_dir, verify=False)
    config = bundle.preprocess_config
    jpeg = sorted((data / "test" / "shirt").glob("*.jpg"))[0]
    single = normalize(load_pixels(jpeg, config)[None], config)
    batch = np.repeat(single, 16, axis=0)
    load = os.getloadavg()[0]
    for round_index in range(args.rounds):
        measure_round(runtimes, single, batch, jpeg, config, args.iters)
        for runtime in runtimes:
            elapsed, rss = cold_start(runtime, jpeg)
            runtime.cold_s.append(elapsed)
            runtime.rss_mb.append(rss)
        print(f"round {round_index + 1}/{args.rounds} done", file=sys.stderr)
    on_clothing = (data / "test").is_dir() and bundle.labels == clothing_classes()
    if on_clothing and args.bundle is not None:
        test_top1(runtimes, bundle_dir, data)
    trained = "trained" if args.bundle is not None else "stand-in (ImageNet backbone, random head)"
    meta = {
        # The command exactly as run, so the docs can be reproduced.
        "command": command_line(),
        "model": f"{bundle.manifest.backbone} {config.input_size}px, {trained}",
        "threads": str(args.threads),
        "rounds": str(args.rounds),
        "iters": str(args.iters),
        "cold": str(args.rounds),
        "load": f"{load:.1f}",
    }
    text = render(runtimes, meta)
    print(text)
    print(json.dumps({r.name: {"p50": statistics.median(r.single_ms)} for r in runtimes}))
    if args.update_docs:
        update_docs(SECTION, f"{SECTION}\n\n{text}", facts(runtimes))


if __name__ == "__main__":
    main()
