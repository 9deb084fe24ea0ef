"""The command line with only the base install: every command is listed and either runs or names
the extra to install.

The subprocess tests hide every optional dependency (``None`` in ``sys.modules`` makes importing
it raise ``ModuleNotFoundError``, exactly as when it is not installed), so they check the base
install's behaviour from this development environment; ``test_cli_install.py`` checks the same in
a real virtual environment without extras.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

import pytest

from imgclf import cli
from imgclf.bundle import default_bundle_path, load_bundle
from imgtools import make_image

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["data", "train", "evaluate", "export", "predict", "serve", "model-server"]

_WITHOUT_EXTRAS = """
import sys
for name in {modules!r}:
    sys.modules[name] = None  # import raises ModuleNotFoundError, as if not installed
from imgclf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def run_without_extras(
    args: Sequence[str], cwd: Path, modules: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``imgclf ARGS`` in a fresh interpreter where ``modules`` (default: every optional
    dependency) cannot be imported."""
    script = _WITHOUT_EXTRAS.format(modules=sorted(modules or cli.EXTRA_MODULES))
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_help_lists_every_command_without_extras(tmp_path: Path) -> None:
    result = run_without_extras(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"^ {4}(\S+)", result.stdout, re.MULTILINE)
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_works_without_extras(command: str, tmp_path: Path) -> None:
    result = run_without_extras([command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: imgclf {command}")


def test_predict_runs_without_extras(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    make_image((200, 30, 30), (120, 160)).save(image)
    result = run_without_extras(["predict", str(image), "--format", "jsonl"], tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["class"] in load_bundle(default_bundle_path(), verify=False).labels


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["serve"], "serve"),
        (["serve", "--model-server", "grpc://127.0.0.1:9"], "serve"),
        (["model-server", "--repository", "repo"], "grpc,serve"),
        (["train", "{data}", "--out", "run"], "train"),
        (["evaluate", "{bundle}", "--data", "{data}", "--out", "report"], "train"),
        (["export", "--format", "onnx"], "train"),
        (["export", "--format", "tflite"], "train,tflite"),
        (["data", "download", "intel-scenes", "--dest", "intel"], "kaggle"),
    ],
)
def test_command_needing_an_extra_names_it(
    args: list[str], extra: str, color_dataset: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    argv = [arg.format(data=color_dataset, bundle=tiny_bundle) for arg in args]
    result = run_without_extras(argv, tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"imgclf {args[0]}: error: ")
    assert f"pip install 'imgclf[{extra}]'" in line


def test_gateway_mode_without_the_grpc_extra_names_it(tmp_path: Path) -> None:
    # The serve extra is there, gRPC is not: a one-line message before the server starts.
    args = ["serve", "--model-server", "grpc://127.0.0.1:9", "--port", "0"]
    result = run_without_extras(args, tmp_path, modules=["grpc", "tritonclient"])
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "pip install 'imgclf[serve,grpc]'" in line


def test_missing_extra_names_only_optional_dependencies() -> None:
    assert cli.missing_extra(ModuleNotFoundError("x", name="torch.nn")) == "train"
    assert cli.missing_extra(ModuleNotFoundError("x", name="uvicorn")) == "serve"
    assert cli.missing_extra(ModuleNotFoundError("x", name="imgclf.nowhere")) is None
    assert cli.missing_extra(ModuleNotFoundError("x")) is None


def test_a_missing_module_of_imgclf_itself_is_not_blamed_on_an_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: object) -> int:
        raise ModuleNotFoundError("No module named 'imgclf.nowhere'", name="imgclf.nowhere")

    parser = argparse.ArgumentParser(prog="imgclf")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument("--debug", action="store_true")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("boom").set_defaults(handler=broken)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["boom"]) == cli.EXIT_CODES["internal"]
    (line,) = capsys.readouterr().err.splitlines()
    assert "internal error: ModuleNotFoundError" in line and "imgclf.nowhere" in line
    assert "extra" not in line and "pip install" not in line


def _requirement_names(requirements: list[str]) -> set[str]:
    names = (re.match(r"[A-Za-z0-9._-]+", r) for r in requirements)
    return {re.sub(r"[-_.]+", "-", m.group(0)).lower() for m in names if m}


def _requires(distribution: str) -> list[str]:
    try:
        return requires(distribution) or []
    except PackageNotFoundError:
        return []


def test_extra_table_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = {
        name: _requirement_names(reqs) for name, reqs in project["optional-dependencies"].items()
    }
    base = _requirement_names(project["dependencies"])
    installed = packages_distributions()
    checked = 0
    for module, extra in cli.EXTRA_MODULES.items():
        dists = _requirement_names(installed.get(module, []))
        if not dists:
            continue  # not installed here (e.g. the tflite extra): nothing to compare
        wanted = extras[extra] | {
            dep for name in extras[extra] for dep in _requirement_names(_requires(name))
        }  # what the extra installs, one level down (boto3 brings botocore)
        assert dists & wanted, f"{module} ({dists}) is not installed by the {extra!r} extra"
        assert not dists & base, f"{module} is a base dependency, never missing"
        checked += 1
    assert checked >= 15
