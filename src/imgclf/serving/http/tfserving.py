"""TensorFlow Serving-compatible REST paths, for clients written against TF Serving.

``POST /v1/models/{name}:predict`` takes ``{"instances": [{"b64": "<base64 image>"}, ...]}`` (the
row format; ``{"image_bytes": {"b64": ...}}`` instances and the columnar ``{"inputs": ...}`` form
are accepted too) and answers ``{"predictions": [[p_0, ..., p_C-1], ...]}``: one probability list
per image in label order, as a Keras softmax model served by TF Serving would. Labels are listed by
``GET /v1/models/{name}/metadata``. Errors carry ``{"error": ...}`` as TF Serving's do, with the
status :data:`TFSERVING_STATUS` gives (the app's error handler looks it up for these paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from imgclf.errors import InputError, ModelNotFoundError
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.dependencies import InferenceGuards, Services, ServicesDep
from imgclf.serving.http.inputs import classify_images, decode_base64
from imgclf.serving.http.jsonbody import JSONBodyRoute
from imgclf.serving.http.schemas import ERROR_RESPONSES
from imgclf.serving.status import HTTP_STATUS

router = APIRouter(prefix="/v1/models", tags=["tf-serving"], route_class=JSONBodyRoute)
#: TF Serving's REST status for each core error: the plain HTTP meaning (TF Serving answers
#: NOT_FOUND with 404, INVALID_ARGUMENT with 400, UNAVAILABLE with 503).
TFSERVING_STATUS: Mapping[type[Exception], int] = HTTP_STATUS
ModelName = Annotated[str, Path(description="Model name", max_length=256)]


class PredictRequest(BaseModel):
    """TF Serving's predict request (row or columnar format)."""

    model_config = ConfigDict(extra="forbid")

    signature_name: str | None = None
    instances: list[Any] | None = Field(None, min_length=1)
    inputs: Any = None


def _backend_named(services: Services, name: str) -> InferenceBackend:
    backend, _, _ = services.ready_backend()
    if name != backend.model_name:
        raise ModelNotFoundError(
            f"Servable not found for request: Latest({name}); this server serves "
            f"{backend.model_name!r}"
        )
    return backend


def _instance_bytes(instance: Any, index: int) -> bytes:
    if isinstance(instance, dict) and set(instance) == {"image_bytes"}:
        instance = instance["image_bytes"]
    if isinstance(instance, dict) and set(instance) == {"b64"} and isinstance(instance["b64"], str):
        return decode_base64(instance["b64"])
    raise InputError(
        f"instance {index}: expected {{'b64': '<base64 image>'}} or "
        "{'image_bytes': {'b64': ...}}"
    )


def _request_images(body: PredictRequest, limit: int) -> list[bytes]:
    if (body.instances is None) == (body.inputs is None):
        raise InputError("give exactly one of 'instances' or 'inputs'")
    rows = body.instances
    if rows is None:
        rows = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    if not 1 <= len(rows) <= limit:
        raise InputError(f"send between 1 and {limit} instances, got {len(rows)}")
    return [_instance_bytes(row, i) for i, row in enumerate(rows)]


@router.get("/{name}", summary="Model status (TF Serving)", responses=ERROR_RESPONSES)
async def model_status(name: ModelName, services: ServicesDep) -> dict[str, Any]:
    """The served version and its state."""
    backend = _backend_named(services, name)
    state = "AVAILABLE" if services.is_ready() else "LOADING"
    return {
        "model_version_status": [
            {
                "version": backend.model_version,
                "state": state,
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


@router.get("/{name}/metadata", summary="Model metadata (TF Serving)", responses=ERROR_RESPONSES)
async def model_metadata(name: ModelName, services: ServicesDep) -> dict[str, Any]:
    """Model name, version and the labels in the order of the probabilities."""
    backend = _backend_named(services, name)
    return {
        "model_spec": {"name": backend.model_name, "version": backend.model_version},
        "metadata": {"labels": backend.labels, "input": "b64-encoded image", "output": "softmax"},
    }


@router.post(
    "/{name}:predict",
    summary="Predict (TF Serving)",
    responses=ERROR_RESPONSES,
    dependencies=InferenceGuards,
)
async def predict(name: ModelName, body: PredictRequest, services: ServicesDep) -> dict[str, Any]:
    """Classify base64-encoded images; answers one probability list per image."""
    _backend_named(services, name)
    images = _request_images(body, services.settings.max_batch_images)
    probs, _ = await classify_images(images, services)
    return {"predictions": [[round(float(p), 7) for p in row] for row in probs]}
