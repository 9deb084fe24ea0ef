"""``pip install .`` without extras, for real: a fresh virtual environment with the base
dependencies only, where every command either runs or names the extra to install.

Slow (about 20 s with a warm pip cache): it builds and installs the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from imgtools import make_image

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "imgclf" / "models" / "clothing-lite0"

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``pip install .`` of the working tree (no extras); its bin/."""
    work = tmp_path_factory.mktemp("base-install")
    source = work / "imgclf"  # a copy, so the build leaves nothing in the working tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=_env())
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv / "bin"


def imgclf(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed ``imgclf`` script."""
    return subprocess.run(
        [str(bin_dir / "imgclf"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )


def test_no_optional_dependency_is_installed(base_venv: Path) -> None:
    probe = "import importlib.util as u; print([m for m in {mods!r} if u.find_spec(m)])"
    modules = ["fastapi", "uvicorn", "torch", "grpc", "tritonclient", "matplotlib", "onnx"]
    result = subprocess.run(
        [str(base_venv / "python"), "-c", probe.format(mods=modules)],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_help_and_predict_work(base_venv: Path, tmp_path: Path) -> None:
    result = imgclf(base_venv, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("data", "train", "evaluate", "export", "predict", "serve", "model-server"):
        assert f"    {command}" in result.stdout
    image = tmp_path / "photo.jpg"
    make_image((200, 30, 30), (120, 160)).save(image)
    for model in ([], ["--model", str(BUNDLED)]):
        result = imgclf(base_venv, "predict", *model, str(image), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "photo.jpg" in result.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve"], "serve"),
        (["train", "data"], "train"),
        (["model-server", "--repository", "repo"], "grpc,serve"),
        (["export", "--format", "tflite"], "train,tflite"),
    ],
)
def test_commands_name_their_extra(
    base_venv: Path, tmp_path: Path, args: list[str], extra: str
) -> None:
    result = imgclf(base_venv, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert f"pip install 'imgclf[{extra}]'" in line


def test_bundled_model_exports_to_a_triton_repository(base_venv: Path, tmp_path: Path) -> None:
    result = imgclf(base_venv, "export", "--format", "triton", "--out", "repo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model_dir = tmp_path / "repo" / "clothing-lite0"
    assert (model_dir / "config.pbtxt").is_file()
    assert (model_dir / "1" / "model.onnx").stat().st_size > 1_000_000
