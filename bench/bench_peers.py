"""Peers side by side: ``imgclf serve`` against KServe and BentoML on the same bundle, interleaved.

Every server runs the bundle's int8 ONNX model with ONNX Runtime and the bundle's preprocessing
(the peers through ``bench/peers/peer_model.py``, which mirrors ``imgclf.preprocessing`` without
importing imgclf), gets the same clothing test JPEGs from the same load generator
(``serving_harness.closed_loop``) at 1 and 16 concurrent clients, and is measured for images/s,
median latency, CPU per image and memory (PSS of all of its processes). Configurations:

- ``imgclf serve`` with its defaults, and with ``--instances 2``;
- a KServe 0.21 custom ``kserve.Model`` with 1 worker (ONNX Runtime's default threads), and with
  ``--workers 2`` and one ONNX Runtime thread per worker;
- a BentoML 1.4 service with its default 1 worker, and with 2 workers, one thread each.

Rounds are interleaved (the order of the configurations rotates every round) and the table
reports medians over rounds, each as a ratio to ``imgclf serve``'s default. The CPU-bound limit
(cores / (decode + model CPU time per image), measured in-process each round as in
``bench_serving.py``) is measured in the same run. Before any figure counts, each server's top-1
class on a few images must equal imgclf's in-process answer: otherwise the preprocessing differs
and the benchmark refuses to report.

KServe and BentoML are installed into environments of their own (``--venvs``, created on first
run with the same onnxruntime, Pillow and NumPy versions as this environment).

Usage::

    .venv/bin/python bench/bench_peers.py [--venvs DIR] [--setup-only] [--rounds 3]
        [--seconds 20] [--update-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx

from common import REPO, command_line, markdown_table, update_docs
from serving_harness import (
    LoadResult,
    ManagedServer,
    RequestEncoder,
    ServerProcess,
    closed_loop,
    free_port,
    json_request,
    load_test_jpegs,
    multipart_request,
    resolve_bundle,
)

SECTION = "## Peers: KServe and BentoML"
PEERS_DIR = REPO / "bench" / "peers"
#: What each peer environment installs besides the pins shared with this environment.
PEER_REQUIREMENTS = {"kserve": "kserve==0.21.*", "bentoml": "bentoml==1.4.*"}
#: Installed in the peer environments at the versions this environment has.
SHARED_PACKAGES = ("onnxruntime", "pillow", "numpy")
KSERVE_MODEL = "classifier"
CONCURRENCIES = (1, 16)
#: Goal: the default ``imgclf serve`` against the best peer, and against the CPU-bound limit.
GOAL_SPEEDUP = 1.2
GOAL_OF_BOUND = 0.85


@dataclass(frozen=True)
class Config:
    """One server configuration of the comparison."""

    name: str
    kind: str  # "imgclf", "kserve" or "bentoml"
    options: tuple[str, ...] = ()
    workers: int = 1
    ort_threads: int = 0  # 0: ONNX Runtime's default (one per core)

    @property
    def is_peer(self) -> bool:
        return self.kind != "imgclf"


CONFIGS = (
    Config("`imgclf serve` (default)", "imgclf"),
    Config("`imgclf serve --instances 2`", "imgclf", ("--instances", "2")),
    Config("KServe 0.21 custom Model, 1 worker", "kserve"),
    Config("KServe `--workers 2`, 1 ORT thread each", "kserve", workers=2, ort_threads=1),
    Config("BentoML 1.4 default (1 worker)", "bentoml"),
    Config("BentoML 2 workers, 1 ORT thread each", "bentoml", workers=2, ort_threads=1),
)
DEFAULT = CONFIGS[0].name


def kserve_request(url: str, image: bytes) -> bytes:
    """KServe V1 predict: one instance, the JPEG base64-encoded in ``image_bytes``."""
    body = {"instances": [{"image_bytes": {"b64": base64.b64encode(image).decode("ascii")}}]}
    return json_request(url, json.dumps(body).encode())


def _class_of(body: Any) -> str:
    """Top-1 class of an imgclf or BentoML answer, ``{"class": ...}``."""
    return str(body["class"])


def _kserve_class_of(body: Any) -> str:
    """Top-1 class of a KServe V1 answer, ``{"predictions": [{"class": ...}]}``."""
    return str(body["predictions"][0]["class"])


#: What each kind of server receives: (route, request encoder, its top-1 class from the JSON).
ENDPOINTS: dict[str, tuple[str, RequestEncoder, Callable[[Any], str]]] = {
    "imgclf": ("/predict", multipart_request, _class_of),
    "bentoml": ("/classify", multipart_request, _class_of),
    "kserve": (f"/v1/models/{KSERVE_MODEL}:predict", kserve_request, _kserve_class_of),
}


# --- peer environments ----------------------------------------------------------------------


def default_venvs() -> Path:
    """Where the peer environments go unless ``--venvs`` says otherwise (outside the repo).

    ``$IMGCLF_BENCH_PEERS_VENVS``, else ``imgclf/bench-peers`` in the user's cache folder.
    """
    if chosen := os.environ.get("IMGCLF_BENCH_PEERS_VENVS"):
        return Path(chosen)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "imgclf" / "bench-peers"


def peer_requirements(kind: str) -> list[str]:
    """The peer's package and this environment's onnxruntime, Pillow and NumPy, pinned."""
    return [PEER_REQUIREMENTS[kind]] + [f"{n}=={metadata.version(n)}" for n in SHARED_PACKAGES]


def ensure_venv(venvs: Path, kind: str) -> Path:
    """The peer's environment under ``venvs``, created or brought up to date; its bin/ folder.

    A stamp file holds the requirements it was made with, so a changed pin reinstalls.
    """
    venv = venvs / kind
    bin_dir = venv / "bin"
    stamp = venv / "bench-peers-requirements.txt"
    wanted = peer_requirements(kind)
    made = (bin_dir / "python").exists() and stamp.is_file()
    if made and stamp.read_text(encoding="utf-8").split() == wanted:
        return bin_dir
    print(f"setting up {venv} ({' '.join(wanted)})", file=sys.stderr, flush=True)
    if not (bin_dir / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, *wanted], check=True)
    stamp.write_text("\n".join(wanted) + "\n", encoding="utf-8")
    return bin_dir


# --- servers --------------------------------------------------------------------------------


def peer_env(config: Config, bundle: Path) -> dict[str, str]:
    """The peer's environment variables: nothing of this environment's Python path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        PEER_BUNDLE=str(bundle),
        PEER_WORKERS=str(config.workers),
        PEER_ORT_THREADS=str(config.ort_threads),
    )
    return env


def start_server(
    config: Config, bundle: Path, bins: Mapping[str, Path], log: Path
) -> ManagedServer:
    """Start one configuration on a free loopback port and wait until it is ready."""
    if config.kind == "imgclf":
        return ServerProcess(bundle, log, *config.options)
    port = free_port()
    env = peer_env(config, bundle)
    if config.kind == "kserve":
        command = [
            str(bins["kserve"] / "python"), "kserve_server.py", "--bundle", str(bundle),
            "--http_port", str(port), "--grpc_port", str(free_port()),
            "--model_name", KSERVE_MODEL, "--workers", str(config.workers),
        ]  # fmt: skip
        ready = f"/v1/models/{KSERVE_MODEL}"
    else:
        command = [
            str(bins["bentoml"] / "bentoml"), "serve", "bentoml_service:Classifier",
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        ready = "/readyz"
    return ManagedServer(command, log, port=port, ready_path=ready, env=env, cwd=PEERS_DIR)


# --- parity ---------------------------------------------------------------------------------


class ParityError(RuntimeError):
    """A server's answers differ from imgclf's: its preprocessing or model is not the same."""


def check_parity(name: str, reference: Sequence[str], answers: Sequence[str]) -> None:
    """Raise :class:`ParityError` unless ``answers`` (top-1 per image) equal ``reference``."""
    if len(answers) != len(reference):
        raise ParityError(f"{name}: {len(answers)} answers for {len(reference)} images")
    differ = [i for i, (a, b) in enumerate(zip(answers, reference, strict=True)) if a != b]
    if differ:
        shown = ", ".join(f"image {i}: {answers[i]} != {reference[i]}" for i in differ[:3])
        raise ParityError(
            f"{name}: top-1 differs from imgclf's on {len(differ)} of {len(reference)} images "
            f"({shown}); its preprocessing is not the bundle's, so no figure is reported"
        )


def server_answers(config: Config, base: str, images: Sequence[bytes]) -> list[str]:
    """Top-1 class a running server gives each image, sent as the benchmark sends it."""
    route, encode, top1 = ENDPOINTS[config.kind]
    url = f"{base}{route}"
    answers = []
    with httpx.Client(timeout=60) as client:
        for image in images:
            raw = encode(url, image)
            head, _, body = raw.partition(b"\r\n\r\n")
            headers = dict(
                line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if line
            )
            headers.pop("Content-Length", None)
            response = client.post(url, content=body, headers=headers)
            if response.status_code != 200:
                raise ParityError(f"{config.name}: status {response.status_code} on image")
            answers.append(top1(response.json()))
    return answers


# --- measurement and summary ----------------------------------------------------------------


@dataclass
class Sample:
    """One configuration in one round."""

    images_s: dict[int, float] = field(default_factory=dict)
    p50_ms: dict[int, float] = field(default_factory=dict)
    cpu_ms: float = float("nan")  # server CPU per image at the highest concurrency
    memory_mb: float = float("nan")
    failed: int = 0


@dataclass
class Summary:
    """Medians over rounds of one configuration."""

    images_s: dict[int, float]
    p50_ms: dict[int, float]
    cpu_ms: float
    memory_mb: float
    failed: int
    rounds: int


def summarise(samples: Sequence[Sample]) -> Summary:
    """Medians of each figure over the rounds (failures are added up)."""
    return Summary(
        images_s={c: statistics.median(s.images_s[c] for s in samples) for c in CONCURRENCIES},
        p50_ms={c: statistics.median(s.p50_ms[c] for s in samples) for c in CONCURRENCIES},
        cpu_ms=statistics.median(s.cpu_ms for s in samples),
        memory_mb=statistics.median(s.memory_mb for s in samples),
        failed=sum(s.failed for s in samples),
        rounds=len(samples),
    )


@dataclass(frozen=True)
class GoalCheck:
    """One line of the goal: what is measured, the measured value, the target, met or not."""

    what: str
    value: str
    target: str
    met: bool


def goal_checks(
    summaries: Mapping[str, Summary], peers: Sequence[str], bound: float
) -> list[GoalCheck]:
    """The goal for the default ``imgclf serve``, met or not, from the run's medians.

    ``>= 1.2x`` the best peer's images/s at each concurrency, less memory than every peer, and at
    the highest concurrency ``>= 85%`` of ``bound`` (the CPU-bound images/s).
    """
    ours = summaries[DEFAULT]
    checks = []
    for c in CONCURRENCIES:
        best = max(peers, key=lambda name: summaries[name].images_s[c])
        ratio = ours.images_s[c] / summaries[best].images_s[c]
        checks.append(
            GoalCheck(
                f"images/s at c={c} vs the best peer ({best})",
                f"{ratio:.2f}x",
                f">= {GOAL_SPEEDUP:.1f}x",
                ratio >= GOAL_SPEEDUP,
            )
        )
    leanest = min(peers, key=lambda name: summaries[name].memory_mb)
    checks.append(
        GoalCheck(
            f"memory vs the leanest peer ({leanest})",
            f"{ours.memory_mb:.0f} vs {summaries[leanest].memory_mb:.0f} MB",
            "less",
            ours.memory_mb < summaries[leanest].memory_mb,
        )
    )
    top = max(CONCURRENCIES)
    of_bound = ours.images_s[top] / bound
    checks.append(
        GoalCheck(
            f"images/s at c={top} of the CPU-bound limit ({bound:.0f} images/s)",
            f"{100 * of_bound:.0f}%",
            f">= {100 * GOAL_OF_BOUND:.0f}%",
            of_bound >= GOAL_OF_BOUND,
        )
    )
    return checks


def table_rows(summaries: Mapping[str, Summary], requests: Mapping[str, str]) -> list[list[str]]:
    """One row per configuration, images/s as ratios to the default ``imgclf serve``."""
    ours = summaries[DEFAULT]
    rows = []
    for name, s in summaries.items():
        cells = [name, requests[name]]
        for c in CONCURRENCIES:
            cells += [
                f"{s.images_s[c]:.1f}",
                f"{s.images_s[c] / ours.images_s[c]:.2f}",
                f"{s.p50_ms[c]:.0f}",
            ]
        cells += [f"{s.cpu_ms:.1f}", f"{s.memory_mb:.0f}", str(s.failed)]
        rows.append(cells)
    return rows


def goal_table(checks: Sequence[GoalCheck]) -> str:
    """The goal as a Markdown table."""
    rows = [[c.what, c.value, c.target, "met" if c.met else "**not met**"] for c in checks]
    return markdown_table(["goal for the default `imgclf serve`", "measured", "target", ""], rows)


def measure(
    config: Config,
    bundle: Path,
    bins: Mapping[str, Path],
    images: list[bytes],
    reference: list[str],
    args: argparse.Namespace,
    log: Path,
) -> Sample:
    """Start one configuration, check its parity, load it at each concurrency, stop it."""
    server = start_server(config, bundle, bins, log)
    sample = Sample()
    try:
        check_parity(
            config.name, reference, server_answers(config, server.base, images[: len(reference)])
        )
        route, encode, _ = ENDPOINTS[config.kind]
        url = f"{server.base}{route}"

        def load(concurrency: int, seconds: float, requests: int = 10**6) -> LoadResult:
            return asyncio.run(
                closed_loop(
                    url,
                    images,
                    concurrency=concurrency,
                    requests=requests,
                    max_seconds=seconds,
                    encode=encode,
                )
            )

        load(4, 30, requests=4 * args.warmup)  # every worker loaded and warm
        for c in CONCURRENCIES:
            cpu_before = server.tree_cpu_s
            result = load(c, args.seconds)
            sample.images_s[c] = result.throughput
            sample.p50_ms[c] = (
                statistics.median(result.latencies_ms) if result.latencies_ms else float("nan")
            )
            sample.failed += len(result.errors) + sum(
                n for code, n in result.statuses.items() if code != 200
            )
            sample.cpu_ms = 1000 * (server.tree_cpu_s - cpu_before) / max(1, result.ok)
        sample.memory_mb = server.memory_mb
    finally:
        server.terminate()
    return sample


def cpu_bound(bundle: Path, images: list[bytes], seconds: float) -> tuple[float, float, float]:
    """(images/s the cores could serve on decode + model CPU alone, model ms, decode ms)."""
    from bench_serving import model_ceiling

    cores = len(os.sched_getaffinity(0))
    ceiling = model_ceiling(bundle, images, threads=cores, batch=16, seconds=seconds)
    per_image = ceiling.model_cpu_ms + ceiling.decode_cpu_ms
    return 1000 * cores / per_image, ceiling.model_cpu_ms, ceiling.decode_cpu_ms


def reference_answers(bundle: Path, images: Sequence[bytes]) -> list[str]:
    """imgclf's own top-1 for each image, in-process."""
    from imgclf.inference import Predictor

    predictor = Predictor.from_bundle(bundle)
    return [predictor.predict(image).label for image in images]


REQUESTS = {
    "imgclf": "multipart `POST /predict`",
    "kserve": f"V1 JSON, base64 `POST /v1/models/{KSERVE_MODEL}:predict`",
    "bentoml": "multipart `POST /classify`",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="bundle with an ONNX artifact")
    parser.add_argument(
        "--venvs", type=Path, default=default_venvs(), help="where the peer environments live"
    )
    parser.add_argument("--setup-only", action="store_true", help="create the environments, stop")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--seconds", type=float, default=20, help="per concurrency and round")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up requests per client")
    parser.add_argument("--parity-images", type=int, default=8, help="images checked for parity")
    parser.add_argument("--ceiling-seconds", type=float, default=5, help="per in-process mode")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite '{SECTION}'")
    args = parser.parse_args()

    bins = {kind: ensure_venv(args.venvs, kind) for kind in PEER_REQUIREMENTS}
    if args.setup_only:
        return
    bundle = resolve_bundle(args.bundle).resolve()
    images = load_test_jpegs()
    reference = reference_answers(bundle, images[: args.parity_images])
    load_before = os.getloadavg()
    samples: dict[str, list[Sample]] = {c.name: [] for c in CONFIGS}
    bounds: list[tuple[float, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            bounds.append(cpu_bound(bundle, images, args.ceiling_seconds))
            shift = round_index % len(CONFIGS)
            for config in CONFIGS[shift:] + CONFIGS[:shift]:
                log = Path(tmp) / f"{config.kind}-{round_index}.log"
                try:
                    sample = measure(config, bundle, bins, images, reference, args, log)
                except ParityError as exc:
                    sys.exit(f"refusing to report: {exc}")
                samples[config.name].append(sample)
                figures = ", ".join(f"c={c}: {sample.images_s[c]:.1f}" for c in CONCURRENCIES)
                print(f"round {round_index + 1}: {config.name}: {figures} images/s", flush=True)
    load_after = os.getloadavg()

    summaries = {name: summarise(s) for name, s in samples.items()}
    bound = statistics.median(b[0] for b in bounds)
    model_ms = statistics.median(b[1] for b in bounds)
    decode_ms = statistics.median(b[2] for b in bounds)
    peers = [c.name for c in CONFIGS if c.is_peer]
    checks = goal_checks(summaries, peers, bound)
    header = ["configuration", "request"]
    for c in CONCURRENCIES:
        header += [f"c={c} images/s", f"c={c} x default", f"c={c} p50 ms"]
    header += [f"CPU ms/img (c={max(CONCURRENCIES)})", "memory MB (PSS)", "failed"]
    requests = {c.name: REQUESTS[c.kind] for c in CONFIGS}
    table = markdown_table(header, table_rows(summaries, requests))
    cores = len(os.sched_getaffinity(0))
    meta = (
        f"Bundle `{bundle.name}` (int8 ONNX), {len(images)} clothing test JPEGs, "
        f"{args.rounds} interleaved rounds of {args.seconds:g} s per concurrency "
        f"(medians), top-1 parity with imgclf checked on {args.parity_images} images for every "
        f"server start. {cores} cores, Python {platform.python_version()}, onnxruntime "
        f"{metadata.version('onnxruntime')}, Pillow {metadata.version('pillow')}, KServe "
        f"{peer_version(bins['kserve'], 'kserve')}, BentoML "
        f"{peer_version(bins['bentoml'], 'bentoml')}. CPU-bound limit: {cores} cores / "
        f"({model_ms:.1f} ms model + {decode_ms:.1f} ms decode CPU per image) = {bound:.0f} "
        f"images/s. Load average (1, 5, 15 min) before: {fmt_load(load_before)}, after: "
        f"{fmt_load(load_after)}; this benchmark ran at niceness {os.nice(0)}."
    )
    goals = goal_table(checks)
    print(table, meta, goals, sep="\n\n")
    facts = {
        "peers.c1_vs_best": checks[0].value,
        "peers.c16_vs_best": checks[1].value,
        "peers.default_memory": checks[2].value,
        "peers.default_of_bound": checks[3].value,
    }
    if args.update_docs:
        text = f"{SECTION}\n\n`{command_line()}`\n\n{meta}\n\n{table}\n\n{goals}\n"
        update_docs(SECTION, text, facts)


def peer_version(bin_dir: Path, package: str) -> str:
    """The version of ``package`` installed in a peer environment."""
    code = f"from importlib.metadata import version; print(version({package!r}))"
    done = subprocess.run(
        [str(bin_dir / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{value:.1f}" for value in load)


if __name__ == "__main__":
    main()
