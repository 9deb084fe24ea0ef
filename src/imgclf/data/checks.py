"""Checking that every file of a dataset decodes, before training starts.

Each file is decoded with :func:`imgclf.preprocessing.open_image` (the same decoder training,
evaluation and serving use), in JPEG draft mode so a photo is decoded at 1/8 scale: the whole
compressed stream is still read, so truncated and corrupt files are caught, at a fraction of the
cost. Pillow releases the GIL while decoding, so a thread pool uses every core. Verdicts are cached
per file (:mod:`imgclf.data.cache`), so only new or changed files are decoded on the next load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from imgclf.data import cache as cache_module
from imgclf.data.cache import CheckCache
from imgclf.data.layout import IMAGE_EXTENSIONS
from imgclf.errors import InputError
from imgclf.image_budget import DEFAULT_MAX_PIXELS
from imgclf.preprocessing import open_image

#: JPEGs are checked in draft mode at 1/8 scale: every coefficient is still entropy-decoded (so
#: corruption is caught) but the inverse DCT and colour conversion nearly vanish (~30% less CPU).
CHECK_DRAFT_SIZE = 8


def extension_problem(path: Path) -> str | None:
    """Why ``path`` is not even tried as an image (its extension), or None if it is a candidate."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return None
    shown = suffix or "no extension"
    return (
        f"not an image file ({shown}); supported extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}"
    )


def check_image(path: Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> str | None:
    """Decode ``path`` once; return why it cannot be used, or None if it is a usable image."""
    reason = extension_problem(path)
    if reason is not None:
        return reason
    try:
        open_image(path, max_pixels=max_pixels, draft_size=CHECK_DRAFT_SIZE).close()
    except InputError as exc:
        return _strip_path(str(exc), path)
    except OSError as exc:  # unreadable file: permissions, I/O error
        return f"cannot read file ({exc.strerror or exc})"
    return None


def _strip_path(message: str, path: Path) -> str:
    """Drop the leading ``path:`` the decoder puts in its messages; reports show the path apart."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def default_workers() -> int:
    """Threads used for checking: two per core (decoding and file reads overlap), at most 16."""
    return max(1, min(16, 2 * (os.cpu_count() or 1)))


def checker_id(max_pixels: int | None) -> str:
    """What decides a verdict; cached verdicts from another checker are not reused."""
    import PIL

    from imgclf import __version__

    return f"imgclf {__version__}; Pillow {PIL.__version__}; {max_pixels=}; {CHECK_DRAFT_SIZE=}"


def check_images(
    paths: Sequence[Path],
    *,
    workers: int | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
    cache_root: Path | None = None,
) -> dict[Path, str]:
    """Check many files in parallel.

    Args:
        paths: Files to check.
        workers: Threads to use (default: :func:`default_workers`).
        max_pixels: Images declaring more pixels than this are refused.
        progress: Show a progress bar (None: only when stderr is a terminal).
        cache_root: Dataset folder whose cached verdicts (:mod:`imgclf.data.cache`) are reused
            for unchanged files and updated; None, or fewer than ``cache.MIN_FILES`` paths,
            checks every file.

    Returns:
        ``path -> reason`` for every file that cannot be used; usable files are absent.
    """
    cache = None
    if cache_root is not None and len(paths) >= cache_module.MIN_FILES:
        cache = CheckCache.for_root(cache_root, checker_id(max_pixels))
    verdicts: dict[Path, str | None] = {}
    pending: list[Path] = []
    for path in paths:
        known, reason = cache.lookup(path) if cache else (False, None)
        if known:
            verdicts[path] = reason
        else:
            pending.append(path)
    verdicts.update(_check_in_threads(pending, workers, max_pixels, progress))
    if cache is not None and pending:
        cache.replace(verdicts)
    return {path: reason for path, reason in verdicts.items() if reason is not None}


def _check_in_threads(
    paths: Sequence[Path], workers: int | None, max_pixels: int | None, progress: bool | None
) -> dict[Path, str | None]:
    from tqdm.auto import tqdm

    if not paths:
        return {}
    verdicts: dict[Path, str | None] = {}
    with (
        ThreadPoolExecutor(
            max_workers=workers or default_workers(), thread_name_prefix="imgclf-check"
        ) as pool,
        tqdm(
            total=len(paths),
            desc="checking images",
            unit="img",
            disable=None if progress is None else not progress,
            leave=False,
        ) as bar,
    ):
        results = pool.map(lambda p: check_image(p, max_pixels), paths)
        for path, reason in zip(paths, results, strict=True):
            bar.update(1)
            verdicts[path] = reason
    return verdicts
