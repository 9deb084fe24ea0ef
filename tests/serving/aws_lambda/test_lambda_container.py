"""The Lambda container image, built for real and invoked through the Lambda Runtime API.

The image is built from ``deploy/lambda/Dockerfile`` on the local base image, from the repository
root as the docs say; the test then plays the Lambda service: a fake Runtime API on 127.0.0.1
hands the container API Gateway, direct and S3 events, and the container's answers are checked.
S3 is the local moto server, reached over the host network exactly as the function would reach
S3. Without a Runtime API the same image serves the emulator's invoke URL
(``docker run -p 127.0.0.1:9000:8080``), also tested here.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_runtime_api import FakeRuntimeApi
from lambda_events import http_v1_event, http_v2_event, log_records, s3_put_event

pytestmark = [pytest.mark.slow, pytest.mark.containers]

REPO = Path(__file__).resolve().parents[3]
BASE_IMAGE = os.environ.get("IMGCLF_TEST_BASE_IMAGE", "localhost/python:3.11-slim")
IMAGE = "localhost/imgclf-lambda:test"


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


@pytest.fixture(scope="module")
def lambda_image() -> str:
    """Build the image as deploy/lambda/README.md says: from the repository root, whose
    ``.dockerignore`` decides what reaches the build context."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (run ../shared/tools/container-base.sh)")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        pytest.skip(f"base image {BASE_IMAGE} is missing (run ../shared/tools/container-base.sh)")
    build = subprocess.run(
        [
            *("podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}"),
            *("-f", "deploy/lambda/Dockerfile", "-t", IMAGE, "."),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


@pytest.fixture
def runtime_api() -> Iterator[FakeRuntimeApi]:
    with FakeRuntimeApi() as api:
        yield api


@pytest.fixture
def readable_bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """``tiny_bundle`` in a world-readable folder (pytest's own are private); file modes kept."""
    target = shutil.copytree(tiny_bundle, tmp_path / "mounted-bundle")
    target.chmod(0o755)
    return target


@pytest.fixture
def s3_bucket(s3: Any, make_bucket: Callable[[str], str]) -> tuple[Any, str]:
    """The local S3 client and a fresh bucket for the function to read and write."""
    return s3, make_bucket("container")


def run_function(image: str, api: FakeRuntimeApi, env: dict[str, str], volume: str) -> str:
    """Start the function container against the fake Runtime API; return its id."""
    args = ["run", "-d", "--network", "host", "-v", volume]
    for name, value in {**env, "AWS_LAMBDA_RUNTIME_API": api.address}.items():
        args += ["-e", f"{name}={value}"]
    return podman(*args, image).stdout.strip()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_local_invoke_url_without_runtime_api(
    lambda_image: str, readable_bundle: Path, image_bytes: Callable[..., bytes]
) -> None:
    """No AWS_LAMBDA_RUNTIME_API and no emulator in the image: the entrypoint serves the invoke
    URL itself, so the README's ``docker run -p ...:8080`` + ``curl`` works on any base image."""
    import httpx

    port = free_port()
    container = podman(
        "run", "-d", "-p", f"127.0.0.1:{port}:8080", "-v", f"{readable_bundle}:/opt/model:ro",
        "-e", "MODEL_URI=/opt/model", lambda_image,
    ).stdout.strip()  # fmt: skip
    url = f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations"
    try:
        answer = post_when_up(url, {"image": b64(image_bytes("green")), "top_k": 2})
        assert answer.status_code == 200, answer.text
        assert answer.json()["class"] == "green"
        assert len(answer.json()["top_k"]) == 2
        bad = httpx.post(url, json={"image": "@@@"}, timeout=30)
        assert bad.json()["statusCode"] == 400
        assert "base64" in bad.json()["detail"]
        not_json = httpx.post(url, content=b"{oops", timeout=30)
        assert not_json.status_code == 400
        assert "not JSON" in not_json.json()["detail"]
        stopped = podman("stop", "-t", "10", container, check=False)
        assert stopped.returncode == 0, stopped.stderr
        logs = podman("logs", container, check=False)
    finally:
        podman("rm", "-f", "-t", "0", container, check=False)
    statuses = [r["status"] for r in log_records(logs.stdout) if r["event"] == "request"]
    assert statuses == [200, 400]


def post_when_up(url: str, event: dict[str, Any], timeout_s: float = 60) -> Any:
    """POST an event once the container accepts connections."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return httpx.post(url, json=event, timeout=60)
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_image_has_no_torch_or_fastapi(lambda_image: str) -> None:
    probe = (
        "import importlib.util as u; "
        "print([m for m in ('torch', 'fastapi', 'timm') if u.find_spec(m)])"
    )
    result = podman(
        "run", "--rm", "--entrypoint", "/opt/venv/bin/python", lambda_image, "-c", probe
    )
    assert result.stdout.strip() == "[]"


def test_handler_runs_inside_the_image(
    lambda_image: str,
    runtime_api: FakeRuntimeApi,
    readable_bundle: Path,
    image_bytes: Callable[..., bytes],
    s3_bucket: tuple[Any, str],
) -> None:
    s3, bucket = s3_bucket
    s3.put_object(Bucket=bucket, Key="in/green.jpg", Body=image_bytes("green"))
    s3.put_object(Bucket=bucket, Key="in/readme.txt", Body=b"plain text")
    ids = {
        "v2": runtime_api.invoke(http_v2_event(json.dumps({"image": b64(image_bytes("red"))}))),
        "v1_binary": runtime_api.invoke(
            http_v1_event(image_bytes("blue", fmt="PNG"), content_type="image/png")
        ),
        "bad": runtime_api.invoke(http_v2_event('{"image": "@@@"}')),
        "direct": runtime_api.invoke({"image": b64(image_bytes("green")), "top_k": 2}),
        "s3": runtime_api.invoke(s3_put_event(bucket, "in/green.jpg", "in/readme.txt")),
    }
    env = {
        "MODEL_URI": "/opt/model",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": os.environ["AWS_ENDPOINT_URL_S3"],
        "AWS_LAMBDA_FUNCTION_NAME": "imgclf-classify",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "2048",
    }
    container = run_function(lambda_image, runtime_api, env, f"{readable_bundle}:/opt/model:ro")
    try:
        runtime_api.wait(list(ids.values()), timeout=180)
        logs = podman("logs", container, check=False)
    finally:
        podman("rm", "-f", "-t", "0", container, check=False)
    assert not runtime_api.init_errors, runtime_api.init_errors
    assert not runtime_api.errors, (runtime_api.errors, logs.stdout, logs.stderr)
    answers = {name: runtime_api.responses[rid] for name, rid in ids.items()}

    for name, label in (("v2", "red"), ("v1_binary", "blue")):
        assert answers[name]["statusCode"] == 200, answers[name]
        assert json.loads(answers[name]["body"])["class"] == label
    assert answers["bad"]["statusCode"] == 400
    assert "base64" in json.loads(answers["bad"]["body"])["detail"]
    assert answers["direct"]["class"] == "green"
    assert len(answers["direct"]["top_k"]) == 2
    assert [r["key"] for r in answers["s3"]["results"]] == ["in/green.jpg"]
    assert answers["s3"]["skipped"][0]["key"] == "in/readme.txt"
    written = json.loads(
        s3.get_object(Bucket=bucket, Key="predictions/in/green.jpg.json")["Body"].read()
    )
    assert written["class"] == "green"

    records = log_records(logs.stdout)
    assert [r["event"] for r in records].count("model_loaded") == 1
    assert {r["request_id"] for r in records if r["event"] == "request"} == {
        ids["v2"],
        ids["v1_binary"],
        ids["bad"],
        ids["direct"],
    }
