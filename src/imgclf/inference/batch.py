"""Classify many inputs (files, folders, URLs) in batches, reporting bad ones without stopping.

This is the engine behind ``imgclf predict``; it is usable from Python too::

    items = expand_inputs(["photos/", "https://example.com/shirt.jpg"])
    for result in predict_many(predictor, items, top_k=3):
        print(result.input, result.prediction or result.error)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import ConfigError, InputError
from imgclf.inference.predictions import Prediction, check_top_k
from imgclf.inference.predictor import Predictor

#: File extensions picked up when a folder is given (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
)

Fetcher = Callable[[str], bytes]


@dataclass(frozen=True)
class InputItem:
    """One thing to classify: a file path or an http(s) URL."""

    name: str
    is_url: bool = False


@dataclass(frozen=True)
class PredictResult:
    """The outcome for one input: a prediction, or the reason there is none."""

    input: str
    prediction: Prediction | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the input was classified."""
        return self.prediction is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"input", "class", "probability", "top_k"}`` or ``{"input", "error"}``."""
        if self.prediction is None:
            return {"input": self.input, "error": self.error}
        return {"input": self.input, **self.prediction.to_dict()}


def is_url(text: str) -> bool:
    """True for ``http://`` and ``https://`` inputs."""
    return text.lower().startswith(("http://", "https://"))


def expand_inputs(inputs: Iterable[str | Path]) -> list[InputItem]:
    """Turn command-line inputs into items: folders expand recursively to their images (sorted).

    Paths that do not exist are kept, so that they are reported as errors in order.
    """
    items: list[InputItem] = []
    for raw in inputs:
        text = str(raw)
        if is_url(text):
            items.append(InputItem(text, is_url=True))
            continue
        path = Path(text)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            items.extend(InputItem(str(p)) for p in files)
        else:
            items.append(InputItem(text))
    return items


def default_fetcher() -> Fetcher:
    """The SSRF-safe URL fetcher (needs httpx, part of the ``serve`` extra).

    Raises:
        ConfigError: httpx is not installed.
    """
    try:
        from imgclf.inference.fetch import fetch_url
    except ImportError as exc:
        raise ConfigError("URL inputs need httpx: pip install 'imgclf[serve]'") from exc
    return fetch_url


def _short_error(item: InputItem, exc: Exception) -> str:
    message = str(exc)
    prefix = f"{item.name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _load(predictor: Predictor, item: InputItem, fetch: Fetcher | None) -> np.ndarray | str:
    """Pixels for ``item``, or the error message explaining why there are none."""
    try:
        if item.is_url:
            if fetch is None:
                fetch = default_fetcher()
            return predictor.load_pixels(fetch(item.name))
        return predictor.load_pixels(Path(item.name))
    except InputError as exc:
        return _short_error(item, exc)
    except OSError as exc:  # permission denied and friends
        return f"cannot read: {exc.strerror or exc}"


def predict_many(
    predictor: Predictor,
    items: Sequence[InputItem],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    fetch: Fetcher | None = None,
    workers: int = 2,
) -> Iterator[PredictResult]:
    """Classify ``items`` in batches, yielding one result per item, in order.

    Decoding (and fetching) runs in ``workers`` threads while the model runs batches; an input
    that cannot be read or decoded yields a result with an ``error`` and the run goes on.

    Raises:
        ConfigError: ``batch_size`` or ``workers`` is below 1, or URL inputs without httpx.
        InputError: ``top_k`` is below 1.
    """
    check_top_k(top_k)
    if batch_size < 1 or workers < 1:
        raise ConfigError("batch size and workers must be at least 1")
    if fetch is None and any(item.is_url for item in items):
        fetch = default_fetcher()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgclf-decode") as pool:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            loaded = list(pool.map(lambda item: _load(predictor, item, fetch), chunk))
            good = [i for i, value in enumerate(loaded) if isinstance(value, np.ndarray)]
            predictions: dict[int, Prediction] = {}
            if good:
                probs = predictor.run_pixels(np.stack([loaded[i] for i in good]))
                predictions = dict(zip(good, predictor.to_predictions(probs, top_k), strict=True))
            for index, item in enumerate(chunk):
                value = loaded[index]
                if isinstance(value, str):
                    yield PredictResult(item.name, error=value)
                else:
                    yield PredictResult(item.name, prediction=predictions[index])
