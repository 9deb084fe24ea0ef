"""S3 ObjectCreated events against a real local S3 server (moto in server mode, over HTTP)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from lambda_events import FakeContext, log_records, s3_put_event

from imgclf.errors import ServingError
from imgclf.serving.aws_lambda.handler import handler

pytestmark = pytest.mark.usefixtures("lambda_env")


def read_json(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    obj = s3.get_object(Bucket=bucket, Key=key)
    assert obj["ContentType"] == "application/json"
    return json.loads(obj["Body"].read())  # type: ignore[no-any-return]


def keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_images_are_classified_into_output_bucket(
    s3: Any,
    make_bucket: Callable[[str], str],
    image_bytes: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uploads, results = make_bucket("uploads"), make_bucket("results")
    monkeypatch.setenv("OUTPUT_BUCKET", results)
    monkeypatch.setenv("OUTPUT_PREFIX", "labels/")
    s3.put_object(Bucket=uploads, Key="shop/red shirt.jpg", Body=image_bytes("red"))
    s3.put_object(Bucket=uploads, Key="shop/blue.png", Body=image_bytes("blue", fmt="PNG"))

    summary = handler(s3_put_event(uploads, "shop/red shirt.jpg", "shop/blue.png"), FakeContext())

    assert summary["skipped"] == []
    assert [r["class"] for r in summary["results"]] == ["red", "blue"]
    assert keys(s3, results) == ["labels/shop/blue.png.json", "labels/shop/red shirt.jpg.json"]
    result = read_json(s3, results, "labels/shop/red shirt.jpg.json")
    assert result["class"] == "red"
    assert result["source"] == {
        "bucket": uploads,
        "key": "shop/red shirt.jpg",
        "size": len(image_bytes("red")),
    }
    assert result["model"] == {"name": "colors", "version": "1"}
    assert result["top_k"][0]["class"] == "red"
    assert summary["results"][0]["output"] == f"s3://{results}/labels/shop/red shirt.jpg.json"


def test_non_images_are_skipped_with_a_logged_reason(
    s3: Any,
    make_bucket: Callable[[str], str],
    image_bytes: Callable[..., bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bucket = make_bucket("mixed")
    s3.put_object(Bucket=bucket, Key="notes.txt", Body=b"not an image at all")
    s3.put_object(Bucket=bucket, Key="broken.jpg", Body=image_bytes("red", size=(300, 300))[:200])
    s3.put_object(Bucket=bucket, Key="ok.jpg", Body=image_bytes("green"))

    summary = handler(s3_put_event(bucket, "notes.txt", "broken.jpg", "ok.jpg"), FakeContext())

    assert [r["key"] for r in summary["results"]] == ["ok.jpg"]
    reasons = {s["key"]: s["reason"] for s in summary["skipped"]}
    assert "not a recognised image format" in reasons["notes.txt"]
    assert "corrupt or truncated" in reasons["broken.jpg"]
    # Results go to the source bucket under the default prefix; skipped objects get none.
    assert keys(s3, bucket) == ["broken.jpg", "notes.txt", "ok.jpg", "predictions/ok.jpg.json"]
    logged = [r for r in log_records(capsys.readouterr().out) if r["event"] == "s3_object_skipped"]
    assert {r["key"] for r in logged} == {"notes.txt", "broken.jpg"}
    assert all(r["reason"] and r["bucket"] == bucket for r in logged)


def test_results_in_the_same_bucket_do_not_retrigger(
    s3: Any, make_bucket: Callable[[str], str], image_bytes: Callable[..., bytes]
) -> None:
    bucket = make_bucket("loop")
    s3.put_object(Bucket=bucket, Key="predictions/a.jpg.json", Body=b"{}")
    summary = handler(s3_put_event(bucket, "predictions/a.jpg.json"), FakeContext())
    assert summary["results"] == []
    assert "output prefix" in summary["skipped"][0]["reason"]


def test_oversized_objects_are_skipped(
    s3: Any,
    make_bucket: Callable[[str], str],
    image_bytes: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_OBJECT_BYTES", "200")
    bucket = make_bucket("big")
    data = image_bytes("red", size=(200, 200))
    s3.put_object(Bucket=bucket, Key="big.jpg", Body=data)
    by_event = handler(s3_put_event(bucket, "big.jpg", size=len(data)), FakeContext())
    assert "MAX_OBJECT_BYTES" in by_event["skipped"][0]["reason"]
    # An event that under-reports the size is caught when the object is read.
    by_read = handler(s3_put_event(bucket, "big.jpg", size=10), FakeContext())
    assert "MAX_OBJECT_BYTES" in by_read["skipped"][0]["reason"]
    assert keys(s3, bucket) == ["big.jpg"]


def test_missing_object_raises_so_lambda_retries(
    s3: Any, make_bucket: Callable[[str], str], image_bytes: Callable[..., bytes]
) -> None:
    bucket = make_bucket("gone")
    s3.put_object(Bucket=bucket, Key="here.jpg", Body=image_bytes("blue"))
    with pytest.raises(ServingError, match=r"1 S3 object\(s\) failed.*NoSuchKey"):
        handler(s3_put_event(bucket, "gone.jpg", "here.jpg"), FakeContext())
    # The good object of the same batch was still classified before the error was raised.
    assert "predictions/here.jpg.json" in keys(s3, bucket)


def test_unwritable_output_bucket_raises(
    s3: Any,
    make_bucket: Callable[[str], str],
    image_bytes: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bucket = make_bucket("src")
    monkeypatch.setenv("OUTPUT_BUCKET", "no-such-output-bucket")
    s3.put_object(Bucket=bucket, Key="a.jpg", Body=image_bytes("red"))
    with pytest.raises(ServingError, match="cannot write s3://no-such-output-bucket/"):
        handler(s3_put_event(bucket, "a.jpg"), FakeContext())


def test_non_create_events_are_skipped(s3: Any, make_bucket: Callable[[str], str]) -> None:
    bucket = make_bucket("del")
    event = s3_put_event(bucket, "x.jpg")
    event["Records"][0]["eventName"] = "ObjectRemoved:Delete"
    summary = handler(event, FakeContext())
    assert "not an ObjectCreated event" in summary["skipped"][0]["reason"]
