"""TensorFlow Serving-compatible REST paths, for clients written against TF Serving.

``POST /v1/models/{name}[/versions/{v}]:predict`` takes the row format
``{"instances": [...]}`` or the columnar ``{"inputs": [...]}``; each instance is
``{"b64": "<base64 image>"}`` or a raw ``H x W x 3`` nested list of pixels of any size (the
uint8/float rule is in :mod:`imgclf.serving.tfserving`). It answers
``{"predictions": [[p_0, ..., p_C-1], ...]}`` (``{"outputs": ...}`` for columnar requests): one
probability list per image in label order. Labels are listed by ``GET /v1/models/{name}/metadata``;
``GET /v1/models/{name}`` gives the version status. Errors carry ``{"error": ...}`` as TF
Serving's do, with the status :data:`TFSERVING_STATUS` gives (the app's error handler looks it up
for these paths): 400 for a bad request, 404 for an unknown model or version.

As TF Serving, the body is read as JSON whatever its content type: ``curl -d @file.json`` sends
``application/x-www-form-urlencoded``. Raw pixels take many JSON values (a 224x224 image about
250,000), so the body is bounded by ``max_json_values`` (as V2 tensors are), not by the small
budget of the base64 routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Request

from imgclf.errors import InputError, ModelNotFoundError
from imgclf.serving import tfserving
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.dependencies import InferenceGuards, Services, ServicesDep
from imgclf.serving.http.inputs import classify_pixels, decode_images
from imgclf.serving.http.schemas import ERROR_RESPONSES
from imgclf.serving.json_input import JSONBodyError, parse_json
from imgclf.serving.status import HTTP_STATUS

router = APIRouter(prefix="/v1/models", tags=["tf-serving"])
#: TF Serving's REST status for each core error: the plain HTTP meaning (TF Serving answers
#: NOT_FOUND with 404, INVALID_ARGUMENT with 400, UNAVAILABLE with 503).
TFSERVING_STATUS: Mapping[type[Exception], int] = HTTP_STATUS
ModelName = Annotated[str, Path(description="Model name", max_length=256)]
Version = Annotated[str, Path(description="Model version", max_length=64)]
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "signature_name": {"type": "string"},
                        "instances": {"type": "array", "items": {}},
                        "inputs": {},
                    },
                }
            }
        },
    }
}


def _backend_named(services: Services, name: str, version: str | None = None) -> InferenceBackend:
    backend, _, _ = services.ready_backend()
    if name != backend.model_name:
        raise ModelNotFoundError(
            f"Servable not found for request: Latest({name[:100]}); this server serves "
            f"{backend.model_name!r}"
        )
    if version is not None and version != backend.model_version:
        raise ModelNotFoundError(
            f"Servable not found for request: Specific({name[:100]}, {version[:20]}); this "
            f"server serves version {backend.model_version!r}"
        )
    return backend


def _status(services: Services, name: str, version: str | None) -> dict[str, Any]:
    backend = _backend_named(services, name, version)
    return tfserving.status_answer(backend.model_version, ready=services.is_ready())


def _metadata(services: Services, name: str, version: str | None) -> dict[str, Any]:
    backend = _backend_named(services, name, version)
    return tfserving.metadata_answer(backend.model_name, backend.model_version, backend.labels)


async def _predict(
    request: Request, services: Services, name: str, version: str | None
) -> dict[str, Any]:
    backend = _backend_named(services, name, version)
    settings = services.settings
    try:
        data = parse_json(await request.body(), max_values=settings.max_json_values)
    except JSONBodyError as exc:
        hint = "; send fewer raw instances, or send them as b64" if "values" in str(exc) else ""
        raise InputError(f"{exc}{hint}") from exc
    body = tfserving.parse_predict_body(data, settings.max_batch_images)
    pixels = await _model_pixels(body.instances, backend, services)
    probs, _ = await classify_pixels(pixels, services)
    return tfserving.predict_answer(probs, columnar=body.columnar)


async def _model_pixels(
    instances: list[tfserving.Instance], backend: InferenceBackend, services: Services
) -> np.ndarray:
    """Every instance as model-ready uint8 pixels ``(N, S, S, 3)``, in the order sent.

    Encoded images go through the service's image decoding (its budget, lanes and deadline);
    raw pixel arrays are resized on the decode pool.
    """
    encoded = [i for i, item in enumerate(instances) if isinstance(item, bytes)]
    raw = [i for i, item in enumerate(instances) if not isinstance(item, bytes)]
    size = backend.preprocess_config.input_size
    pixels = np.empty((len(instances), size, size, 3), dtype=np.uint8)
    if encoded:
        images = [instances[i] for i in encoded]
        pixels[encoded] = await decode_images(images, backend, services)  # type: ignore[arg-type]
    if raw:
        _, _, pool = services.ready_backend()
        loop = asyncio.get_running_loop()
        arrays = [instances[i] for i in raw]
        config, max_pixels = backend.preprocess_config, services.settings.max_pixels
        resized = loop.run_in_executor(pool, tfserving.model_batch, arrays, config, max_pixels)
        pixels[raw] = await resized
    return pixels


_PREDICT = {
    "summary": "Predict (TF Serving)",
    "responses": ERROR_RESPONSES,
    "dependencies": InferenceGuards,
    "openapi_extra": _PREDICT_BODY,
}


@router.get("/{name}", summary="Model status (TF Serving)", responses=ERROR_RESPONSES)
async def model_status(name: ModelName, services: ServicesDep) -> dict[str, Any]:
    """The served version and its state (TF Serving's ``GetModelStatus``)."""
    return _status(services, name, None)


@router.get(
    "/{name}/versions/{version}", summary="Model status (TF Serving)", responses=ERROR_RESPONSES
)
async def version_status(
    name: ModelName, version: Version, services: ServicesDep
) -> dict[str, Any]:
    """The state of one version."""
    return _status(services, name, version)


@router.get("/{name}/metadata", summary="Model metadata (TF Serving)", responses=ERROR_RESPONSES)
async def model_metadata(name: ModelName, services: ServicesDep) -> dict[str, Any]:
    """The signature and the labels in the order of the probabilities."""
    return _metadata(services, name, None)


@router.get(
    "/{name}/versions/{version}/metadata",
    summary="Model metadata (TF Serving)",
    responses=ERROR_RESPONSES,
)
async def version_metadata(
    name: ModelName, version: Version, services: ServicesDep
) -> dict[str, Any]:
    """The signature and labels of one version."""
    return _metadata(services, name, version)


@router.post("/{name}:predict", **_PREDICT)  # type: ignore[arg-type]
async def predict(name: ModelName, request: Request, services: ServicesDep) -> dict[str, Any]:
    """Classify images (encoded or raw pixels); one probability list per image."""
    return await _predict(request, services, name, None)


@router.post("/{name}/versions/{version}:predict", **_PREDICT)  # type: ignore[arg-type]
async def version_predict(
    name: ModelName, version: Version, request: Request, services: ServicesDep
) -> dict[str, Any]:
    """Classify images with one version."""
    return await _predict(request, services, name, version)
