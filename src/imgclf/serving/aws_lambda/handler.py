"""The AWS Lambda entry point: ``imgclf.serving.aws_lambda.handler.handler``.

One function serves every event source the function is wired to (see ``deploy/lambda``):

- API Gateway REST API (payload 1.0) and HTTP API (payload 2.0) proxy events -> a proxy response
  with the JSON of ``POST /predict``: ``{"class", "probability", "top_k", "model"}``, or
  ``{"detail": ...}`` with a 4xx/5xx status;
- direct invocations with ``{"url": ...}`` or ``{"image": <base64>}`` -> the same JSON object;
- S3 ``ObjectCreated`` notifications -> one JSON result per image written to S3.

The model is loaded on the first invocation of an execution environment (or while the module is
imported, in Lambda's init phase, with ``PRELOAD_MODEL=1``) and kept for the next ones. Only
numpy, Pillow, pydantic and ONNX Runtime are imported on the API path: no torch, no FastAPI, and
boto3 only when S3 is used.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from imgclf.errors import ImgclfError, InputError
from imgclf.serving.aws_lambda import jsonlog
from imgclf.serving.aws_lambda.events import (
    EventKind,
    ImageRequest,
    event_kind,
    http_response,
    parse_direct_event,
    parse_http_event,
)
from imgclf.serving.aws_lambda.jsonlog import log_event
from imgclf.serving.aws_lambda.model_store import LoadedModel, get_model
from imgclf.serving.aws_lambda.settings import LambdaSettings
from imgclf.serving.status import HTTP_STATUS, status_for

__all__ = ["handler"]

#: The function's HTTP status for each core error (proxy responses, and the ``statusCode`` of a
#: direct invocation's error): the plain HTTP meaning, 422 and 405 included.
LAMBDA_STATUS: Mapping[type[Exception], int] = HTTP_STATUS


def handler(event: Any, context: Any) -> Any:
    """Lambda handler for API Gateway (v1/v2), direct and S3 events.

    Args:
        event: The invocation event, as delivered by the Lambda runtime.
        context: The Lambda context (``aws_request_id`` is added to every log line).

    Returns:
        An API Gateway proxy response, the prediction object (direct invocation), or a summary of
        the objects classified and skipped (S3).

    Raises:
        ImgclfError: Only for S3 events, when the model or S3 failed, so Lambda retries them.
    """
    token = jsonlog.request_id.set(getattr(context, "aws_request_id", None))
    try:
        kind = event_kind(event)
        if kind is EventKind.S3:
            settings = LambdaSettings.from_env(os.environ)
            from imgclf.serving.aws_lambda.s3_events import handle_s3_event

            return handle_s3_event(event, settings, get_model(settings))
        return _answer_request(event, kind)
    finally:
        jsonlog.request_id.reset(token)


def _answer_request(event: Any, kind: EventKind) -> dict[str, Any]:
    """Answer a synchronous (API Gateway or direct) request; never raises."""
    start = time.perf_counter()
    try:
        settings = LambdaSettings.from_env(os.environ)
        if kind is EventKind.DIRECT:
            request = parse_direct_event(event, settings.max_request_bytes)
        else:
            request = parse_http_event(event, kind, settings.max_request_bytes)
        status, body = 200, predict(request, settings, get_model(settings))
    except InputError as exc:
        status, body = status_for(exc, LAMBDA_STATUS, 400), {"detail": str(exc)}
    except ImgclfError as exc:
        status = status_for(exc, LAMBDA_STATUS, 500)
        body = {"detail": f"the function cannot serve predictions: {exc}"}
        log_event("serving_error", level=logging.ERROR, error=str(exc))
    except Exception:
        status, body = 500, {"detail": "internal error; see the function's logs"}
        get_logger_exception()
    log_event(
        "request",
        source=kind.value,
        status=status,
        duration_ms=round((time.perf_counter() - start) * 1000, 2),
        **({"label": body["class"]} if status == 200 else {"detail": body["detail"]}),
    )
    if kind is EventKind.DIRECT:
        return body if status == 200 else {**body, "statusCode": status}
    return http_response(status, body)


def predict(request: ImageRequest, settings: LambdaSettings, model: LoadedModel) -> dict[str, Any]:
    """Classify the requested image; the JSON of ``POST /predict``.

    Raises:
        InputError: The image cannot be fetched or decoded.
    """
    data = request.image if request.image is not None else fetch_image(request.url or "", settings)
    predictor = model.predictor
    prediction = predictor.predict(data, top_k=request.top_k or settings.top_k)
    return {
        **prediction.to_dict(),
        "model": {"name": predictor.name, "version": predictor.version},
    }


def fetch_image(url: str, settings: LambdaSettings) -> bytes:
    """Download an image with the SSRF-safe fetcher (imported only when a URL is sent)."""
    from imgclf.inference.fetch import FetchPolicy, fetch_url

    policy = FetchPolicy.create(
        allowed_hosts=settings.url_allowed_hosts,
        max_bytes=settings.url_max_bytes,
        allow_loopback=settings.url_allow_loopback,
        total_timeout_s=settings.url_timeout_s,
        connect_timeout_s=min(3.0, settings.url_timeout_s),
        read_timeout_s=min(5.0, settings.url_timeout_s),
    )
    return fetch_url(url, policy)


def get_logger_exception() -> None:
    """Log the exception being handled, with its traceback, as a JSON line."""
    jsonlog.get_logger().exception("unhandled error", extra={"event": "unhandled_error"})


def preload_model() -> None:
    """Load the model now if ``PRELOAD_MODEL=1``; a failure is logged and left to the first call.

    Lambda imports the handler module during its init phase, before any event: with provisioned
    concurrency that phase runs ahead of traffic, so the first request finds the model loaded.
    """
    try:
        settings = LambdaSettings.from_env(os.environ)
        if settings.preload_model:
            get_model(settings)
    except ImgclfError as exc:
        log_event("preload_failed", level=logging.ERROR, error=str(exc))


preload_model()
