"""The commands of README.md, docs/deployment.md and deploy/lambda/README.md, run as written.

Each document's ``bash`` and ``python`` blocks run in order in one bash session, in a copy of the
repository (the files a clone would have, plus uncommitted work), with podman standing in for
Docker through the ``docker`` shim in ``shims/`` and the photos the docs name
(``tests/fixtures/clothing``) in the copy's root. Blocks that cannot run here carry a visible
``<!-- docs-test: skip: REASON -->`` annotation and are listed in ``KNOWN_SKIPS``, so a new
block runs unless someone decides otherwise; long-running commands are annotated ``background``
(see ``docs_runner``).

The image builds share their layers with the other container tests (same Dockerfiles, same
context), so after those the builds here are cache hits.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from docs_runner import BashSession, Block, extract_blocks

from imgtools import write_color_dataset

REPO = Path(__file__).resolve().parents[2]
SHIMS = Path(__file__).parent / "shims"
FIXTURES = REPO / "tests" / "fixtures" / "clothing"
DOCUMENTS = ("README.md", "docs/deployment.md", "deploy/lambda/README.md")
BASE_IMAGE = os.environ.get("IMGCLF_TEST_BASE_IMAGE", "localhost/python:3.11-slim")
#: Host ports the documents' commands publish or listen on.
DOCUMENTED_PORTS = (8000, 8001, 8080, 8500, 8501, 9000)
BUNDLED_MODEL = Path("src/imgclf/models/clothing-lite0")

#: Every block that does not run here, by document and first command, with the reason shown in
#: the document. A block added to a document runs unless it is added here too.
KNOWN_SKIPS: dict[tuple[str, str], str] = {
    ("README.md", "make test"): "runs this test suite itself",
    ("README.md", "pip install ."): (
        "installs each extra into the current environment in turn (torch and litert-torch are"
        " GBs; tflite needs an environment of its own); `make serve` installs the serving extras"
    ),
    ("README.md", "imgclf data download clothing-small --dest datasets/clothing-small"): (
        "downloads the dataset; the docs tests put a tiny generated one in its place"
    ),
    ("README.md", "imgclf data download intel-scenes --dest datasets/intel-scenes"): (
        "downloads the Kaggle dataset (needs your API token) and trains on 14,000 photos; the"
        " `imgclf train` block above runs the same steps on a tiny dataset"
    ),
    ("README.md", "from imgclf import train_and_export"): (
        "trains for 27 minutes; the `imgclf train` block above runs the same steps"
    ),
    ("docs/deployment.md", "docker build -f deploy/docker/train.Dockerfile -t imgclf-train ."): (
        "installs torch from PyTorch's wheel index (GBs; not reachable here)"
    ),
    (
        "docs/deployment.md",
        'docker run --rm -v "$PWD/data:/data:ro" -v "$PWD/runs:/runs" imgclf-train',
    ): ("needs the training image and a dataset"),
    (
        "docs/deployment.md",
        "kubectl apply -k deploy/k8s/overlays/dev",
    ): "needs a Kubernetes cluster",
    ("docs/deployment.md", "kubectl apply -f deploy/k8s/ray/bulk-rayjob.yaml"): (
        "needs a Kubernetes cluster"
    ),
    ("docs/deployment.md", "imgclf export my-bundle --format triton --out repo"): (
        "needs an AWS account and a KServe cluster"
    ),
    (
        "docs/deployment.md",
        "aws cloudformation deploy --template-file deploy/ecs/template.yaml --stack-name imgclf",
    ): "needs an AWS account and a VPC",
    ("docs/deployment.md", "torchrun --nnodes 2 --nproc-per-node 2"): (
        "needs two machines that reach each other"
    ),
    ("docs/deployment.md", "kubectl apply -f deploy/k8s/training/pytorchjob.yaml"): (
        "needs a Kubernetes cluster with the Kubeflow training operator"
    ),
    ("docs/deployment.md", "make lock"): (
        "resolves every lock against PyPI (network) and rewrites deploy/locks"
    ),
    ("docs/deployment.md", "bash ../shared/tools/container-base.sh"): (
        "sets up the machine (root, apt) and runs this test suite itself"
    ),
    ("deploy/lambda/README.md", "aws ecr create-repository --repository-name imgclf-lambda"): (
        "needs an AWS account"
    ),
    ("deploy/lambda/README.md", "tar -czf colors.tar.gz -C runs/colors ."): (
        "needs an AWS account and a trained runs/colors"
    ),
    ("deploy/lambda/README.md", "bash ../shared/tools/container-base.sh"): (
        "sets up the machine (root, apt) and runs this test suite itself"
    ),
}


def all_blocks() -> list[Block]:
    return [b for doc in DOCUMENTS for b in extract_blocks(REPO / doc, doc)]


def test_skipped_blocks_are_exactly_the_known_ones() -> None:
    """A new block runs by default; skipping one is a visible, reviewed decision."""
    skipped = {(b.document, b.key): b.skip for b in all_blocks() if b.skip is not None}
    assert skipped == KNOWN_SKIPS


def test_every_document_has_blocks_that_run() -> None:
    for doc in DOCUMENTS:
        runnable = [b for b in extract_blocks(REPO / doc, doc) if b.skip is None]
        assert runnable, f"{doc}: no block runs"


# ---- running the documents ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """The repository copy the documents run in, and the environment of their shell."""

    root: Path
    env: dict[str, str]
    label: str
    project: str


def copy_repository(target: Path) -> None:
    """The files a clone would have (tracked and new, not ignored), as they are now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (item.decode() for item in listed)):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def write_photos(root: Path) -> None:
    """``photo.jpg`` and ``shirt.jpg``: the clothing photos the docs' sample answers describe,
    shipped in ``tests/fixtures/clothing`` (CC0; origin there) so a fresh clone runs the docs."""
    for name in ("photo.jpg", "shirt.jpg"):
        shutil.copy(FIXTURES / name, root / name)


def require_podman() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman not installed: run ../shared/tools/container-base.sh")
    exists = subprocess.run(["podman", "image", "exists", BASE_IMAGE], check=False)
    if exists.returncode != 0:
        pytest.skip(f"base image {BASE_IMAGE} missing: run ../shared/tools/container-base.sh")


def require_free_ports() -> None:
    """The documents publish fixed ports; another server on one would answer in their place."""
    for port in DOCUMENTED_PORTS:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(f"127.0.0.1:{port} is in use; the documents' servers need it")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A repository copy with the docs' sample files; containers removed afterwards."""
    require_podman()
    require_free_ports()
    root = tmp_path_factory.mktemp("docs") / "imgclf"
    copy_repository(root)
    write_photos(root)
    bundle = shutil.copytree(REPO / BUNDLED_MODEL, root / "my-bundle")  # "your bundle"
    bundle.chmod(0o755)  # mounted into containers that run as uid 10001
    # The README downloads clothing-small, then trains on it and serves the run: a tiny
    # generated dataset (three colours, four photos per class and split) stands in for it, so
    # its train, evaluate, predict and serve commands run as written in minutes.
    write_color_dataset(root / "datasets" / "clothing-small", per_class=4)
    label = f"imgclf-docs-test={os.getpid()}"
    project = f"imgclf-docs-{os.getpid()}"
    bin_dir = Path(sys.executable).parent
    env = {
        **{k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
        "PATH": os.pathsep.join([str(SHIMS), str(bin_dir), os.environ.get("PATH", "")]),
        "DOCS_TEST_PYTHON": sys.executable,
        "DOCS_TEST_BASE_IMAGE": BASE_IMAGE,
        "DOCS_TEST_LABEL": label,
        "BASE_IMAGE": BASE_IMAGE,  # compose.yaml's build argument
        "BUILDAH_FORMAT": "docker",  # podman-compose's builds keep HEALTHCHECK too
        "COMPOSE_PROJECT_NAME": project,  # never touches a real "imgclf" stack
    }
    yield Workspace(root, env, label, project)
    subprocess.run(
        [sys.executable, "-m", "podman_compose", "-f", "deploy/compose.yaml", "down", "-t", "5"],
        cwd=root,
        env=env,
        capture_output=True,
        check=False,
        timeout=120,
    )
    for label_filter in (label, f"io.podman.compose.project={project}"):
        ids = subprocess.run(
            ["podman", "ps", "-aq", "--filter", f"label={label_filter}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if ids:
            subprocess.run(
                ["podman", "rm", "-f", "-t", "0", *ids], capture_output=True, check=False
            )
    networks = subprocess.run(
        ["podman", "network", "ls", "-q", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if networks:
        subprocess.run(
            ["podman", "network", "rm", "-f", *networks], capture_output=True, check=False
        )


@pytest.mark.slow
@pytest.mark.containers
@pytest.mark.parametrize("document", DOCUMENTS)
def test_document_commands_run_as_written(workspace: Workspace, document: str) -> None:
    blocks = extract_blocks(workspace.root / document, document)
    log_dir = workspace.root.parent / f"logs-{document.replace('/', '-')}"
    log_dir.mkdir(exist_ok=True)
    session = BashSession(workspace.root, workspace.env, log_dir)
    failures = []
    try:
        for block in blocks:
            if block.skip is not None:
                continue
            outcome = session.run(block)
            if not outcome.ok:
                background = "".join(
                    f"\n--- {log.name} ---\n{log.read_text(errors='replace')[-2000:]}"
                    for log in sorted(log_dir.glob("background-*.log"))
                )
                failures.append(
                    f"{block.where()} `{block.key}`: failed {outcome.failed_commands}"
                    f" {outcome.problems}\n{outcome.output[-3000:]}{background}"
                )
    finally:
        session.close()
    assert not failures, "\n\n".join(failures)
