"""Seeded, stratified splitting of one folder of class folders into train/validation/test."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from imgclf.errors import ConfigError


def _held_out_count(total: int, fraction: float, reserved: int) -> int:
    """Files of one class given to a held-out split; at least one while train keeps one."""
    if fraction <= 0:
        return 0
    wanted = max(1, round(total * fraction))
    return max(0, min(wanted, total - reserved - 1))


def validate_fractions(fractions: Mapping[str, float]) -> None:
    """Refuse held-out fractions outside [0, 1) or adding up to 1 or more.

    Raises:
        ConfigError: A fraction is out of range, or nothing would be left to train on.
    """
    for name, fraction in fractions.items():
        if not 0.0 <= fraction < 1.0:
            raise ConfigError(f"{name} fraction must be in [0, 1), got {fraction}")
    if sum(fractions.values()) >= 1.0:
        raise ConfigError(
            f"held-out fractions {dict(fractions)} leave nothing to train on; their sum must be < 1"
        )


def stratified_split(
    files_by_class: Mapping[str, Sequence[Path]],
    fractions: Mapping[str, float],
    *,
    seed: int,
    base: Path,
) -> dict[str, dict[str, list[Path]]]:
    """Split each class's files by the same fractions, reproducibly.

    Files are ordered by their path relative to ``base`` before a per-class shuffle seeded from
    ``seed`` and the class name, so the split depends neither on where the dataset lives, nor on
    file-system listing order, nor on which other classes exist. Every held-out split gets at least
    one file of each class that has enough files, and train always keeps at least one.

    Args:
        files_by_class: Class name -> its files.
        fractions: Held-out split name -> fraction of each class it receives (e.g.
            ``{"validation": 0.1, "test": 0.1}``); the rest goes to ``"train"``.
        seed: Seed of the shuffle.
        base: Folder the paths are made relative to for ordering.

    Returns:
        Split name (``"train"`` first, then ``fractions``' keys) -> class name -> files.

    Raises:
        ConfigError: A fraction is outside [0, 1) or they add up to 1 or more.
    """
    validate_fractions(fractions)
    result: dict[str, dict[str, list[Path]]] = {name: {} for name in ("train", *fractions)}
    for class_name, files in files_by_class.items():
        ordered = sorted(files, key=lambda p: p.relative_to(base).as_posix())
        random.Random(f"{seed}:{class_name}").shuffle(ordered)
        start = 0
        for name, fraction in fractions.items():
            count = _held_out_count(len(ordered), fraction, start)
            result[name][class_name] = sorted(ordered[start : start + count])
            start += count
        result["train"][class_name] = sorted(ordered[start:])
    return result
