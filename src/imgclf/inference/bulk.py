"""Bulk classification: sources in, one row per input out, resumable; shared by every engine.

Both engines of ``imgclf predict`` (``local``, and ``ray`` in :mod:`imgclf.inference.ray_engine`)
use this module for what is not inference itself:

- **Sources** (:func:`expand_sources`): image files and folders, ``http(s)://`` URLs,
  ``s3://bucket/prefix/`` (every image below it) and manifests (``.parquet``, ``.csv``, ``.jsonl``
  with a ``path`` or ``url`` column).
- **Rows** (:func:`result_row`): ``path``, ``class``, ``probability``, ``top_k`` (a list of
  ``{"class", "prob"}``), ``model``, ``model_version`` and ``error`` (None when it worked).
- **Outputs** (:func:`open_writer`): a Parquet dataset directory, or one ``.jsonl`` / ``.csv``
  file. Writers append; :func:`written_paths` reads back what an earlier run wrote, so a re-run
  with the same output skips those inputs (resumable, no duplicates). Parquet parts are written
  to a hidden temporary name and renamed, so a killed run leaves only whole parts.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imgclf.errors import ConfigError, FetchError, ImageTooLargeError
from imgclf.inference import s3
from imgclf.inference.batch import (
    IMAGE_EXTENSIONS,
    InputItem,
    PredictResult,
    default_fetcher,
    expand_inputs,
    predict_many,
)
from imgclf.inference.predictor import Predictor

BULK_FORMATS = ("parquet", "jsonl", "csv")
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl")
ROW_FIELDS = ("path", "class", "probability", "top_k", "model", "model_version", "error")
#: Largest input read, in bytes, before decoding (the pixel cap applies after).
DEFAULT_MAX_INPUT_BYTES = 64 * 1024 * 1024
#: Rows per Parquet part file.
PARQUET_PART_ROWS = 2048

Row = dict[str, Any]


def result_row(result: PredictResult, model: str, version: str) -> Row:
    """The output row of one input (see the module docstring)."""
    prediction = result.prediction
    if prediction is None:
        return {"path": result.input, "class": None, "probability": None, "top_k": None,
                "model": model, "model_version": version, "error": result.error}  # fmt: skip
    top_k = [{"class": s.label, "prob": float(s.probability)} for s in prediction.top_k]
    return {"path": result.input, "class": prediction.label,
            "probability": float(prediction.probability), "top_k": top_k, "model": model,
            "model_version": version, "error": None}  # fmt: skip


def output_format(out: str | None, requested: str | None) -> str | None:
    """The bulk format for ``-o out``: ``--format`` if given, else by suffix (None: not bulk).

    ``.jsonl`` and ``.csv`` files, and ``.parquet`` or suffix-less directories (or ``s3://``
    prefixes) are bulk outputs.
    """
    if requested is not None:
        return requested if requested in BULK_FORMATS else None
    if out is None:
        return None
    if s3.is_s3_uri(out):
        return "parquet"
    suffix = Path(out).suffix.lower()
    if suffix in {".jsonl", ".csv"}:
        return suffix[1:]
    return "parquet" if suffix in {"", ".parquet"} else None


def expand_sources(sources: Iterable[str]) -> list[InputItem]:
    """Inputs of every source in order; ``s3://`` and URL inputs are fetched (``is_url``).

    Raises:
        ConfigError: A manifest has no ``path``/``url`` column, or a reader is not installed.
    """
    items: list[InputItem] = []
    for source in sources:
        if s3.is_s3_uri(source):
            items.extend(InputItem(uri, is_url=True) for uri in list_s3_images(source))
        elif source.lower().endswith(MANIFEST_SUFFIXES) and Path(source).is_file():
            items.extend(read_manifest(Path(source)))
        else:
            items.extend(expand_inputs([source]))
    return items


def list_s3_images(uri: str) -> list[str]:
    """``s3://`` URIs of the image objects at or below ``uri`` (sorted by key)."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} must look like s3://bucket/prefix/")
    paginator = s3.s3_client().get_paginator("list_objects_v2")
    keys = [
        obj["Key"]
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
        if Path(obj["Key"]).suffix.lower() in IMAGE_EXTENSIONS
    ]
    return [f"s3://{bucket}/{key}" for key in sorted(keys)]


def read_manifest(path: Path) -> list[InputItem]:
    """Inputs listed by a manifest's ``path`` (files, ``s3://``) or ``url`` column."""
    rows = _manifest_rows(path)
    column = next((c for c in ("path", "url") if rows and c in rows[0]), None)
    if column is None:
        raise ConfigError(f"manifest {path} needs a 'path' or 'url' column (and a row)")
    values = [str(row[column]) for row in rows if row.get(column)]
    return [InputItem(v, is_url=s3.is_s3_uri(v) or v.lower().startswith("http")) for v in values]


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        pq = _pyarrow_parquet()
        return list(pq.read_table(path).to_pylist())
    text = path.read_text(encoding="utf-8")
    if suffix == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("Parquet needs pyarrow: pip install 'imgclf[ray]'") from exc
    return pq


def source_fetcher(max_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> Callable[[str], bytes]:
    """A fetcher for ``s3://`` objects and ``http(s)://`` URLs (SSRF-safe), size-capped."""

    def fetch(uri: str) -> bytes:
        if not s3.is_s3_uri(uri):
            return default_fetcher()(uri)
        return read_s3_object(uri, max_bytes)

    return fetch


def read_s3_object(uri: str, max_bytes: int) -> bytes:
    """The bytes of an S3 object (raises ``FetchError``/``ImageTooLargeError``, never a crash)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3.parse_s3_uri(uri)
    try:
        response = s3.s3_client().get_object(Bucket=bucket, Key=key)
        if int(response.get("ContentLength", 0)) > max_bytes:
            response["Body"].close()
            raise ImageTooLargeError(f"{uri}: object is larger than {max_bytes:,} bytes")
        return bytes(response["Body"].read())
    except (ClientError, BotoCoreError) as exc:
        raise FetchError(f"{uri}: cannot read ({s3.describe_client_error(exc)})") from exc


@dataclass(frozen=True)
class BulkSummary:
    """What a bulk run did: inputs seen, skipped as already written, written, failed."""

    total: int
    skipped: int
    written: int
    failed: int


def predict_to_output(
    predictor: Predictor,
    items: Sequence[InputItem],
    out: str | Path,
    fmt: str,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    fetch: Callable[[str], bytes] | None = None,
) -> BulkSummary:
    """The local engine: classify the inputs not yet in ``out`` and append their rows."""
    done = written_paths(out, fmt)
    todo = [item for item in items if item.name not in done]
    writer = open_writer(out, fmt)
    failed = 0
    try:
        with progress_bar(len(todo)) as bar:
            results = predict_many(
                predictor, todo, top_k=top_k, batch_size=batch_size, fetch=fetch or source_fetcher()
            )
            for result in results:
                failed += not result.ok
                writer.write([result_row(result, predictor.name, predictor.version)])
                bar.update(1)
    finally:
        writer.close()
    return BulkSummary(len(items), len(items) - len(todo), len(todo), failed)


def progress_bar(total: int) -> Any:
    """Progress on stderr, rows done and rows/s (a bar on a terminal, plain lines otherwise)."""
    from imgclf.progress import progress

    return progress(desc="predict", total=total, unit="row")


class RowWriter(Protocol):
    """Appends rows to an output; ``close`` makes everything written durable."""

    def write(self, rows: Sequence[Row]) -> None:
        """Append rows."""

    def close(self) -> None:
        """Flush and close."""


def open_writer(out: str | Path, fmt: str) -> RowWriter:
    """An appending writer for ``out`` in ``fmt`` (``parquet``, ``jsonl`` or ``csv``).

    Raises:
        ConfigError: ``out`` is an ``s3://`` prefix and ``fmt`` is not Parquet.
    """
    if s3.is_s3_uri(str(out)):
        if fmt != "parquet":
            raise ConfigError(f"-o {out}: an s3:// output is a Parquet dataset (not {fmt})")
        return S3ParquetWriter(str(out))
    if fmt == "parquet":
        return ParquetWriter(Path(out))
    return TextWriter(Path(out), fmt)


def written_paths(out: str | Path, fmt: str) -> set[str]:
    """Inputs an earlier run already wrote to ``out`` (empty when it does not exist)."""
    if s3.is_s3_uri(str(out)):
        return _s3_written_paths(str(out))
    out = Path(out)
    if not out.exists():
        return set()
    if fmt == "parquet":
        parts = sorted(out.glob("*.parquet"))
        if not parts:
            return set()
        pq = _pyarrow_parquet()
        return {
            p for part in parts for p in pq.read_table(part, columns=["path"])["path"].to_pylist()
        }
    _drop_partial_line(out)
    with out.open(encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            return {row["path"] for row in csv.DictReader(handle)}
        return {json.loads(line)["path"] for line in handle if line.strip()}


def _drop_partial_line(path: Path) -> None:
    """Cut a last line left unfinished by a killed run, so appending starts on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


class TextWriter:
    """Rows as JSON lines or CSV (``top_k`` as JSON text), appended and flushed per batch."""

    def __init__(self, out: Path, fmt: str) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        fresh = not out.exists() or out.stat().st_size == 0
        self._fmt = fmt
        self._handle = out.open("a", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._handle, ROW_FIELDS) if fmt == "csv" else None
        if self._csv is not None and fresh:
            self._csv.writeheader()

    def write(self, rows: Sequence[Row]) -> None:
        """Append rows and flush them."""
        for row in rows:
            if self._csv is not None:
                self._csv.writerow({**row, "top_k": json.dumps(row["top_k"])})
            else:
                self._handle.write(json.dumps(row) + "\n")
        self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


class ParquetWriter:
    """Rows as part files of a Parquet dataset directory, each written then renamed."""

    def __init__(self, out: Path) -> None:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"{out} exists and is not a directory (a Parquet dataset)")
        out.mkdir(parents=True, exist_ok=True)
        self._out = out
        self._pending: list[Row] = []
        self._pq = _pyarrow_parquet()

    def _store(self, table: Any, name: str) -> None:
        tmp = self._out / f".{name}.tmp"
        self._pq.write_table(table, tmp)
        tmp.replace(self._out / name)

    def write(self, rows: Sequence[Row]) -> None:
        """Buffer rows; every :data:`PARQUET_PART_ROWS` become a part file."""
        self._pending.extend(rows)
        if len(self._pending) >= PARQUET_PART_ROWS:
            self._flush()

    def close(self) -> None:
        """Write the remaining rows."""
        self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        import pyarrow as pa

        table = pa.Table.from_pylist(self._pending, schema=parquet_schema())
        self._store(table, f"part-{uuid.uuid4().hex}.parquet")
        self._pending = []


class S3ParquetWriter(ParquetWriter):
    """Part files uploaded under an ``s3://bucket/prefix/`` (a PUT is atomic: whole parts only)."""

    def __init__(self, uri: str) -> None:
        self._bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self._prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self._pending = []
        self._pq = _pyarrow_parquet()

    def _store(self, table: Any, name: str) -> None:
        buffer = io.BytesIO()
        self._pq.write_table(table, buffer)
        s3.s3_client().put_object(
            Bucket=self._bucket, Key=self._prefix + name, Body=buffer.getvalue()
        )


def _s3_written_paths(uri: str) -> set[str]:
    import pyarrow as pa

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    client = s3.s3_client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    paths: set[str] = set()
    for key in keys:
        if key.endswith(".parquet") and "/" not in key[len(prefix) :]:
            body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            table = _pyarrow_parquet().read_table(pa.BufferReader(body), columns=["path"])
            paths.update(table["path"].to_pylist())
    return paths


def parquet_schema() -> Any:
    """The Arrow schema of output rows."""
    import pyarrow as pa

    score = pa.struct([("class", pa.string()), ("prob", pa.float64())])
    return pa.schema([("path", pa.string()), ("class", pa.string()),
                      ("probability", pa.float64()), ("top_k", pa.list_(score)),
                      ("model", pa.string()), ("model_version", pa.string()),
                      ("error", pa.string())])  # fmt: skip
