"""bench/bench_peers.py without the peers: parity refusal, goal and table arithmetic, requests.

The peers' mirror of the preprocessing (bench/peers/peer_model.py) runs here against imgclf's own
on synthetic images and the bundled model, so a change to ``imgclf.preprocessing`` that the
mirror does not follow fails here, before a benchmark run has to refuse to report. The load and
parity path runs end to end against a stand-in server speaking BentoML's route.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from imgtools import encode_image, make_image

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
BUNDLED = REPO / "src" / "imgclf" / "models" / "clothing-lite0"


def load_bench_modules() -> tuple[ModuleType, ModuleType]:
    """bench_peers and peer_model, imported from bench/ (not a package) as the scripts do."""
    sys.path[:0] = [str(BENCH), str(BENCH / "peers")]
    try:
        return importlib.import_module("bench_peers"), importlib.import_module("peer_model")
    finally:
        del sys.path[:2]


bench_peers, peer_model = load_bench_modules()
DEFAULT = bench_peers.DEFAULT
PEER_A = "KServe 0.21 custom Model, 1 worker"
PEER_B = "BentoML 1.4 default (1 worker)"
COLOR_SET = [(200, 30, 30), (30, 200, 30), (30, 40, 220), (220, 200, 30)]


def summary(c1: float, c16: float, memory: float) -> object:
    return bench_peers.Summary(
        images_s={1: c1, 16: c16},
        p50_ms={1: 1000 / c1, 16: 16000 / c16},
        cpu_ms=10.0,
        memory_mb=memory,
        failed=0,
        rounds=3,
    )


def test_parity_passes_on_equal_answers_and_refuses_otherwise() -> None:
    bench_peers.check_parity("peer", ["hat", "dress"], ["hat", "dress"])
    with pytest.raises(bench_peers.ParityError, match=r"differs .* on 1 of 2 images"):
        bench_peers.check_parity("peer", ["hat", "dress"], ["hat", "shirt"])
    with pytest.raises(bench_peers.ParityError, match="1 answers for 2 images"):
        bench_peers.check_parity("peer", ["hat", "dress"], ["hat"])


def test_goal_met_when_the_default_leads_every_peer() -> None:
    summaries = {
        DEFAULT: summary(120, 240, 100),
        PEER_A: summary(100, 150, 150),
        PEER_B: summary(80, 200, 120),
    }
    checks = bench_peers.goal_checks(summaries, [PEER_A, PEER_B], bound=250)
    assert [c.value for c in checks] == ["1.20x", "1.20x", "100 vs 120 MB", "96%"]
    assert all(c.met for c in checks)
    assert PEER_A in checks[0].what and PEER_B in checks[1].what  # best peer per concurrency
    assert PEER_B in checks[2].what  # the leanest


def test_goal_not_met_is_reported_with_its_ratio() -> None:
    summaries = {
        DEFAULT: summary(50, 100, 200),
        PEER_A: summary(100, 150, 150),
        PEER_B: summary(80, 200, 300),
    }
    checks = bench_peers.goal_checks(summaries, [PEER_A, PEER_B], bound=200)
    assert [c.value for c in checks] == ["0.50x", "0.50x", "200 vs 150 MB", "50%"]
    assert not any(c.met for c in checks)
    assert bench_peers.goal_table(checks).count("**not met**") == 4


def test_table_rows_are_ratios_to_the_default() -> None:
    summaries = {DEFAULT: summary(50, 100, 200), PEER_A: summary(100, 150, 150)}
    requests = {DEFAULT: "multipart", PEER_A: "json"}
    rows = bench_peers.table_rows(summaries, requests)
    assert rows[0][:5] == [DEFAULT, "multipart", "50.0", "1.00", "20"]
    assert rows[1][1:9] == ["json", "100.0", "2.00", "10", "150.0", "1.50", "107", "10.0"]


def test_summary_takes_medians_over_rounds_and_adds_failures() -> None:
    samples = [
        bench_peers.Sample({1: r, 16: 2 * r}, {1: 10.0, 16: 20.0}, 5.0, 100 + r, failed=1)
        for r in (10.0, 30.0, 20.0)
    ]
    result = bench_peers.summarise(samples)
    assert result.images_s == {1: 20.0, 16: 40.0}
    assert (result.memory_mb, result.failed, result.rounds) == (120.0, 3, 3)


def test_kserve_request_is_v1_with_the_image_base64() -> None:
    raw = bench_peers.kserve_request("http://127.0.0.1:9/v1/models/m:predict", b"\xff\xd8jpeg")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/models/m:predict HTTP/1.1\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    instance = json.loads(body)["instances"][0]
    assert base64.b64decode(instance["image_bytes"]["b64"]) == b"\xff\xd8jpeg"


def test_peer_venv_is_reused_only_while_its_pins_match(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    monkeypatch.setattr(bench_peers.subprocess, "run", lambda cmd, **_: calls.append(cmd))
    venv = tmp_path / "kserve"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    stamp = venv / "bench-peers-requirements.txt"
    stamp.write_text("\n".join(bench_peers.peer_requirements("kserve")) + "\n")
    assert bench_peers.ensure_venv(tmp_path, "kserve") == venv / "bin"
    assert calls == []
    stamp.write_text("kserve==0.20.0\n")
    bench_peers.ensure_venv(tmp_path, "kserve")
    assert calls and calls[-1][-4:] == bench_peers.peer_requirements("kserve")
    assert "numpy==" in calls[-1][-1]  # the pins of this environment


def exif_rotated_jpeg() -> bytes:
    image = make_image((200, 30, 30), (300, 200), seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    return encode_image(image, "JPEG", exif=exif.tobytes())


def transparent_png() -> bytes:
    rgba = make_image((30, 200, 30), (120, 90), seed=4).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((120, 90)))
    return encode_image(rgba, "PNG")


SAMPLES = {
    "large landscape JPEG (draft decoding)": lambda: encode_image(
        make_image((30, 40, 220), (1200, 800), seed=1), "JPEG"
    ),
    "large PNG (reducing resize)": lambda: encode_image(
        make_image((200, 90, 30), (900, 700), seed=5), "PNG"
    ),
    "portrait JPEG": lambda: encode_image(make_image((220, 200, 30), (300, 534), seed=2), "JPEG"),
    "small JPEG (upscaled)": lambda: encode_image(make_image((90, 90, 90), (100, 70)), "JPEG"),
    "EXIF-rotated JPEG": exif_rotated_jpeg,
    "transparent PNG": transparent_png,
    "greyscale PNG": lambda: encode_image(make_image((128, 128, 128), (224, 300)).convert("L")),
}


@pytest.mark.parametrize("make", SAMPLES.values(), ids=SAMPLES.keys())
@pytest.mark.parametrize("crop", [(224, 1.0, "center"), (64, 0.875, "center"), (48, 1.0, "squash")])
def test_peer_preprocessing_is_imgclfs(make: object, crop: tuple[int, float, str]) -> None:
    from imgclf.preprocessing import PreprocessConfig, load_pixels

    size, crop_pct, mode = crop
    config = PreprocessConfig(input_size=size, crop_pct=crop_pct, crop_mode=mode)  # type: ignore[arg-type]
    peer = peer_model.BundleModel.__new__(peer_model.BundleModel)
    peer.size, peer.resize = size, config.resize_size
    peer.squash, peer.resample = mode == "squash", Image.Resampling.BICUBIC
    data = make()  # type: ignore[operator]
    np.testing.assert_array_equal(peer.pixels(data), load_pixels(data, config))


def test_peer_model_answers_as_imgclf_on_the_bundled_model() -> None:
    from imgclf.inference import Predictor

    predictor = Predictor.from_bundle(BUNDLED, threads=1)
    peer = peer_model.BundleModel(BUNDLED, threads=1)
    for make in SAMPLES.values():
        data = make()
        ours = predictor.predict(data, top_k=1)
        theirs = peer.classify(data)
        assert theirs["class"] == ours.label
        assert theirs["probability"] == pytest.approx(ours.probability, abs=1e-5)


STAND_IN = """
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.reply({"ready": True})

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert self.path == "/classify" and b'name="file"' in body
        self.reply({"class": "hat"})

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


def test_measure_loads_a_server_only_after_its_parity_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)

    def start(config: object, bundle: Path, bins: object, log: Path) -> object:
        port = bench_peers.free_port()
        command = [sys.executable, str(script), str(port)]
        return bench_peers.ManagedServer(command, log, port=port, ready_path="/readyz")

    monkeypatch.setattr(bench_peers, "start_server", start)
    config = next(c for c in bench_peers.CONFIGS if c.kind == "bentoml")
    images = [encode_image(make_image((10, 10, 10), (32, 32), seed=s)) for s in range(3)]
    args = argparse.Namespace(seconds=0.3, warmup=2)

    def measure(reference: list[str]) -> object:
        log = tmp_path / "server.log"
        return bench_peers.measure(config, BUNDLED, {}, images, reference, args, log)

    with pytest.raises(bench_peers.ParityError, match="differs"):
        measure(["hat", "dress"])
    sample = measure(["hat", "hat"])
    assert sample.images_s[1] > 0 and sample.images_s[16] > 0  # type: ignore[attr-defined]
    assert sample.failed == 0 and sample.memory_mb > 0  # type: ignore[attr-defined]


PEERS = [c for c in bench_peers.CONFIGS if c.is_peer]


@pytest.mark.slow  # starts KServe and BentoML servers, two workers each at most
@pytest.mark.parametrize("config", PEERS, ids=[f"{c.kind}-{c.workers}" for c in PEERS])
def test_real_peers_pass_parity_and_serve(config: object, tmp_path: Path) -> None:
    venvs = bench_peers.default_venvs()
    bins = {kind: venvs / kind / "bin" for kind in bench_peers.PEER_REQUIREMENTS}
    if not all((path / "python").exists() for path in bins.values()):
        pytest.skip(f"no peer environments in {venvs}: bench/bench_peers.py --setup-only")
    images = [encode_image(make_image(c, (400, 300), seed=i)) for i, c in enumerate(COLOR_SET)]
    reference = bench_peers.reference_answers(BUNDLED, images)
    args = argparse.Namespace(seconds=0.5, warmup=1)
    log = tmp_path / "peer.log"
    sample = bench_peers.measure(config, BUNDLED, bins, images, reference, args, log)
    assert sample.failed == 0 and sample.images_s[16] > 0  # type: ignore[attr-defined]
