"""Downloading known public datasets, verified, into a folder ``load_dataset`` reads.

The known datasets are a table (:data:`imgclf.data.sources.KNOWN_DATASETS`): name, archive URL,
archive format, licence, and what the content must be: image counts per split, and the archive's
sha256 and/or a content digest (:func:`content_digest`). A download streams to a temporary folder
next to the destination, is checked, unpacked safely (zip: no paths leaving the folder, no links,
size and file-count caps; CIFAR tarballs: read in memory by :mod:`imgclf.data.cifar`), verified,
and only then moved into place by a rename: the destination is the whole verified dataset or
untouched. ``kaggle://`` sources are fetched by the official Kaggle client
(:mod:`imgclf.data.kaggle_source`).

HTTP goes through the standard library's ``urllib`` on purpose: downloading a dataset is a
once-per-machine step of the base install, and one streamed GET with redirects, timeouts and proxy
variables (``HTTPS_PROXY``) does not justify a dependency that the serving-only install avoids.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from imgclf import __version__
from imgclf.data.cifar import write_cifar_folders
from imgclf.data.kaggle_source import KaggleClient, fetch_kaggle
from imgclf.data.layout import IMAGE_EXTENSIONS, SPLIT_ORDER, files_under, find_layout
from imgclf.data.sources import DatasetSource, default_destination, get_source
from imgclf.errors import ConfigError, DatasetError, DownloadError

logger = logging.getLogger(__name__)

#: URL prefix of sources fetched with the official Kaggle client.
KAGGLE_SCHEME = "kaggle://"

_CHUNK = 1 << 16


def image_files(root: Path, splits: Iterable[str] = SPLIT_ORDER) -> dict[str, list[Path]]:
    """Split -> the image files below ``root/<split>`` (hidden files ignored), sorted."""
    return {
        split: [p for p in files_under(root / split) if p.suffix.lower() in IMAGE_EXTENSIONS]
        for split in splits
        if (root / split).is_dir()
    }


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def content_digest(root: Path, splits: Iterable[str] = SPLIT_ORDER) -> str:
    r"""Fingerprint of a dataset's images, independent of where it lives and of file times.

    It is the sha256 of the sorted lines ``"<split>/<class>/<file>\0<sha256 of the file>\n"``,
    one per image file under the split folders of ``root``.
    """
    lines = sorted(
        f"{path.relative_to(root).as_posix()}\0{_file_sha256(path)}\n"
        for paths in image_files(root, splits).values()
        for path in paths
    )
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def verify_dataset(root: Path, source: DatasetSource) -> None:
    """Check that ``root`` holds exactly the expected images.

    The content digest is checked where the registry pins one; otherwise the counts are the
    check of the unpacked folder (the archive's sha256, where pinned, was checked before).

    Raises:
        DownloadError: The counts per split or the content digest differ from the registry's.
    """
    counts = {split: len(paths) for split, paths in image_files(root, source.splits).items()}
    if counts != dict(source.counts):
        raise DownloadError(
            f"{source.name}: expected image counts {dict(source.counts)}, found {counts}; the "
            "archive is incomplete or the source changed"
        )
    if source.digest is None:
        return
    digest = content_digest(root, source.splits)
    if digest != source.digest:
        raise DownloadError(
            f"{source.name}: content digest {digest} does not match the expected "
            f"{source.digest}; the download is corrupt or the source changed. Retry, or check "
            f"{source.homepage}"
        )


def download_dataset(
    source: str | DatasetSource,
    dest: str | os.PathLike[str] | None = None,
    *,
    url: str | None = None,
    force: bool = False,
    timeout: float = 60.0,
    progress: bool | None = None,
    kaggle_client: KaggleClient | None = None,
) -> Path:
    """Download, verify and unpack a known dataset.

    Args:
        source: A known dataset's name, or a :class:`~imgclf.data.sources.DatasetSource`.
        dest: Folder to create (default :func:`default_destination`).
        url: Download from this URL (a mirror) instead; the content is verified all the same.
        force: Replace ``dest`` if it exists. Without it, an existing verified copy is kept.
        timeout: Seconds to wait for the server to connect or send data.
        progress: Show a progress bar (None: only when stderr is a terminal).
        kaggle_client: The client for ``kaggle://`` sources (default: the official one).

    Returns:
        The dataset folder (holding the source's split folders, e.g. ``train/`` and ``test/``).

    Raises:
        DownloadError: The download, extraction or verification failed; nothing was written.
        ConfigError: Unknown dataset name or URL scheme.
    """
    entry = get_source(source) if isinstance(source, str) else source
    target = Path(dest or default_destination(entry.name)).expanduser().resolve()
    if target.exists() and not force:
        return _reuse_existing(target, entry)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        )
        try:
            archive = work / "archive"
            _fetch_archive(url or entry.url, archive, entry, timeout, progress, kaggle_client)
            root = _unpack(archive, work / "extracted", entry)
            verify_dataset(root, entry)
            _replace_dir(root, target, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except OSError as exc:  # local file system: permissions, disk full (network errors are mapped)
        raise DownloadError(
            f"cannot write {entry.name} under {target.parent}: {exc.strerror or exc}; check the "
            "destination's permissions and free space"
        ) from exc
    logger.info("%s: verified and saved to %s", entry.name, target)
    return target


def _fetch_archive(
    url: str,
    archive: Path,
    entry: DatasetSource,
    timeout: float,
    progress: bool | None,
    kaggle_client: KaggleClient | None,
) -> None:
    """Fetch ``url`` to ``archive``: ``kaggle://`` with the Kaggle client, the rest by HTTP."""
    if url.startswith(KAGGLE_SCHEME):
        fetch_kaggle(
            url.removeprefix(KAGGLE_SCHEME),
            archive,
            max_bytes=entry.max_download_bytes,
            client=kaggle_client,
            progress=sys.stderr.isatty() if progress is None else progress,
        )
    else:
        fetch(url, archive, entry, timeout=timeout, progress=progress)


def _reuse_existing(target: Path, entry: DatasetSource) -> Path:
    try:
        verify_dataset(target, entry)
    except DownloadError as exc:
        raise DownloadError(
            f"{target} exists but is not a verified copy of {entry.name} ({exc}); pass --force "
            "(force=True) to replace it, or choose another destination"
        ) from exc
    logger.info("%s: already present and verified at %s", entry.name, target)
    return target


def fetch(
    url: str,
    target: Path,
    entry: DatasetSource,
    *,
    timeout: float = 60.0,
    progress: bool | None = None,
) -> None:
    """Stream ``url`` into ``target`` with a progress bar, refusing oversized downloads.

    Raises:
        ConfigError: The URL scheme is not http, https or file.
        DownloadError: HTTP error, timeout, connection failure, or too many bytes.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in {"http", "https", "file"}:
        raise ConfigError(f"{url}: unsupported URL scheme {scheme!r}; use https, http or file")
    request = urllib.request.Request(url, headers={"User-Agent": f"imgclf/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            _stream_response(response, target, entry, progress)
    except urllib.error.HTTPError as exc:
        raise DownloadError(
            f"{url}: the server answered HTTP {exc.code} {exc.reason}; check the URL or retry later"
        ) from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"{url}: cannot connect ({exc.reason}); check the network") from exc
    except TimeoutError as exc:
        raise DownloadError(
            f"{url}: no data for {timeout:g} s (timed out); retry, or raise the timeout"
        ) from exc
    except (http.client.HTTPException, ConnectionError) as exc:
        raise DownloadError(f"{url}: the download was interrupted ({exc!r}); retry") from exc


def _stream_response(
    response: http.client.HTTPResponse, target: Path, entry: DatasetSource, progress: bool | None
) -> None:
    from tqdm.auto import tqdm

    declared = int(response.headers.get("Content-Length") or 0) or None
    if declared is not None and declared > entry.max_download_bytes:
        raise DownloadError(
            f"{entry.name}: the archive is {declared:,} bytes, over the "
            f"{entry.max_download_bytes:,}-byte limit"
        )
    received = 0
    with (
        target.open("wb") as out,
        tqdm(
            total=declared,
            desc=f"downloading {entry.name}",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        while chunk := response.read(_CHUNK):
            received += len(chunk)
            if received > entry.max_download_bytes:
                raise DownloadError(
                    f"{entry.name}: download exceeds {entry.max_download_bytes:,} bytes; refused"
                )
            out.write(chunk)
            bar.update(len(chunk))
    if declared is not None and received != declared:
        raise DownloadError(
            f"{entry.name}: received {received:,} of {declared:,} bytes; the connection was cut"
        )


_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_target(dest: Path, name: str) -> Path:
    """Where a zip member goes; refuses absolute paths, drives, backslashes and ``..``."""
    if (
        name.startswith("/")
        or "\\" in name
        or _DRIVE.match(name)
        or ".." in PurePosixPath(name).parts
    ):
        raise DownloadError(
            f"refusing archive entry {name!r}: it would be written outside the destination"
        )
    target = (dest / name).resolve()
    if not target.is_relative_to(dest):
        raise DownloadError(f"refusing archive entry {name!r}: it leaves the destination")
    return target


def safe_extract(archive: Path, dest: Path, entry: DatasetSource) -> None:
    """Extract a zip archive into ``dest``, refusing anything unsafe before writing a byte.

    Raises:
        DownloadError: Not a zip file; an entry escapes ``dest`` or is a link; the archive has
            too many entries or unpacks to too many bytes.
    """
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _check_members(members, dest, entry)
            dest.mkdir(parents=True, exist_ok=True)
            for info in members:
                target = _member_target(dest, info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as src, target.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive.name}: not a valid zip archive ({exc})") from exc


def _check_members(members: list[zipfile.ZipInfo], dest: Path, entry: DatasetSource) -> None:
    if len(members) > entry.max_files:
        raise DownloadError(
            f"archive has {len(members):,} entries, over the {entry.max_files:,} limit"
        )
    total = sum(info.file_size for info in members)
    if total > entry.max_extracted_bytes:
        raise DownloadError(
            f"archive unpacks to {total:,} bytes, over the {entry.max_extracted_bytes:,} limit"
        )
    for info in members:
        _member_target(dest, info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DownloadError(f"refusing archive entry {info.filename!r}: it is a symbolic link")


def check_archive(archive: Path, entry: DatasetSource) -> None:
    """Compare the archive's sha256 with the registry's, where it pins one.

    Raises:
        DownloadError: The digests differ.
    """
    if entry.archive_sha256 is None:
        return
    digest = _file_sha256(archive)
    if digest != entry.archive_sha256:
        raise DownloadError(
            f"{entry.name}: the archive's sha256 is {digest}, expected {entry.archive_sha256}; "
            f"the download is corrupt or the source changed. Retry, or check {entry.homepage}"
        )


def _write_cifar(archive: Path, dest: Path, entry: DatasetSource) -> None:
    write_cifar_folders(archive, dest, max_member_bytes=entry.max_extracted_bytes)


#: Archive format -> the function writing its split folders (``DatasetSource.archive_format``).
UNPACKERS: dict[str, Callable[[Path, Path, DatasetSource], None]] = {
    "zip": safe_extract,
    "cifar-python": _write_cifar,
}


def _unpack(archive: Path, extracted: Path, entry: DatasetSource) -> Path:
    """Check and unpack ``archive`` by the source's format; the folder holding the splits."""
    check_archive(archive, entry)
    try:
        unpack = UNPACKERS[entry.archive_format]
    except KeyError:
        raise ConfigError(
            f"{entry.name}: unknown archive format {entry.archive_format!r}; known: "
            f"{', '.join(sorted(UNPACKERS))}"
        ) from None
    unpack(archive, extracted, entry)
    archive.unlink()
    return _dataset_root(extracted, entry)


def _dataset_root(extracted: Path, entry: DatasetSource) -> Path:
    """The folder holding the split folders inside the unpacked archive.

    Where the archive names or nests its splits differently (``seg_train/seg_train``), the split
    folders are moved into a new folder as ``train/``, ``test/``, ...; folders that are no split
    (an unlabelled ``seg_pred``) stay behind and are deleted with the work folder.
    """
    try:
        layout = find_layout(extracted)
    except DatasetError as exc:
        raise DownloadError(f"{entry.name}: the archive holds no dataset ({exc})") from exc
    if layout.is_single_folder:
        raise DownloadError(f"{entry.name}: the archive holds no {'/'.join(entry.splits)} folders")
    if all(folder == layout.root / name for name, folder in layout.split_dirs.items()):
        return layout.root
    root = extracted.parent / "dataset"
    root.mkdir()
    for name, folder in layout.split_dirs.items():
        folder.rename(root / name)
    return root


def _replace_dir(source: Path, target: Path, work: Path) -> None:
    """Move ``source`` to ``target`` by renames; an old ``target`` goes into ``work`` (deleted)."""
    old = work / "previous"
    if target.exists():
        target.rename(old)
    try:
        source.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        raise
