"""The locks (deploy/locks): current with pyproject.toml, hashed, and what images and CI install.

A lock is stale when pyproject.toml asks for something it does not pin: a new dependency, a
raised floor, or a dependency gone from pyproject.toml that the lock still installs as a direct
one. ``make lock`` (deploy/locks/update.sh) regenerates them; these checks need no network.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import DEPLOY_DIR, DOCKER_DIR, REPO_ROOT, parse_dockerfile
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCKS = DEPLOY_DIR / "locks"
#: Lock file -> the extras it installs besides the base dependencies.
LOCK_EXTRAS: dict[str, tuple[str, ...]] = {
    "serve.txt": ("serve", "grpc", "s3"),
    "lambda.txt": ("lambda",),
    "train.txt": ("train",),
    # `make install-dev` (tests and CI); kaggle comes in through the dev extra's imgclf[kaggle].
    "dev.txt": ("serve", "grpc", "lambda", "train", "ray", "s3", "dev", "kaggle"),
}
#: Installed by version, not from train.txt or dev.txt: the training image takes them from
#: PyTorch's CPU index (train-torch.txt), `make install-dev` from the Makefile's TORCH_PINS.
TORCH = frozenset({"torch", "torchvision"})
MAKEFILE = REPO_ROOT / "Makefile"
#: Dockerfile -> the locks it installs.
IMAGE_LOCKS: dict[Path, tuple[str, ...]] = {
    DOCKER_DIR / "serve.Dockerfile": ("serve.txt", "build.txt"),
    DOCKER_DIR / "model-server.Dockerfile": ("serve.txt", "build.txt"),
    DOCKER_DIR / "train.Dockerfile": ("train-torch.txt", "train.txt", "build.txt"),
    DEPLOY_DIR / "lambda" / "Dockerfile": ("lambda.txt", "build.txt"),
}
SELF = "imgclf (pyproject.toml)"


@dataclass
class Pin:
    """One lock entry: ``name==version ; marker``, its hashes and what requires it."""

    requirement: Requirement
    hashes: list[str]
    via: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return canonicalize_name(self.requirement.name)

    @property
    def version(self) -> Version:
        (spec,) = self.requirement.specifier
        assert spec.operator == "==", f"{self.requirement}: not an exact pin"
        return Version(spec.version)


def parse_lock(path: Path) -> list[Pin]:
    """The entries of a pip requirements file written by ``uv pip compile --generate-hashes``."""
    pins: list[Pin] = []
    pending = ""
    in_via = False
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment = stripped.lstrip("#").strip()
            if pins and (comment == "via" or comment.startswith("via ")):
                if comment != "via":  # one requirer on the same line, else one per line below
                    pins[-1].via.append(comment.removeprefix("via ").strip())
                in_via = True
            elif pins and in_via and comment and line.startswith("    #   "):
                pins[-1].via.append(comment)
            continue
        in_via = False
        pending += stripped.removesuffix("\\") + " "
        if stripped.endswith("\\"):
            continue
        if pending.strip():
            text, *hashes = re.split(r"\s+--hash=", pending.strip())
            pins.append(Pin(Requirement(text), [h.strip() for h in hashes]))
        pending = ""
    return pins


def project() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text("utf-8"))
    return loaded


def direct_requirements(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[Requirement]:
    """The base dependencies and the extras' ones, self-references (``imgclf[x]``) left out."""
    meta = pyproject["project"]
    texts = list(meta["dependencies"]) + [
        text for extra in extras for text in meta["optional-dependencies"][extra]
    ]
    found = [Requirement(text) for text in texts]
    return [r for r in found if canonicalize_name(r.name) != canonicalize_name(meta["name"])]


def stale_reasons(pyproject: dict[str, Any], lock: str) -> list[str]:
    """Why ``lock`` does not match ``pyproject`` (empty: it is current)."""
    pins = parse_lock(LOCKS / lock)
    left_out = TORCH if lock in ("train.txt", "dev.txt") else frozenset()
    wanted = [
        r for r in direct_requirements(pyproject, LOCK_EXTRAS[lock]) if r.name not in left_out
    ]
    by_name: dict[str, list[Pin]] = {}
    for pin in pins:
        by_name.setdefault(pin.name, []).append(pin)
    reasons = []
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        if name not in by_name:
            reasons.append(f"{lock}: {requirement} is not pinned")
            continue
        for pin in by_name[name]:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                reasons.append(f"{lock}: {pin.requirement} does not satisfy {requirement}")
    direct = {pin.name for pin in pins if SELF in pin.via}
    assert direct, f"{lock}: no entry annotated 'via {SELF}'; regenerate it with `make lock`"
    for name in sorted(direct - {canonicalize_name(r.name) for r in wanted}):
        reasons.append(f"{lock}: pins {name} for imgclf, which no longer asks for it")
    return reasons


@pytest.mark.parametrize("lock", sorted(LOCK_EXTRAS))
def test_lock_is_current_with_pyproject(lock: str) -> None:
    reasons = stale_reasons(project(), lock)
    assert not reasons, "\n".join([*reasons, "the lock is stale: run `make lock`"])


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda p: p["project"]["dependencies"].append("rich>=13"), "rich>=13 is not pinned"),
        (
            lambda p: p["project"]["dependencies"].__setitem__(0, "numpy>=99"),
            "does not satisfy numpy>=99",
        ),
        (
            lambda p: p["project"]["dependencies"].remove("tqdm>=4.66"),
            "pins tqdm for imgclf, which no longer asks for it",
        ),
    ],
)
def test_a_stale_lock_is_caught(edit: Any, reason: str) -> None:
    edited = copy.deepcopy(project())
    assert stale_reasons(edited, "serve.txt") == []
    edit(edited)
    assert any(reason in line for line in stale_reasons(edited, "serve.txt"))


@pytest.mark.parametrize("lock", [*sorted(LOCK_EXTRAS), "build.txt"])
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    pins = parse_lock(LOCKS / lock)
    assert len(pins) >= 3
    for pin in pins:
        assert pin.version, pin.requirement
        assert pin.hashes, f"{lock}: {pin.requirement} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), pin.requirement


def test_serving_locks_have_no_torch_and_train_gets_torch_from_its_own_pins() -> None:
    for lock, heavy in (
        ("serve.txt", {"torch", "torchvision", "timm", "tensorflow"}),
        ("lambda.txt", {"torch", "torchvision", "timm", "tensorflow"}),
        ("train.txt", {"torch", "torchvision", "triton"}),  # PyPI's CUDA build and its parts
        ("dev.txt", {"torch", "torchvision", "triton"}),
    ):
        names = {pin.name for pin in parse_lock(LOCKS / lock)}
        assert not names & heavy, lock
        assert not any(name.startswith(("nvidia-", "cuda-")) for name in names), lock
    torch_pins = {pin.name: pin for pin in parse_lock(LOCKS / "train-torch.txt")}
    assert set(torch_pins) == TORCH
    for requirement in direct_requirements(project(), ("train",)):
        if requirement.name in TORCH:
            assert requirement.specifier.contains(torch_pins[requirement.name].version)


def test_build_lock_covers_the_build_system() -> None:
    wanted = [Requirement(text) for text in project()["build-system"]["requires"]]
    pins = {pin.name: pin for pin in parse_lock(LOCKS / "build.txt")}
    for requirement in wanted:
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)].version)


@pytest.mark.parametrize("path", sorted(IMAGE_LOCKS), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_images_install_only_from_their_locks_with_hashes(path: Path) -> None:
    runs = [run for stage in parse_dockerfile(path).stages for run in stage.args("RUN")]
    installs = [
        part.strip() for run in runs for part in run.split("&&") if " install " in f"{part} "
    ]
    used = set()
    for install in installs:
        if "/tmp/dist/*.whl" in install:  # the imgclf wheel itself, built from this source
            assert "--no-deps" in install, install
            continue
        match = re.search(r"-r /build/(\S+)", install)
        assert match, f"{path.name}: installs something unlocked: {install}"
        used.add(match[1])
        if match[1] == "train-torch.txt":  # by version from the CPU index, see update.sh
            assert '--index-url "${TORCH_INDEX_URL}"' in install and "--no-deps" in install
        else:
            assert "--require-hashes" in install and "--no-deps" in install, install
    assert used == set(IMAGE_LOCKS[path])
    assert any("pip check" in run for run in runs), f"{path.name}: no pip check"


def test_lock_parser_reads_every_requirer() -> None:
    numpy = [pin for pin in parse_lock(LOCKS / "serve.txt") if pin.name == "numpy"]
    assert numpy and all(SELF in pin.via and "onnxruntime" in pin.via for pin in numpy)


def make_variable(name: str) -> str:
    """A ``NAME ?= value`` or ``NAME := value`` line of the Makefile."""
    match = re.search(rf"^{name} *[?:]?= *(.+)$", MAKEFILE.read_text("utf-8"), re.MULTILINE)
    assert match, f"Makefile: no {name}"
    return match[1].strip()


def make_recipe(target: str) -> list[str]:
    """The command lines of a Makefile target."""
    lines = MAKEFILE.read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_install_dev_installs_the_dev_lock_with_hashes_and_torch_by_its_pins() -> None:
    extras = make_variable("DEV_EXTRAS").split(",")
    # The lock holds what the editable install asks for (kaggle comes with dev's imgclf[kaggle]).
    assert [*extras, "kaggle"] == list(LOCK_EXTRAS["dev.txt"])
    recipe = make_recipe("install-dev")
    assert recipe[0] == "$(BIN)/pip install --quiet $(TORCH_PINS)"
    assert "--require-hashes --no-deps -r deploy/locks/dev.txt" in recipe[1]
    assert "--no-deps -e '.[$(DEV_EXTRAS)]'" in recipe[2]
    assert recipe[3] == "$(BIN)/pip check"
    assert len(recipe) == 4, "install-dev installs something the lock does not pin"
    # The torch pins satisfy what the train extra asks for, and `make lock` resolves against them.
    texts = make_variable("TORCH_PINS").split()
    pins = {Requirement(text).name: Requirement(text) for text in texts}
    assert set(pins) == TORCH
    for requirement in direct_requirements(project(), ("train",)):
        if requirement.name in TORCH:
            (pin,) = pins[requirement.name].specifier
            assert requirement.specifier.contains(pin.version), requirement
    (command,) = [line for line in make_recipe("lock") if "update.sh" in line]
    assert 'TORCH_PINS="$(TORCH_PINS)"' in command and 'DEV_EXTRAS="$(DEV_EXTRAS)"' in command
