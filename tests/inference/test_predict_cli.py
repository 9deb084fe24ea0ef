"""``imgclf predict`` end to end on the tiny colour bundle: files, folders, URLs, broken inputs."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgclf.cli import main
from imgclf.errors import FetchError
from imgclf.inference import Predictor
from imgclf.inference.batch import InputItem, expand_inputs, predict_many

ImageFactory = Callable[..., bytes]


@pytest.fixture
def photos(tmp_path: Path, image_bytes: ImageFactory) -> Path:
    """A folder tree of good images plus a corrupt, an empty and a non-image file."""
    root = tmp_path / "photos"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "a_red.jpg").write_bytes(image_bytes("red"))
    (root / "nested" / "b_green.PNG").write_bytes(image_bytes("green", fmt="PNG"))
    (root / "nested" / "deeper" / "c_blue.webp").write_bytes(image_bytes("blue", fmt="WEBP"))
    (root / "d_corrupt.jpg").write_bytes(image_bytes("red")[:150])
    (root / "e_empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image, and not picked up from folders")
    return root


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["predict", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_folder_recursion_and_broken_files_in_jsonl(
    tiny_bundle: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["--model", str(tiny_bundle), "--format", "jsonl", str(photos)], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    by_name = {Path(row["path"]).name: row for row in rows}
    assert set(by_name) == {
        "a_red.jpg",
        "b_green.PNG",
        "c_blue.webp",
        "d_corrupt.jpg",
        "e_empty.png",
    }
    assert by_name["a_red.jpg"]["class"] == "red"
    assert by_name["b_green.PNG"]["class"] == "green"
    assert by_name["c_blue.webp"]["class"] == "blue"
    assert len(by_name["a_red.jpg"]["top_k"]) == 3
    assert "corrupt or truncated" in by_name["d_corrupt.jpg"]["error"]
    assert "empty" in by_name["e_empty.png"]["error"]
    assert code == 1


def test_all_good_inputs_exit_zero_with_a_table(
    tiny_bundle: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [str(photos / "a_red.jpg"), str(photos / "nested" / "b_green.PNG")]
    code, out, err = run_cli(["--model", str(tiny_bundle), "--top-k", "2", *good], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["INPUT", "CLASS", "PROB"]
    assert lines[1].split()[1] == "red"
    assert lines[2].split()[1] == "green"
    assert "failed" not in err


def test_table_reports_missing_and_broken_files(
    tiny_bundle: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(photos / "missing.jpg")
    args = ["--model", str(tiny_bundle), str(photos / "d_corrupt.jpg"), missing]
    code, out, err = run_cli([*args, str(photos / "a_red.jpg")], capsys)
    assert code == 1
    assert "ERROR: corrupt or truncated" in out
    assert "ERROR: no such file" in out
    assert out.splitlines()[-1].split()[1] == "red"  # the run went on after the failures
    assert "2 of 3 inputs failed" in err


def test_csv_output_to_file(
    tiny_bundle: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.csv"
    args = ["--model", str(tiny_bundle), "--format", "csv", "-o", str(target), "--batch-size", "2"]
    code, out, _ = run_cli([*args, str(photos)], capsys)
    assert code == 1
    assert out == ""
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [Path(r["path"]).name for r in rows] == [
        "a_red.jpg", "d_corrupt.jpg", "e_empty.png", "b_green.PNG", "c_blue.webp",
    ]  # fmt: skip
    good = {Path(r["path"]).name: r for r in rows if not r["error"]}
    assert good["a_red.jpg"]["class"] == "red"
    assert float(good["a_red.jpg"]["probability"]) > 0.5
    assert json.loads(good["a_red.jpg"]["top_k"])[0]["class"] == "red"
    assert good["a_red.jpg"]["model"] == "colors"
    assert sum(1 for r in rows if r["error"]) == 2


def test_forbidden_url_is_reported_per_input(
    tiny_bundle: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("httpx")
    url = "http://127.0.0.1:9/secret.jpg"  # loopback: refused before any connection
    code, out, _ = run_cli(
        ["--model", str(tiny_bundle), "--format", "jsonl", url, str(photos / "a_red.jpg")], capsys
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1
    assert rows[0]["path"] == url
    assert rows[0]["error"]
    assert rows[1]["class"] == "red"


def test_urls_are_fetched_and_classified(tiny_bundle: Path, image_bytes: ImageFactory) -> None:
    served = {"https://shop.example/blue.png": image_bytes("blue", fmt="PNG")}

    def fetch(url: str) -> bytes:
        if url not in served:
            raise FetchError(f"{url}: HTTP 404")
        return served[url]

    items = expand_inputs(["https://shop.example/blue.png", "https://shop.example/gone.jpg"])
    assert all(item.is_url for item in items)
    predictor = Predictor.from_bundle(tiny_bundle)
    results = list(predict_many(predictor, items, top_k=1, fetch=fetch))
    assert results[0].prediction is not None
    assert results[0].prediction.label == "blue"
    assert results[1].error == "HTTP 404"


def test_many_inputs_show_progress_and_keep_order(
    tiny_bundle: Path, tmp_path: Path, image_bytes: ImageFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    colors = ["red", "green", "blue"] * 9
    for i, color in enumerate(colors):
        (tmp_path / f"img_{i:03d}_{color}.jpg").write_bytes(image_bytes(color, seed=i))
    code, out, _ = run_cli(
        ["--model", str(tiny_bundle), "--format", "jsonl", "--batch-size", "4", str(tmp_path)],
        capsys,
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    assert [row["class"] for row in rows] == colors


def test_predict_many_without_images_or_with_bad_options(tiny_bundle: Path) -> None:
    predictor = Predictor.from_bundle(tiny_bundle)
    assert list(predict_many(predictor, [])) == []
    from imgclf.errors import ConfigError, InputError

    with pytest.raises(ConfigError):
        list(predict_many(predictor, [InputItem("x.jpg")], batch_size=0))
    with pytest.raises(InputError):
        list(predict_many(predictor, [InputItem("x.jpg")], top_k=0))


def test_empty_folder_is_an_error(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["--model", str(tiny_bundle), str(tmp_path / "empty")], capsys)
    assert code == 1
    assert "no images found" in err


def test_bad_bundle_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["--model", str(tmp_path / "nope"), "x.jpg"], capsys)
    assert code == 2
    assert "does not exist" in err


def test_unknown_artifact_is_a_clear_error(
    tiny_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["--model", str(tiny_bundle), "--artifact", "tflite", "x.jpg"], capsys)
    assert code == 2
    assert "no 'tflite' artifact" in err


def test_parquet_output_resumes_without_duplicates(
    tiny_bundle: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs the ray extra (pyarrow)")
    out = tmp_path / "rows"
    first = [str(photos / "a_red.jpg"), str(photos / "d_corrupt.jpg")]
    code, _, err = run_cli(["--model", str(tiny_bundle), *first, "-o", str(out)], capsys)
    assert code == 1 and "2 rows written" in err
    code, _, err = run_cli(["--model", str(tiny_bundle), str(photos), "-o", str(out)], capsys)
    assert "3 rows written to" in err and "2 already there" in err
    rows = pq.read_table(out).to_pylist()
    assert sorted(Path(r["path"]).name for r in rows) == [
        "a_red.jpg", "b_green.PNG", "c_blue.webp", "d_corrupt.jpg", "e_empty.png",
    ]  # fmt: skip
    red = next(r for r in rows if r["path"].endswith("a_red.jpg"))
    assert (red["class"], red["model"], red["model_version"], red["error"]) == (
        "red", "colors", "1", None
    )  # fmt: skip
    assert red["top_k"][0] == {"class": "red", "prob": red["probability"]}
    assert not list(out.glob(".*")), "no temporary part left behind"


def test_jsonl_output_by_suffix_drops_a_cut_off_last_line(
    tiny_bundle: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rows.jsonl"
    row = {"path": str(photos / "a_red.jpg"), "class": "red", "error": None}
    out.write_text(json.dumps(row) + "\n" + '{"path": "half a line')  # a killed earlier run
    code, _, err = run_cli(["--model", str(tiny_bundle), str(photos), "-o", str(out)], capsys)
    assert code == 1 and "4 rows written" in err and "1 already there" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and len({r["path"] for r in rows}) == 5


def test_manifest_sources(
    tiny_bundle: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "inputs.csv"
    manifest.write_text(f"url,label\n{photos / 'a_red.jpg'},x\n{photos / 'c.jpg'},y\n")
    code, out, _ = run_cli(
        ["--model", str(tiny_bundle), str(manifest), "--format", "jsonl"], capsys
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["class"] for r in rows] == ["red", None]
    assert code == 1
    jsonl = tmp_path / "inputs.jsonl"
    jsonl.write_text(json.dumps({"name": "no path column"}) + "\n")
    code, _, err = run_cli(["--model", str(tiny_bundle), str(jsonl)], capsys)
    assert code == 2 and "needs a 'path' or 'url' column" in err


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--format", "parquet"], "give -o DIR"),
        (["--engine", "ray"], "--engine ray writes rows to -o"),
        (["--engine", "ray", "-o", "out.txt"], "--engine ray writes rows to -o"),
    ],
)
def test_bulk_options_are_checked(
    tiny_bundle: Path,
    photos: Path,
    args: list[str],
    fragment: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(["--model", str(tiny_bundle), str(photos), *args], capsys)
    assert code == 2 and fragment in err


def test_s3_inputs_on_the_local_engine(
    tiny_bundle: Path,
    image_bytes: ImageFactory,
    s3: Any,
    make_bucket: Callable[[str], str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = make_bucket("photos")
    s3.put_object(Bucket=bucket, Key="in/a_blue.png", Body=image_bytes("blue", fmt="PNG"))
    s3.put_object(Bucket=bucket, Key="in/b_bad.jpg", Body=b"nope")
    s3.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"skipped")
    args = ["--model", str(tiny_bundle), f"s3://{bucket}/in/", "-o", str(tmp_path / "r.jsonl")]
    code, _, _ = run_cli(args, capsys)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["path"], r["class"]) for r in rows] == [
        (f"s3://{bucket}/in/a_blue.png", "blue"),
        (f"s3://{bucket}/in/b_bad.jpg", None),
    ]
    assert code == 1


def test_parquet_output_to_s3_resumes(
    tiny_bundle: Path,
    photos: Path,
    s3: Any,
    make_bucket: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet needs the ray extra (pyarrow)")
    bucket = make_bucket("results")
    out = f"s3://{bucket}/runs/one/"
    run_cli(["--model", str(tiny_bundle), str(photos / "a_red.jpg"), "-o", out], capsys)
    code, _, err = run_cli(["--model", str(tiny_bundle), str(photos), "-o", out], capsys)
    assert code == 1 and "4 rows written" in err and "1 already there" in err
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("runs/one/part-") for k in keys)
    import io

    rows = [
        row
        for key in keys
        for row in pq.read_table(
            io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        ).to_pylist()
    ]
    assert sorted(Path(r["path"]).name for r in rows) == [
        "a_red.jpg", "b_green.PNG", "c_blue.webp", "d_corrupt.jpg", "e_empty.png",
    ]  # fmt: skip
    code, _, err = run_cli(["--model", str(tiny_bundle), str(photos), "-o", out, "--format",
                            "csv"], capsys)  # fmt: skip
    assert code == 2 and "an s3:// output is a Parquet dataset" in err


def test_progress_goes_to_stderr_as_plain_lines(
    tiny_bundle: Path, tmp_path: Path, image_bytes: ImageFactory
) -> None:
    """A real ``imgclf predict`` logging stderr: progress lines there, only results on stdout."""
    import os
    import subprocess
    import sys

    colors = ["red", "green", "blue"] * 9
    for i, color in enumerate(colors):
        (tmp_path / f"img_{i:03d}_{color}.jpg").write_bytes(image_bytes(color, seed=i))
    src = Path(__file__).resolve().parents[2] / "src"
    args = ["predict", "--model", str(tiny_bundle), "--format", "jsonl", "--batch-size", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "imgclf", *args, str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["class"] for line in done.stdout.splitlines()] == colors
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert lines[0].startswith("predict: 0/27 img")
    assert lines[-1].startswith("predict: 27/27 img") and "img/s" in lines[-1]
