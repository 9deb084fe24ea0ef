"""`imgclf predict --engine ray` against a real two-node Ray cluster on this machine.

The cluster is ``ray start --head`` plus a second ``ray start --address`` node (one CPU each, so
two actors land on two nodes), started with ``--block`` in process groups of their own and torn
down by those ids. Jobs are submitted by running ``imgclf predict --address HOST:PORT`` as a
user would; their workers import this checkout (PYTHONPATH) and reach the moto S3 server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import imgclf
from bundle_server import free_port
from imgtools import COLORS, clothing_dir, encode_image, make_image

pytest.importorskip("ray.data", reason="the Ray engine needs the ray extra")
pa_parquet = pytest.importorskip("pyarrow.parquet", reason="Parquet output needs pyarrow")
pytestmark = pytest.mark.slow

SRC = str(Path(imgclf.__file__).resolve().parents[1])
RAY = str(Path(sys.executable).with_name("ray"))


class Cluster:
    """A head and a worker node; ``address`` for drivers, ``env`` shared by every process."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env = env
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.marker = env["IMGCLF_TEST_RAY_CLUSTER"]
        common = ["--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1",
                  "--disable-usage-stats"]  # fmt: skip
        head = [RAY, "start", "--head", "--port", str(self.port), "--include-dashboard=false",
                "--temp-dir", str(workdir), *common]  # fmt: skip
        self.nodes = [self._spawn(head, workdir / "head.log")]
        self._wait_for_nodes(1)
        worker = [RAY, "start", "--address", self.address, *common]
        self.nodes.append(self._spawn(worker, workdir / "worker.log"))
        self._wait_for_nodes(2)

    def _spawn(self, command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            return subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def _wait_for_nodes(self, count: int, timeout_s: float = 180) -> None:
        script = (
            f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = subprocess.run(
                [sys.executable, "-c", script], env=self.env, capture_output=True, text=True,
                timeout=120, check=False,
            )  # fmt: skip
            if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
                return
            time.sleep(1)
        raise AssertionError(f"the Ray cluster never had {count} nodes")

    def worker_pids(self, name: str) -> list[int]:
        """Pids of this cluster's worker processes whose title starts with ``name``."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
                environ = (proc / "environ").read_bytes()
            except (OSError, ValueError):
                continue
            if title.startswith(name) and self.marker.encode() in environ:
                pids.append(int(proc.name))
        return pids

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)  # the group started for this node only
                node.wait()


@pytest.fixture(scope="module")
def cluster(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "RAY_AUTH_MODE": "disabled",
        "IMGCLF_TEST_RAY_CLUSTER": uuid.uuid4().hex,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": s3_endpoint,
    }  # fmt: skip
    workdir = Path(f"/tmp/imgclf-ray-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths
    workdir.mkdir()
    cluster = Cluster(env, workdir)
    try:
        yield cluster
    finally:
        cluster.stop()


def predict(
    args: list[str], env: dict[str, str], timeout_s: float = 400
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "imgclf", "predict", *args],
        env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip


def read_rows(out: Path) -> list[dict[str, Any]]:
    if out.suffix == ".jsonl":
        return [json.loads(line) for line in out.read_text().splitlines()]
    return list(pa_parquet.read_table(out).to_pylist())


def write_colors(root: Path, count: int) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        color = list(COLORS)[i % 3]
        image = encode_image(make_image(COLORS[color], (48, 40), seed=i), "PNG")
        (root / f"{i:04d}_{color}.png").write_bytes(image)
    (root / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def test_rows_equal_the_local_engine_and_a_rerun_adds_nothing(
    cluster: Cluster, tiny_bundle: Path, tmp_path: Path
) -> None:
    photos = write_colors(tmp_path / "photos", 40)
    local = predict(["-m", str(tiny_bundle), str(photos), "-o", str(tmp_path / "local.jsonl")],
                    cluster.env)  # fmt: skip
    assert local.returncode == 1, local.stderr  # the broken file is a failed row
    args = ["-m", str(tiny_bundle), str(photos), "--engine", "ray", "--address", cluster.address,
            "--actors", "2", "--batch-size", "8", "-o", str(tmp_path / "ray")]  # fmt: skip
    first = predict(args, cluster.env)
    assert first.returncode == 1, first.stderr
    assert "41 rows written" in first.stderr
    expected = {r["path"]: r for r in read_rows(tmp_path / "local.jsonl")}
    rows = read_rows(tmp_path / "ray")
    assert sorted(r["path"] for r in rows) == sorted(expected)
    for row in rows:
        want = expected[row["path"]]
        assert (row["class"], row["error"], row["model"]) == (
            want["class"], want["error"], want["model"]
        )  # fmt: skip
        if row["error"] is None:
            assert row["probability"] == pytest.approx(want["probability"], abs=1e-6)
            assert [s["class"] for s in row["top_k"]] == [s["class"] for s in want["top_k"]]
    again = predict(args, cluster.env)
    assert "0 rows written" in again.stderr and "41 already there" in again.stderr
    assert len(read_rows(tmp_path / "ray")) == 41


def test_clothing_test_split_matches_the_local_engine(cluster: Cluster, tmp_path: Path) -> None:
    split = clothing_dir() / "test"
    if not split.is_dir():
        pytest.skip(f"clothing-small test split not found at {split}")
    local = predict([str(split), "-o", str(tmp_path / "local.jsonl")], cluster.env, 900)
    assert local.returncode == 0, local.stderr
    ray = predict([str(split), "--engine", "ray", "--address", cluster.address, "--actors", "2",
                   "-o", str(tmp_path / "ray")], cluster.env, 900)  # fmt: skip
    assert ray.returncode == 0, ray.stderr
    expected = {r["path"]: r["class"] for r in read_rows(tmp_path / "local.jsonl")}
    got = {r["path"]: r["class"] for r in read_rows(tmp_path / "ray")}
    assert len(got) == len(expected) == 372
    assert got == expected


def test_a_killed_worker_still_gives_every_input_exactly_once(
    cluster: Cluster, tiny_bundle: Path, tmp_path: Path
) -> None:
    photos = write_colors(tmp_path / "photos", 300)
    out = tmp_path / "rows.jsonl"
    args = ["-m", str(tiny_bundle), str(photos), "--engine", "ray", "--address", cluster.address,
            "--actors", "2", "--batch-size", "4", "-o", str(out)]  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "imgclf", "predict", *args],
        env=cluster.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    ) as driver:  # fmt: skip
        killed = kill_a_classifier_mid_run(cluster, out, driver)
        _, stderr = driver.communicate(timeout=600)
    assert killed, "no Classifier worker was found to kill"
    paths = [row["path"] for row in read_rows(out)]
    assert len(paths) == len(set(paths)) == 301, stderr
    assert driver.returncode == 1  # the broken file, nothing else


def kill_a_classifier_mid_run(cluster: Cluster, out: Path, driver: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        written = out.read_text().count("\n") if out.exists() else 0
        # The read is fused into the actors: no task workers beside them.
        workers = cluster.worker_pids("ray::MapWorker(MapBatches(read_inputs)->MapBatches(Classi")
        if 0 < written < 250 and workers:
            os.kill(workers[0], signal.SIGKILL)
            return True
        time.sleep(0.05)
    return False


def test_s3_model_and_s3_source(
    cluster: Cluster,
    tiny_bundle: Path,
    tmp_path: Path,
    s3: Any,
    make_bucket: Callable[[str], str],
) -> None:
    bucket = make_bucket("bulk")
    for path in tiny_bundle.iterdir():
        s3.upload_file(str(path), bucket, f"models/colors/{path.name}")
    for path in write_colors(tmp_path / "photos", 12).iterdir():
        s3.upload_file(str(path), bucket, f"photos/{path.name}")
    s3.put_object(Bucket=bucket, Key="photos/readme.txt", Body=b"not an image: not listed")
    result = predict(
        ["-m", f"s3://{bucket}/models/colors/", f"s3://{bucket}/photos/", "--engine", "ray",
         "--address", cluster.address, "--actors", "1:2", "-o", str(tmp_path / "rows.csv")],
        cluster.env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO((tmp_path / "rows.csv").read_text())))
    assert len(rows) == 13
    for row in rows:
        assert row["path"].startswith(f"s3://{bucket}/photos/")
        if row["error"]:
            assert row["path"].endswith("zz_broken.jpg")
        else:
            assert row["path"].endswith(f"_{row['class']}.png")
            assert json.loads(row["top_k"])[0]["class"] == row["class"]
