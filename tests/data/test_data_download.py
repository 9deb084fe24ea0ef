"""Downloading a dataset end to end from a local HTTP server: verified, atomic, safe."""

from __future__ import annotations

import dataclasses
import stat
import zipfile
from pathlib import Path

import pytest

from dataserver import Server, zip_folder
from imgclf.data import load_dataset
from imgclf.data.download import content_digest, download_dataset, safe_extract
from imgclf.data.sources import KNOWN_DATASETS, DatasetSource, get_source
from imgclf.errors import ConfigError, DownloadError
from imgtools import clothing_dir, write_color_dataset


@pytest.fixture
def published(tmp_path: Path, server: Server) -> DatasetSource:
    """A colour dataset zipped like a GitHub archive, served locally, with its registry entry."""
    content = write_color_dataset(tmp_path / "content", per_class=3)
    (content / "README.md").write_text("# colours\n")
    zip_folder(content, server.root / "colors.zip", "colors-master")
    return DatasetSource(
        name="colors",
        url=f"{server.url}/colors.zip",
        description="solid colours",
        license="CC0-1.0",
        homepage="https://example.invalid/colors",
        counts={"train": 9, "validation": 9, "test": 9},
        digest=content_digest(content),
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_download_verify_and_load(tmp_path: Path, published: DatasetSource) -> None:
    dest = tmp_path / "data" / "colors"
    path = download_dataset(published, dest, progress=False)
    assert path == dest.resolve()
    assert (dest / "README.md").is_file()
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "test", "train", "validation"]
    dataset = load_dataset(dest)
    assert {name: len(records) for name, records in dataset.splits.items()} == {
        "train": 9,
        "validation": 9,
        "test": 9,
    }
    assert leftovers(dest.parent) == []


def test_existing_verified_copy_is_reused_unless_forced(
    tmp_path: Path, published: DatasetSource, server: Server
) -> None:
    dest = tmp_path / "colors"
    download_dataset(published, dest, progress=False)
    assert download_dataset(published, dest, progress=False) == dest.resolve()
    assert server.requests == ["/colors.zip"]
    (dest / "marker").write_text("old copy")
    download_dataset(published, dest, force=True, progress=False)
    assert server.requests == ["/colors.zip", "/colors.zip"]
    assert not (dest / "marker").exists()
    assert leftovers(tmp_path) == []


def test_existing_unverified_folder_needs_force(tmp_path: Path, published: DatasetSource) -> None:
    dest = tmp_path / "colors"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(DownloadError, match=r"not a verified copy.*--force"):
        download_dataset(published, dest, progress=False)
    assert (dest / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"digest": "0" * 64}, "content digest .* does not match"),
        ({"counts": {"train": 9, "validation": 9, "test": 10}}, "expected image counts"),
    ],
)
def test_verification_failure_writes_nothing(
    tmp_path: Path, published: DatasetSource, change: dict[str, object], message: str
) -> None:
    dest = tmp_path / "colors"
    with pytest.raises(DownloadError, match=message):
        download_dataset(dataclasses.replace(published, **change), dest, progress=False)  # type: ignore[arg-type]
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_mirror_url_is_verified_too(
    tmp_path: Path, published: DatasetSource, server: Server
) -> None:
    other = write_color_dataset(tmp_path / "other", per_class=3)
    (other / "train" / "red" / "red_000.jpg").write_bytes(
        (other / "train" / "red" / "red_001.jpg").read_bytes()
    )
    zip_folder(other, server.root / "mirror.zip", "colors")
    with pytest.raises(DownloadError, match="content digest"):
        download_dataset(published, tmp_path / "c", url=f"{server.url}/mirror.zip", progress=False)
    assert not (tmp_path / "c").exists()


def test_http_404_is_a_clear_error(tmp_path: Path, published: DatasetSource) -> None:
    entry = dataclasses.replace(published, url=published.url.replace("colors.zip", "gone.zip"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_dataset(entry, tmp_path / "colors", progress=False)
    assert not (tmp_path / "colors").exists()
    assert leftovers(tmp_path) == []


def test_timeout_is_a_clear_error(tmp_path: Path, published: DatasetSource, server: Server) -> None:
    entry = dataclasses.replace(published, url=f"{server.url}/slow/colors.zip")
    with pytest.raises(DownloadError, match="timed out"):
        download_dataset(entry, tmp_path / "colors", timeout=0.3, progress=False)
    assert leftovers(tmp_path) == []


def test_connection_refused_is_a_clear_error(tmp_path: Path, published: DatasetSource) -> None:
    entry = dataclasses.replace(published, url="http://127.0.0.1:9/colors.zip")
    with pytest.raises(DownloadError, match="cannot connect"):
        download_dataset(entry, tmp_path / "colors", timeout=2, progress=False)


def test_oversized_download_is_refused(tmp_path: Path, published: DatasetSource) -> None:
    entry = dataclasses.replace(published, max_download_bytes=1000)
    with pytest.raises(DownloadError, match="over the 1,000-byte limit"):
        download_dataset(entry, tmp_path / "colors", progress=False)
    assert leftovers(tmp_path) == []


def test_not_a_zip_is_refused(tmp_path: Path, published: DatasetSource, server: Server) -> None:
    (server.root / "page.zip").write_text("<html>moved</html>")
    entry = dataclasses.replace(published, url=f"{server.url}/page.zip")
    with pytest.raises(DownloadError, match="not a valid zip archive"):
        download_dataset(entry, tmp_path / "colors", progress=False)


def test_unsupported_scheme_is_refused(tmp_path: Path, published: DatasetSource) -> None:
    with pytest.raises(ConfigError, match="unsupported URL scheme 'ftp'"):
        download_dataset(published, tmp_path / "c", url="ftp://127.0.0.1/x.zip", progress=False)


@pytest.mark.parametrize(
    "name", ["../evil.txt", "top/../../evil.txt", "/tmp/evil.txt", "C:/evil.txt", "a\\..\\evil"]
)
def test_zip_slip_is_refused_before_writing(
    tmp_path: Path, published: DatasetSource, name: str
) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("top/ok.txt", "fine")
        zipped.writestr(name, "escaped")
    dest = tmp_path / "out" / "inner"
    with pytest.raises(DownloadError, match="refusing archive entry"):
        safe_extract(archive, dest, published)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entries_are_refused(tmp_path: Path, published: DatasetSource) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("top/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(info, "/etc/passwd")
    with pytest.raises(DownloadError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out", published)


def test_zip_bomb_limits(tmp_path: Path, published: DatasetSource) -> None:
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr("top/zeros.bin", b"\0" * 5_000_000)
    with pytest.raises(DownloadError, match="unpacks to 5,000,000 bytes"):
        safe_extract(
            archive, tmp_path / "out", dataclasses.replace(published, max_extracted_bytes=1_000_000)
        )
    with pytest.raises(DownloadError, match="entries, over the 0 limit"):
        safe_extract(archive, tmp_path / "out", dataclasses.replace(published, max_files=0))


def test_registry_entry_for_clothing_small() -> None:
    entry = get_source("clothing-small")
    assert entry is KNOWN_DATASETS["clothing-small"]
    assert entry.url.startswith("https://github.com/alexeygrigorev/clothing-dataset-small/")
    assert dict(entry.counts) == {"train": 3068, "validation": 341, "test": 372}
    assert entry.license == "CC0-1.0"
    with pytest.raises(ConfigError, match="known datasets: cifar10, clothing-small, intel-scenes"):
        get_source("imagenet")


@pytest.mark.slow
@pytest.mark.skipif(not clothing_dir().is_dir(), reason="clothing-small dataset not present")
def test_pinned_digest_matches_the_clothing_small_copy() -> None:
    assert content_digest(clothing_dir()) == KNOWN_DATASETS["clothing-small"].digest


def test_cli_download(
    tmp_path: Path,
    published: DatasetSource,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from imgclf.cli import main

    monkeypatch.setitem(KNOWN_DATASETS, "colors", published)
    dest = tmp_path / "colors"
    assert main(["data", "download", "colors", "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert f"colors: verified, at {dest.resolve()}" in out
    assert (dest / "train" / "red").is_dir()
    bad_url = published.url.replace("colors.zip", "missing.zip")
    code = main(["data", "download", "colors", "--dest", str(dest), "--force", "--url", bad_url])
    assert code == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert (dest / "train" / "red").is_dir()  # a failed forced download keeps the old copy


def test_progress_bar_reports_bytes(
    tmp_path: Path, published: DatasetSource, capsys: pytest.CaptureFixture[str]
) -> None:
    download_dataset(published, tmp_path / "colors", progress=True)
    err = capsys.readouterr().err
    assert "downloading colors" in err
    assert "100%" in err


def test_unwritable_destination_is_a_download_error(
    tmp_path: Path, published: DatasetSource
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    with pytest.raises(DownloadError, match="cannot write colors under"):
        download_dataset(published, blocker / "colors", progress=False)
