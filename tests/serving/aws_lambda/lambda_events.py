"""Helpers shared by the Lambda tests: AWS-documented events, a fake context, log parsing."""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTS_DIR = Path(__file__).parent / "events"


def load_event(name: str) -> dict[str, Any]:
    """A deep copy of one of the AWS-documented event fixtures in ``events/``."""
    return copy.deepcopy(json.loads((EVENTS_DIR / f"{name}.json").read_text()))


def http_v2_event(body: str | bytes, *, content_type: str = "application/json") -> dict[str, Any]:
    """An HTTP API (payload 2.0) event; bytes bodies are base64-encoded as API Gateway does."""
    event = load_event("apigateway_v2_http_api")
    event["headers"]["content-type"] = content_type
    if isinstance(body, bytes):
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    else:
        event["body"], event["isBase64Encoded"] = body, False
    event["headers"]["content-length"] = str(len(event["body"]))
    return event


def http_v1_event(
    body: str | bytes,
    *,
    content_type: str = "application/json",
    query: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A REST API (payload 1.0) proxy event."""
    event = load_event("apigateway_v1_proxy")
    event["headers"]["Content-Type"] = content_type
    event["multiValueHeaders"]["Content-Type"] = [content_type]
    if isinstance(body, bytes):
        event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode(), True
    else:
        event["body"], event["isBase64Encoded"] = body, False
    if query is not None:
        event["queryStringParameters"] = query
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def s3_put_event(bucket: str, *keys: str, size: int = 1024) -> dict[str, Any]:
    """An S3 ObjectCreated:Put notification for ``keys`` (URL-encoded as S3 sends them)."""
    from urllib.parse import quote_plus

    template = load_event("s3_object_created_put")["Records"][0]
    records = []
    for key in keys:
        record = copy.deepcopy(template)
        record["s3"]["bucket"]["name"] = bucket
        record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        record["s3"]["object"]["size"] = size
        records.append(record)
    return {"Records": records}


@dataclass
class FakeContext:
    """The attributes of the Lambda context object the handler reads."""

    aws_request_id: str = "8f5e9a1c-0000-4000-8000-000000000001"
    function_name: str = "imgclf-classify"
    memory_limit_in_mb: int = 2048


def log_records(text: str) -> list[dict[str, Any]]:
    """Parse the handler's JSON log lines out of captured stdout."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]
