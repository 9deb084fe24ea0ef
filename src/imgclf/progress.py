"""Progress people can read, on a terminal and in a log file.

On a terminal, :func:`progress` is an ordinary tqdm bar on stderr. When stderr is not a terminal
(a log file, a pipe, CI), redrawing one line with carriage returns leaves one unreadable run-on
line, so the bar becomes plain, complete lines at most every :data:`PLAIN_INTERVAL_S` seconds
(``IMGCLF_PROGRESS_INTERVAL`` overrides it), plus the first and the last state. stdout is never
written: it belongs to a command's results.

Training names each phase and pass (``decode 1/3 splits (train)``, ``features train 1/1``,
``head fit``, ``epoch 3/8``, ``evaluate test``); ``imgclf predict`` counts images and images/s.

In multi-process training only rank 0 shows progress: the other processes call :func:`silence`,
so N processes do not print every line N times.

This module imports neither numpy nor torch, so the lightest commands can use it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

__all__ = ["PLAIN_INTERVAL_S", "is_terminal", "note", "progress", "silence"]

T = TypeVar("T")

#: Seconds between two plain progress lines when stderr is not a terminal.
PLAIN_INTERVAL_S = 5.0

_silenced = False

_PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_PLAIN_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class _LineWriter:
    """A file-like wrapper that turns tqdm's carriage-return redraws into whole lines.

    tqdm writes a carriage return, the status and padding for each refresh, and blanks to clear;
    each non-blank status becomes one line, repeats of the previous line are dropped.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.last = ""

    def write(self, text: str) -> int:
        for part in text.replace("\n", "\r").split("\r"):
            line = part.rstrip()
            if line and line != self.last:
                self.stream.write(line + "\n")
                self.last = line
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "it",
    leave: bool = True,
    disable: bool = False,
) -> tqdm[T]:
    """A progress bar on stderr: a live bar on a terminal, plain timed lines otherwise.

    Args:
        iterable: What to iterate over (None: call ``update`` yourself).
        desc: What is being done, naming the phase and pass (``"features train 1/1"``).
        total: Number of steps (default: ``len(iterable)`` when it has one).
        unit: Name of one step (``"img"`` shows ``img/s``).
        leave: Keep the final state on screen (always kept as a line when not a terminal).
        disable: Show nothing (work too brief or too internal to report, e.g. a timing probe).

    Returns:
        A ``tqdm`` object: iterate over it, or ``update``/``set_postfix``/``close`` it.
    """
    stream = sys.stderr
    if _silenced:
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=True)
    if is_terminal(stream):
        return tqdm(
            iterable,
            desc=desc,
            total=total,
            unit=unit,
            leave=leave,
            file=stream,
            dynamic_ncols=True,
            disable=disable,
        )
    interval = float(os.environ.get("IMGCLF_PROGRESS_INTERVAL", PLAIN_INTERVAL_S))
    length = getattr(iterable, "__len__", None)
    if total is None and callable(length):
        total = int(length())
    options: dict[str, Any] = {
        "bar_format": _PLAIN_FORMAT if total is not None else _PLAIN_FORMAT_NO_TOTAL,
        "mininterval": interval,
        "maxinterval": max(interval, 10.0),
        "ncols": 200,
        "disable": disable,
    }
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=True,
        file=_LineWriter(stream),
        **options,
    )


def note(message: str) -> None:
    """Print one line on stderr without breaking a bar that is being drawn."""
    if not _silenced:
        tqdm.write(message, file=sys.stderr)


def silence() -> None:
    """Show no more progress bars or notes in this process (a training process but rank 0's)."""
    global _silenced  # noqa: PLW0603 - one switch for the whole process, set once
    _silenced = True
