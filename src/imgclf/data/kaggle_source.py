"""Fetching a dataset archive from Kaggle with the official client and the user's own token.

Kaggle serves datasets only to signed-in users, so ``kaggle://OWNER/DATASET`` sources go through
the official ``kaggle`` package (the ``kaggle`` extra), which finds the token where Kaggle's docs
say to put it (``~/.kaggle/kaggle.json``, ``KAGGLE_USERNAME``/``KAGGLE_KEY``, or a newer access
token). The client is reached through :class:`KaggleClient`, the two methods imgclf calls, so a
test can pass a fake instead of talking to Kaggle.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from imgclf.errors import DownloadError

#: The one line shown when no token is found.
TOKEN_HELP = (
    "{dataset} is served by Kaggle and needs your Kaggle API token: create one at "
    "https://www.kaggle.com/settings (API, 'Create New Token') and save it as "
    "~/.kaggle/kaggle.json, or set KAGGLE_USERNAME and KAGGLE_KEY"
)


class KaggleClient(Protocol):
    """The part of ``kaggle.api.kaggle_api_extended.KaggleApi`` that imgclf uses."""

    def authenticate(self) -> None:
        """Load the user's credentials; the official client calls ``exit(1)`` without any."""

    def dataset_download_files(
        self,
        dataset: str,
        path: str | None = None,
        force: bool = False,
        quiet: bool = True,
        unzip: bool = False,
    ) -> None:
        """Write ``<path>/<dataset name>.zip``."""


def official_client() -> KaggleClient:
    """A ``KaggleApi`` from the official package (the ``kaggle`` extra).

    Raises:
        ModuleNotFoundError: The extra is not installed (the CLI names the extra to install).
    """
    # Importing the package already tries to authenticate and prints a help page on failure;
    # imgclf says it in one line instead, after its own authenticate() call.
    with contextlib.redirect_stdout(io.StringIO()):
        from kaggle.api.kaggle_api_extended import KaggleApi
    client: KaggleClient = KaggleApi()
    return client


def _authenticate(client: KaggleClient, dataset: str) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            client.authenticate()
    except (SystemExit, OSError, ValueError) as exc:
        raise DownloadError(TOKEN_HELP.format(dataset=dataset)) from exc


def fetch_kaggle(
    dataset: str,
    target: Path,
    *,
    max_bytes: int,
    client: KaggleClient | None = None,
    progress: bool = False,
) -> None:
    """Download Kaggle dataset ``OWNER/NAME`` as one zip file at ``target``.

    Args:
        dataset: ``OWNER/NAME`` as in the dataset's Kaggle URL.
        target: Where the zip goes.
        max_bytes: Refuse a larger archive.
        client: The Kaggle client (default: the official one).
        progress: Let the client show its progress bar (on stderr).

    Raises:
        ModuleNotFoundError: The official client is needed and not installed.
        DownloadError: No token, Kaggle refused the request, or the archive is too large.
    """
    api = client if client is not None else official_client()
    _authenticate(api, dataset)
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        try:
            with contextlib.redirect_stdout(sys.stderr):  # keep stdout for imgclf's own result
                api.dataset_download_files(dataset, path=folder, force=True, quiet=not progress)
        except Exception as exc:  # the client raises requests' and its SDK's own error types
            raise DownloadError(
                f"Kaggle download of {dataset} failed: {exc}; check the token, that you "
                "accepted the dataset's terms on its Kaggle page, and the network"
            ) from exc
        zips = sorted(Path(folder).glob("*.zip"))
        if len(zips) != 1:
            raise DownloadError(f"Kaggle download of {dataset} left no single zip archive")
        size = zips[0].stat().st_size
        if size > max_bytes:
            raise DownloadError(
                f"{dataset}: the archive is {size:,} bytes, over the {max_bytes:,}-byte limit"
            )
        shutil.move(zips[0], target)
