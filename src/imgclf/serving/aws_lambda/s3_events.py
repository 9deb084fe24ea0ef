"""Classify images uploaded to S3 (``s3:ObjectCreated:*`` notifications).

For each record the object is downloaded, classified, and the result is written as JSON to
``s3://<OUTPUT_BUCKET or the source bucket>/<OUTPUT_PREFIX><source key>.json``::

    {"source": {"bucket": ..., "key": ..., "size": ...},
     "class": "shirt", "probability": 0.97, "top_k": [{"class": ..., "prob": ...}],
     "model": {"name": ..., "version": ...}}

Objects that are not images (or too large, or results this function wrote itself, which would
otherwise trigger it again) are skipped with a logged reason. S3 failures are collected and raised
at the end, so Lambda's retry of asynchronous invocations tries the batch again; writing a result
twice is harmless.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote_plus

from imgclf.errors import ImageTooLargeError, InputError, ServingError
from imgclf.inference.s3 import describe_client_error, s3_client
from imgclf.serving.aws_lambda.jsonlog import log_event
from imgclf.serving.aws_lambda.model_store import LoadedModel
from imgclf.serving.aws_lambda.settings import LambdaSettings


@dataclass(frozen=True)
class S3Object:
    """The object an S3 notification record is about."""

    bucket: str
    key: str
    size: int | None
    event_name: str


def parse_s3_records(event: dict[str, Any]) -> list[S3Object]:
    """The objects named by an S3 notification event (keys arrive URL-encoded: decode them)."""
    objects = []
    for record in event.get("Records", []):
        s3 = record.get("s3", {})
        size = s3.get("object", {}).get("size")
        objects.append(
            S3Object(
                bucket=s3.get("bucket", {}).get("name", ""),
                key=unquote_plus(s3.get("object", {}).get("key", "")),
                size=size if isinstance(size, int) else None,
                event_name=str(record.get("eventName", "")),
            )
        )
    return objects


def handle_s3_event(
    event: dict[str, Any], settings: LambdaSettings, model: LoadedModel
) -> dict[str, Any]:
    """Classify every object of an S3 notification and write one JSON result per image.

    Returns:
        ``{"results": [...], "skipped": [...]}`` where each result names its output object.

    Raises:
        ServingError: Reading or writing S3 failed for at least one object (after trying all).
    """
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    failures: list[str] = []
    for obj in parse_s3_records(event):
        reason = skip_reason(obj, settings)
        if reason is None:
            try:
                results.append(classify_object(obj, settings, model))
                continue
            except InputError as exc:
                reason = f"not a usable image: {exc}"
            except ServingError as exc:
                failures.append(str(exc))
                log_event(
                    "s3_object_failed",
                    level=logging.ERROR,
                    bucket=obj.bucket,
                    key=obj.key,
                    error=str(exc),
                )
                continue
        skipped.append({"bucket": obj.bucket, "key": obj.key, "reason": reason})
        log_event("s3_object_skipped", bucket=obj.bucket, key=obj.key, reason=reason)
    if failures:
        raise ServingError(f"{len(failures)} S3 object(s) failed: " + "; ".join(failures))
    return {"results": results, "skipped": skipped}


def skip_reason(obj: S3Object, settings: LambdaSettings) -> str | None:
    """Why an object must not be classified, or None if it should be."""
    if not obj.event_name.startswith("ObjectCreated"):
        return f"event {obj.event_name!r} is not an ObjectCreated event"
    if not obj.bucket or not obj.key or obj.key.endswith("/"):
        return "record names no object (folder marker or malformed record)"
    if output_bucket(obj, settings) == obj.bucket and obj.key.startswith(settings.output_prefix):
        return f"key is under the output prefix {settings.output_prefix!r} (a result, not an input)"
    if obj.size is not None and obj.size > settings.max_object_bytes:
        return f"object is {obj.size:,} bytes; MAX_OBJECT_BYTES is {settings.max_object_bytes:,}"
    return None


def output_bucket(obj: S3Object, settings: LambdaSettings) -> str:
    """Bucket that receives the result for ``obj``."""
    return settings.output_bucket or obj.bucket


def classify_object(obj: S3Object, settings: LambdaSettings, model: LoadedModel) -> dict[str, Any]:
    """Download, classify and write the result of one object.

    Raises:
        InputError: The object is not a decodable, supported image of acceptable size.
        ServingError: S3 refused the read or the write.
    """
    data = read_object(obj, settings.max_object_bytes)
    predictor = model.predictor
    prediction = predictor.predict(data, top_k=settings.top_k)
    result = {
        "source": {"bucket": obj.bucket, "key": obj.key, "size": len(data)},
        **prediction.to_dict(),
        "model": {"name": predictor.name, "version": predictor.version},
    }
    bucket, key = output_bucket(obj, settings), f"{settings.output_prefix}{obj.key}.json"
    write_object(bucket, key, json.dumps(result, indent=2).encode())
    log_event(
        "s3_object_classified",
        bucket=obj.bucket,
        key=obj.key,
        output=f"s3://{bucket}/{key}",
        label=prediction.label,
        probability=round(prediction.probability, 4),
    )
    return {**asdict(obj), "output": f"s3://{bucket}/{key}", "class": prediction.label}


def read_object(obj: S3Object, max_bytes: int) -> bytes:
    """The object's bytes, refusing more than ``max_bytes`` whatever the event said."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        response = s3_client().get_object(Bucket=obj.bucket, Key=obj.key)
        with response["Body"] as body:
            data: bytes = body.read(max_bytes + 1)
    except (ClientError, BotoCoreError) as exc:
        raise ServingError(
            f"cannot read s3://{obj.bucket}/{obj.key} ({describe_client_error(exc)}); check "
            "that the function's role may s3:GetObject it"
        ) from exc
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"object is larger than MAX_OBJECT_BYTES ({max_bytes:,} bytes)")
    return data


def write_object(bucket: str, key: str, body: bytes) -> None:
    """Write a JSON result object."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3_client().put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
    except (ClientError, BotoCoreError) as exc:
        raise ServingError(
            f"cannot write s3://{bucket}/{key} ({describe_client_error(exc)}); check "
            "OUTPUT_BUCKET and that the function's role may s3:PutObject there"
        ) from exc
