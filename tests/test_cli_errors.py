"""Every CLI failure is one line on stderr and a documented exit code, never a traceback.

Each kind runs ``python -m imgclf`` in a real subprocess, as a user would see it. The codes are
the table in README.md ("Exit codes") and :data:`imgclf.cli.EXIT_CODES`.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from imgclf.cli import EXIT_CODES
from imgtools import COLORS, make_image

ROOT = Path(__file__).resolve().parents[1]

#: Runs the CLI with one function replaced, to provoke failures no valid input reaches.
_WITH_FAULT = """
import sys
import imgclf.inference.predictor as predictor

def fault(*args, **kwargs):
    raise {exception}

predictor.Predictor.from_bundle = fault
from imgclf.cli import main
sys.exit(main(sys.argv[1:]))
"""


def imgclf(
    args: Sequence[str], cwd: Path, fault: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``imgclf ARGS``; with ``fault``, ``Predictor.from_bundle`` raises that expression."""
    command = [sys.executable, "-m", "imgclf"]
    if fault is not None:
        command = [sys.executable, "-c", _WITH_FAULT.format(exception=fault)]
    return subprocess.run(
        [*command, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def one_line(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The single stderr line of a failed command (asserts there is exactly one, no traceback)."""
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"imgclf {command}: ")
    return line


@pytest.fixture
def weights_only_bundle(tiny_bundle: Path) -> Path:
    """A bundle as ``imgclf train --no-export`` leaves it: PyTorch weights, nothing to run."""
    from imgclf.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    (tiny_bundle / "model.pt").write_bytes(b"weights")
    bundle.manifest.artifacts.clear()
    bundle.add_artifact("pytorch", tiny_bundle / "model.pt", format="pytorch", precision="fp32")
    (tiny_bundle / "model.onnx").unlink()
    return tiny_bundle


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "red.jpg"
    make_image(COLORS["red"]).save(path)
    return path


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_usage_error_is_argparse_usage_and_code_2(tmp_path: Path) -> None:
    result = imgclf(["predict", "--top-k", "0", "x.jpg"], tmp_path)
    assert result.returncode == EXIT_CODES["error"] == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("imgclf predict: error: argument --top-k")


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_bundle_without_a_runnable_artifact(
    command: str, weights_only_bundle: Path, tmp_path: Path
) -> None:
    """The issue's case: a fresh --no-export run served or used directly."""
    args = {"predict": ["x.jpg"], "serve": ["--port", "0"]}[command]
    result = imgclf([command, "-m", str(weights_only_bundle), *args], tmp_path)
    assert result.returncode == EXIT_CODES["error"]
    line = one_line(result, command)
    assert "has no runnable artifact (has: pytorch)" in line
    assert f"imgclf export {weights_only_bundle} --format onnx" in line


def test_missing_bundle(tmp_path: Path) -> None:
    result = imgclf(["predict", "-m", str(tmp_path / "none"), "x.jpg"], tmp_path)
    assert result.returncode == EXIT_CODES["error"]
    assert "does not exist" in one_line(result, "predict")


def test_port_in_use_is_one_line_before_the_server_starts(busy_port: int, tmp_path: Path) -> None:
    result = imgclf(["serve", "--port", str(busy_port)], tmp_path)
    assert result.returncode == EXIT_CODES["error"]
    line = one_line(result, "serve")  # not uvicorn's JSON start-up log and exit 3
    assert f"cannot listen on 127.0.0.1:{busy_port}" in line


def test_unwritable_output_names_the_path(photo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"  # missing folders are created; a file in the way is not one
    blocker.write_text("not a folder")
    out = blocker / "predictions.csv"
    result = imgclf(["predict", str(photo), "-o", str(out)], tmp_path)
    assert result.returncode == EXIT_CODES["error"]
    assert one_line(result, "predict").startswith("imgclf predict: error: ")
    assert str(blocker) in one_line(result, "predict")


def test_some_inputs_failing_is_code_1(photo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    result = imgclf(["predict", str(photo), str(broken)], tmp_path)
    assert result.returncode == EXIT_CODES["partial"] == 1
    assert "1 of 2 inputs failed" in one_line(result, "predict")


def test_a_bug_is_one_line_and_code_70(photo: Path, tmp_path: Path) -> None:
    result = imgclf(["predict", str(photo)], tmp_path, fault="RuntimeError('boom\\nsecond line')")
    assert result.returncode == EXIT_CODES["internal"] == 70
    line = one_line(result, "predict")
    assert line.startswith("imgclf predict: internal error: RuntimeError: boom | second line")
    assert "--debug" in line


def test_debug_adds_the_traceback_and_keeps_the_code(photo: Path, tmp_path: Path) -> None:
    result = imgclf(["--debug", "predict", str(photo)], tmp_path, fault="RuntimeError('boom')")
    assert result.returncode == EXIT_CODES["internal"]
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("imgclf predict: internal error: ")


def test_ctrl_c_is_code_130(photo: Path, tmp_path: Path) -> None:
    result = imgclf(["predict", str(photo)], tmp_path, fault="KeyboardInterrupt")
    assert result.returncode == EXIT_CODES["interrupted"] == 130
    assert result.stderr == "interrupted\n"


def test_readme_documents_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Exit codes") :]
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", section, re.MULTILINE)}
    assert documented == set(EXIT_CODES.values())
