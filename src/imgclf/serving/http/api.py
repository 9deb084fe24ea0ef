"""The native REST API: ``/predict``, ``/predict/batch``, health, readiness and metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from imgclf.inference.predictions import to_predictions
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.dependencies import InferenceGuards, ServicesDep
from imgclf.serving.http.inputs import classify_images, read_batch_images, read_single_image
from imgclf.serving.http.schemas import (
    BATCH_REQUEST_BODY,
    ERROR_RESPONSES,
    PREDICT_REQUEST_BODY,
    BatchResponse,
    HealthResponse,
    ModelDescription,
    PredictResponse,
)

router = APIRouter()

TopK = Annotated[
    int | None,
    Query(ge=1, le=1000, description="How many classes to list (default: the server's)"),
]


def _model_info(backend: InferenceBackend) -> dict[str, str]:
    return {"name": backend.model_name, "version": backend.model_version}


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": PREDICT_REQUEST_BODY},
    dependencies=InferenceGuards,
    summary="Classify one image",
    tags=["predict"],
)
async def predict(request: Request, services: ServicesDep, top_k: TopK = None) -> dict[str, Any]:
    """Classify one image sent as a multipart ``file``, JSON ``url``/``image``, or raw bytes."""
    image = await read_single_image(request, services)
    probs, backend = await classify_images([image], services)
    k = top_k or services.settings.default_top_k
    prediction = to_predictions(probs, backend.labels, k)[0]
    return {**prediction.to_dict(), "model": _model_info(backend)}


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses=ERROR_RESPONSES,
    openapi_extra={"requestBody": BATCH_REQUEST_BODY},
    dependencies=InferenceGuards,
    summary="Classify several images",
    tags=["predict"],
)
async def predict_batch(
    request: Request, services: ServicesDep, top_k: TopK = None
) -> dict[str, Any]:
    """Classify several images (multipart ``files`` or JSON ``images``), answered in order."""
    images = await read_batch_images(request, services)
    probs, backend = await classify_images(images, services)
    k = top_k or services.settings.default_top_k
    predictions = [p.to_dict() for p in to_predictions(probs, backend.labels, k)]
    return {"predictions": predictions, "model": _model_info(backend)}


@router.get("/model", response_model=ModelDescription, responses=ERROR_RESPONSES, tags=["predict"])
async def model(services: ServicesDep) -> dict[str, Any]:
    """The served model: name, version, labels in output order and input size."""
    backend, _, _ = services.ready_backend()
    return {
        **_model_info(backend),
        "labels": backend.labels,
        "input_size": backend.preprocess_config.input_size,
    }


@router.get("/health", response_model=HealthResponse, tags=["health"])
async def health() -> dict[str, str]:
    """Liveness: the process is up and its event loop answers."""
    return {"status": "ok"}


@router.get(
    "/ready", response_model=HealthResponse, responses={503: ERROR_RESPONSES[503]}, tags=["health"]
)
async def ready(services: ServicesDep) -> Any:
    """Readiness: the model is loaded and warmed and the backend is reachable."""
    if services.is_ready():
        return {"status": "ready"}
    return JSONResponse(
        {"detail": "model not ready"}, status_code=503, headers={"Retry-After": "1"}
    )


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: requests, latency, batch sizes, queue depth, model info."""
    body, content_type = services.metrics.render()
    return Response(body, media_type=content_type)
