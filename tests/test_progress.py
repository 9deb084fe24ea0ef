"""Progress on stderr: a bar on a terminal, plain timed lines in logs, never on stdout."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from imgclf import progress as progress_module
from imgclf.progress import note, progress

SRC = Path(__file__).resolve().parents[1] / "src"

SCRIPT = textwrap.dedent(
    """
    import time
    from imgclf.progress import note, progress

    for _ in progress(range(6), desc="features train 1/1", unit="img"):
        time.sleep(0.1)
    bar = progress(desc="head fit", total=3, unit="fit")
    for _ in range(3):
        bar.update()
    bar.close()
    note("precision: fp32 (test)")
    print("result line")
    """
)


def _run(interval: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "IMGCLF_PROGRESS_INTERVAL": interval}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,  # stderr is a pipe, not a terminal
        text=True,
        env=env,
        timeout=60,
        check=True,
    )


def test_without_a_terminal_progress_is_plain_lines_on_stderr() -> None:
    done = _run("0.15")
    assert done.stdout == "result line\n"
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    train = [line for line in lines if line.startswith("features train 1/1: ")]
    assert train[0].startswith("features train 1/1: 0/6 img")
    assert train[-1].startswith("features train 1/1: 6/6 img")
    assert "img/s" in train[-1]
    assert len(train) >= 3  # at least one line between the first and the last
    assert len(train) == len(set(train))  # no repeated lines
    assert any(line.startswith("head fit: 3/3 fit") for line in lines)
    assert lines[-1] == "precision: fp32 (test)"


def test_the_interval_keeps_logs_short() -> None:
    done = _run("30")
    train = [line for line in done.stderr.splitlines() if line.startswith("features train")]
    assert [line.split(" [")[0] for line in train] == [
        "features train 1/1: 0/6 img",
        "features train 1/1: 6/6 img",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_redraws_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert progress_module.is_terminal()
    for _ in progress(range(3), desc="epoch 1/8", unit="batch"):
        pass
    note("epoch 1/8: done")
    shown = terminal.getvalue()
    assert "\r" in shown and "epoch 1/8: 100%" in shown
    assert shown.endswith("epoch 1/8: done\n")
