"""Turn Lambda events into image requests, and results into Lambda responses.

Three request shapes reach the handler synchronously:

- **API Gateway REST API** (payload format 1.0) and **HTTP API** (payload format 2.0) proxy
  events: the body is JSON ``{"url": ...}`` or ``{"image": <base64>}`` (optionally with
  ``"top_k"``), a ``multipart/form-data`` form with a ``file`` field (and optionally ``top_k``),
  or the raw image bytes (``isBase64Encoded``, any ``image/*`` or ``application/octet-stream``
  content type); ``?top_k=`` works in the query string too. The answer is a proxy response
  with a status code.
- **Direct invocation** (``aws lambda invoke``, Step Functions, ...) with the same JSON object as
  the event; the answer is the prediction object itself, or ``{"detail", "statusCode"}``.

Status codes: 400 unreadable JSON or base64, 405 not a POST, 413 over Lambda's 6 MB synchronous
payload limit or the image pixel cap, 415 not a supported image, 422 a JSON object of the wrong
shape (:class:`~imgclf.errors.RequestShapeError`); the handler's
:data:`~imgclf.serving.aws_lambda.handler.LAMBDA_STATUS` maps every error to its status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from imgclf.errors import (
    ImageTooLargeError,
    InputError,
    MethodNotAllowedError,
    RequestShapeError,
)
from imgclf.serving.aws_lambda.settings import LAMBDA_SYNC_PAYLOAD_LIMIT
from imgclf.serving.json_input import JSONBodyError, decode_base64, parse_json

JSON_HEADERS = {"Content-Type": "application/json"}
_JSON_FIELDS = frozenset({"url", "image", "top_k"})


class EventKind(StrEnum):
    """Which AWS service (or caller) produced an event."""

    API_GATEWAY_V1 = "apigateway-v1"
    API_GATEWAY_V2 = "apigateway-v2"
    S3 = "s3"
    DIRECT = "direct"


@dataclass(frozen=True)
class ImageRequest:
    """One image to classify: given inline (``image``) or by ``url``."""

    image: bytes | None = None
    url: str | None = None
    top_k: int | None = None


def event_kind(event: Any) -> EventKind:
    """Classify an event by the fields AWS documents for each source."""
    if isinstance(event, dict):
        records = event.get("Records")
        if (
            isinstance(records, list)
            and records
            and isinstance(records[0], dict)
            and records[0].get("eventSource") == "aws:s3"
        ):
            return EventKind.S3
        if isinstance(event.get("requestContext"), dict):
            if event.get("version") == "2.0":
                return EventKind.API_GATEWAY_V2
            if "httpMethod" in event:
                return EventKind.API_GATEWAY_V1
    return EventKind.DIRECT


def parse_http_event(event: dict[str, Any], kind: EventKind, max_bytes: int) -> ImageRequest:
    """Read the image request out of an API Gateway proxy event (payload 1.0 or 2.0).

    Raises:
        InputError: The method, size, encoding or content of the body is unusable.
    """
    method = (
        event.get("requestContext", {}).get("http", {}).get("method")
        if kind is EventKind.API_GATEWAY_V2
        else event.get("httpMethod")
    )
    if method and str(method).upper() != "POST":
        raise MethodNotAllowedError(f"method {method} is not allowed; send a POST")
    data = _body_bytes(event, max_bytes)
    query = event.get("queryStringParameters") or {}
    query_top_k = _query_top_k(query.get("top_k")) if isinstance(query, dict) else None
    content_type_header = _header(event, "content-type")
    content_type = content_type_header.split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        request = parse_multipart(data, content_type_header)
        return request if request.top_k is not None else _with_top_k(request, query_top_k)
    if content_type == "application/json" or (
        not content_type.startswith("image/") and data.lstrip()[:1] == b"{"
    ):
        request = parse_json_request(_load_json(data))
        return request if request.top_k is not None else _with_top_k(request, query_top_k)
    return ImageRequest(image=data, top_k=query_top_k)


def parse_direct_event(event: Any, max_bytes: int) -> ImageRequest:
    """Read the image request of a direct invocation (the event is the JSON request)."""
    image = event.get("image") if isinstance(event, dict) else None
    if isinstance(image, str) and len(image) > max_bytes:
        raise payload_too_large(len(image), max_bytes)
    return parse_json_request(event)


def parse_json_request(payload: Any) -> ImageRequest:
    """Validate ``{"url": ...}`` or ``{"image": <base64>}`` with an optional ``top_k``.

    Raises:
        RequestShapeError: Not an object, unknown fields, both or neither of url/image, bad types.
        InputError: ``image`` is not valid base64 (400).
    """
    if not isinstance(payload, dict):
        raise RequestShapeError(
            'the request must be a JSON object: {"url": "https://..."} or {"image": "<base64>"}'
        )
    unknown = sorted(set(payload) - _JSON_FIELDS)
    if unknown:
        raise RequestShapeError(f"unknown fields {unknown}; allowed: url, image, top_k")
    url, image = payload.get("url"), payload.get("image")
    if (url is None) == (image is None):
        raise RequestShapeError('send exactly one of "url" (an image URL) or "image" (base64)')
    top_k = payload.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise RequestShapeError(f'"top_k" must be a positive integer, got {top_k!r}')
    if url is not None:
        if not isinstance(url, str) or not url:
            raise RequestShapeError('"url" must be a non-empty string')
        return ImageRequest(url=url, top_k=top_k)
    if not isinstance(image, str):
        raise RequestShapeError('"image" must be a base64 string')
    return ImageRequest(image=decode_base64(image, what='"image"'), top_k=top_k)


def parse_multipart(data: bytes, content_type_header: str) -> ImageRequest:
    """The ``file`` field (and optional ``top_k`` field) of a ``multipart/form-data`` body.

    Raises:
        InputError: The form cannot be parsed (400) or has no ``file`` field (422).
    """
    from email import policy
    from email.parser import BytesParser

    if "boundary=" not in content_type_header:
        raise InputError("multipart/form-data needs a boundary in its Content-Type header")
    header = f"Content-Type: {content_type_header}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(header + data)
    if not message.is_multipart():
        raise InputError("the multipart/form-data body could not be parsed")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields.setdefault(name, payload)
    if "file" not in fields:
        raise RequestShapeError(
            f"the form has no 'file' field (fields: {sorted(fields) or 'none'}); "
            "send the image as the 'file' field"
        )
    top_k = fields.get("top_k")
    return ImageRequest(
        image=fields["file"], top_k=_query_top_k(top_k.decode("latin-1")) if top_k else None
    )


def payload_too_large(size: int, limit: int) -> ImageTooLargeError:
    """The 413 error for a request body over the synchronous payload limit."""
    reason = (
        "AWS Lambda's 6 MB limit for synchronous invocations"
        if limit == LAMBDA_SYNC_PAYLOAD_LIMIT
        else "MAX_REQUEST_BYTES"
    )
    return ImageTooLargeError(
        f"request body is {size:,} bytes; the limit is {limit:,} bytes ({reason}). Send a "
        'smaller image, an image URL ({"url": ...}), or upload it to the S3 bucket instead'
    )


def http_response(status: int, body: dict[str, Any]) -> dict[str, Any]:
    """An API Gateway proxy response (valid for payload formats 1.0 and 2.0)."""
    return {
        "statusCode": status,
        "headers": dict(JSON_HEADERS),
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _body_bytes(event: dict[str, Any], max_bytes: int) -> bytes:
    body = event.get("body")
    if body is None or body == "":
        raise InputError(
            'request body is empty; send JSON {"url": ...} or {"image": "<base64>"}, '
            "or the image bytes with an image/* Content-Type"
        )
    if not isinstance(body, str):
        raise RequestShapeError("request body must be a string")
    encoded = body.encode("utf-8")
    if len(encoded) > max_bytes:
        raise payload_too_large(len(encoded), max_bytes)
    if event.get("isBase64Encoded"):
        return decode_base64(body, what="the base64-encoded request body")
    return encoded


def _header(event: dict[str, Any], name: str) -> str:
    headers = event.get("headers") or {}
    for key, value in headers.items():
        if key.lower() == name and isinstance(value, str):
            return value
    return ""


def _load_json(data: bytes) -> Any:
    try:
        return parse_json(data)
    except JSONBodyError as exc:  # also too deep, or a number over 4300 digits
        raise InputError(str(exc)) from exc


def _query_top_k(value: Any) -> int | None:
    if value is None:
        return None
    if not str(value).strip().isdigit() or int(value) < 1:
        raise RequestShapeError(f"top_k must be a positive integer, got {value!r}")
    return int(value)


def _with_top_k(request: ImageRequest, top_k: int | None) -> ImageRequest:
    return ImageRequest(image=request.image, url=request.url, top_k=top_k)
