"""Remembering which files already passed (or failed) the image check.

Decoding every image costs about a millisecond of CPU each; a training run, its resumption, an
evaluation and an ``inspect`` of the same dataset would pay it again each time. The verdicts are
kept in one small JSON file per dataset folder under the user cache directory, keyed by each file's
path, size and modification time (nanoseconds): a changed file is checked again. The cache also
records the imgclf and Pillow versions and the pixel cap, since those decide what is accepted.

The cache is an optimisation only: if it cannot be read or written, checks simply run.
Set ``IMGCLF_CACHE_DIR`` to move it, or to an empty string to turn it off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

_FORMAT = 1

#: Datasets with fewer files are checked every time: it takes well under a second, and caching
#: them would only fill the cache directory with entries for throw-away folders.
MIN_FILES = 500


def cache_dir() -> Path | None:
    """``$IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf``, else ``~/.cache/imgclf``.

    Returns None when ``IMGCLF_CACHE_DIR`` is set to an empty string (caching off).
    """
    configured = os.environ.get("IMGCLF_CACHE_DIR")
    if configured is not None:
        return Path(configured).expanduser() if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "imgclf"


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


@dataclass
class CheckCache:
    """Check verdicts for the files of one dataset folder.

    Attributes:
        file: The JSON file holding the verdicts (None: caching off).
        checker: What produced the verdicts; a different checker invalidates them all.
        verdicts: File path -> ``[size, mtime_ns, reason or None]``.
    """

    file: Path | None
    checker: str
    verdicts: dict[str, list[int | str | None]] = field(default_factory=dict)

    @classmethod
    def for_root(cls, root: Path, checker: str) -> CheckCache:
        """Load the cache of the dataset at ``root`` (empty if absent, unreadable or outdated)."""
        folder = cache_dir()
        if folder is None:
            return cls(None, checker)
        key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]
        file = folder / "image-checks" / f"{key}.json"
        cache = cls(file, checker)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cache
        if (
            isinstance(data, dict)
            and data.get("format") == _FORMAT
            and data.get("checker") == checker
        ):
            cache.verdicts = dict(data.get("files", {}))
        return cache

    def lookup(self, path: Path) -> tuple[bool, str | None]:
        """``(known, reason)``: whether ``path`` unchanged has a verdict, and the verdict."""
        entry = self.verdicts.get(str(path))
        signature = _signature(path)
        if entry is None or signature is None or tuple(entry[:2]) != signature:
            return False, None
        reason = entry[2]
        return True, reason if isinstance(reason, str) else None

    def replace(self, verdicts: dict[Path, str | None]) -> None:
        """Keep exactly these verdicts (files no longer checked are forgotten) and save them."""
        self.verdicts = {}
        for path, reason in verdicts.items():
            signature = _signature(path)
            if signature is not None:
                self.verdicts[str(path)] = [*signature, reason]
        self.save()

    def save(self) -> None:
        """Write the verdicts atomically; failures are logged and ignored."""
        if self.file is None:
            return
        payload = {"format": _FORMAT, "checker": self.checker, "files": self.verdicts}
        temporary: Path | None = None
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=self.file.parent, suffix=".tmp")
            temporary = Path(name)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(payload, out, separators=(",", ":"))
            temporary.replace(self.file)
        except OSError as exc:
            logger.debug("cannot write the image-check cache %s: %s", self.file, exc)
            if temporary is not None:
                temporary.unlink(missing_ok=True)
