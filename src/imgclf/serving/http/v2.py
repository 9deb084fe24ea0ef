"""The Open Inference Protocol (KServe V2) REST paths, so V2 clients work unchanged.

Inputs (exactly one tensor per request):

- ``BYTES`` ``[N]``: base64-encoded image files (JPEG, PNG, ...), decoded and preprocessed here;
- ``UINT8`` ``[N, H, W, 3]``: pixels already resized and cropped to the model's input size.

Output ``probabilities`` is FP32 ``[N, C]``; asking for it with ``parameters.classification = k``
returns BYTES ``[N, k]`` strings ``"<score>:<index>:<label>"``, best first (the classification
extension, as Triton and the imgclf model server answer it). Errors carry ``{"error": ...}`` as
the protocol asks, beside the ``detail`` every imgclf error has.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from imgclf import __version__
from imgclf.errors import InputError, ModelNotFoundError
from imgclf.serving.backend import InferenceBackend
from imgclf.serving.http.dependencies import InferenceGuards, Services, ServicesDep
from imgclf.serving.http.inputs import classify_images, classify_pixels
from imgclf.serving.http.jsonbody import JSONBodyRoute
from imgclf.serving.http.schemas import ERROR_RESPONSES
from imgclf.serving.json_input import decode_base64


class V2Route(JSONBodyRoute):
    """V2 bodies may carry pixels, one JSON value per channel value: a budget of their own."""

    def max_values(self, services: Services) -> int:
        """``max_json_values``: the decoding time one body may cost the event loop."""
        return services.settings.max_json_values


router = APIRouter(prefix="/v2", tags=["kserve-v2"], route_class=V2Route)

PROBABILITIES = "probabilities"
#: Largest tensor dimension: the protocol's shapes are int64 (a bound also keeps messages short).
MAX_DIMENSION = 2**63 - 1
#: Outputs a request may ask for (the model has one; a bound keeps validation errors few).
MAX_REQUESTED_OUTPUTS = 8
ModelName = Annotated[str, Path(description="Model name", max_length=256)]
ModelVersion = Annotated[str, Path(description="Model version", max_length=64)]


class V2Tensor(BaseModel):
    """An input tensor in the V2 JSON encoding."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=256)
    shape: list[Annotated[int, Field(le=MAX_DIMENSION)]] = Field(max_length=8)
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class V2RequestedOutput(BaseModel):
    """An output the client asks for."""

    model_config = ConfigDict(extra="forbid")

    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    """A V2 inference request."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    parameters: dict[str, Any] | None = None
    inputs: list[V2Tensor] = Field(min_length=1, max_length=1)
    outputs: list[V2RequestedOutput] | None = Field(None, max_length=MAX_REQUESTED_OUTPUTS)


def _backend_named(services: Services, name: str, version: str | None = None) -> InferenceBackend:
    backend, _, _ = services.ready_backend()
    if name != backend.model_name or (version is not None and version != backend.model_version):
        wanted = f"{name}" if version is None else f"{name} version {version}"
        raise ModelNotFoundError(
            f"model {wanted!r} is not served here; this server serves "
            f"{backend.model_name!r} version {backend.model_version!r}"
        )
    return backend


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _count(shape: list[int]) -> int:
    if any(dim < 0 for dim in shape):
        raise InputError(f"shape {shape} has a negative dimension")
    return math.prod(shape)  # exact: numpy's int64 product wraps around for huge shapes


def _pixels_from_tensor(tensor: V2Tensor, size: int, limit: int) -> np.ndarray:
    """The UINT8 ``[N, size, size, 3]`` pixels of a tensor; the shape is checked before the data."""
    shape = tensor.shape
    if len(shape) != 4 or shape[1:] != [size, size, 3] or not 1 <= shape[0] <= limit:
        raise InputError(
            f"input {tensor.name!r}: UINT8 pixels need shape [N, {size}, {size}, 3] with "
            f"1 <= N <= {limit}, got {shape}"
        )
    flat = not any(isinstance(value, list) for value in tensor.data[:1])
    if flat and len(tensor.data) != _count(shape):  # before converting millions of values
        raise InputError(
            f"input {tensor.name!r}: {len(tensor.data)} values do not fill shape {tensor.shape}"
        )
    try:
        values = np.asarray(tensor.data)
    except (ValueError, OverflowError) as exc:  # ragged nesting, integers beyond int64
        raise InputError(f"input {tensor.name!r}: UINT8 data must be a regular array") from exc
    if values.size != _count(shape):
        raise InputError(
            f"input {tensor.name!r}: {values.size} values do not fill shape {tensor.shape}"
        )
    if values.dtype.kind not in "iu" or values.min() < 0 or values.max() > 255:
        raise InputError(f"input {tensor.name!r}: UINT8 values must be integers in [0, 255]")
    return values.astype(np.uint8).reshape(shape)


def _images_from_tensor(tensor: V2Tensor, limit: int) -> list[bytes]:
    values = _flatten(tensor.data)
    if len(values) != _count(tensor.shape) or len(tensor.shape) not in (1, 2):
        raise InputError(
            f"input {tensor.name!r}: BYTES images need shape [N] or [N, 1] matching the data"
        )
    if not all(isinstance(v, str) for v in values):
        raise InputError(f"input {tensor.name!r}: BYTES data must be base64 strings")
    if not 1 <= len(values) <= limit:
        raise InputError(f"input {tensor.name!r}: send between 1 and {limit} images")
    return [decode_base64(v) for v in values]


def _classification_count(output: V2RequestedOutput) -> int:
    value = (output.parameters or {}).get("classification", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"output {output.name!r}: classification must be a positive integer")
    return value


def _outputs(
    probs: np.ndarray, labels: list[str], requested: list[V2RequestedOutput] | None
) -> list[dict[str, Any]]:
    outputs = []
    for output in requested or [V2RequestedOutput(name=PROBABILITIES)]:
        if output.name != PROBABILITIES:
            raise InputError(f"unknown output {output.name!r}; this model has {PROBABILITIES!r}")
        k = min(_classification_count(output), len(labels))
        if k == 0:
            data = [round(float(p), 7) for p in probs.reshape(-1)]
            outputs.append(
                {
                    "name": PROBABILITIES,
                    "datatype": "FP32",
                    "shape": list(probs.shape),
                    "data": data,
                }
            )
            continue
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        strings = [
            f"{row[i]:.6f}:{i}:{labels[i]}"
            for row, idx in zip(probs, order, strict=True)
            for i in idx
        ]
        outputs.append(
            {"name": PROBABILITIES, "datatype": "BYTES", "shape": [len(probs), k], "data": strings}
        )
    return outputs


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    """Name, version and protocol extensions of this server."""
    return {"name": "imgclf", "version": __version__, "extensions": ["classification"]}


@router.get("/health/live", summary="Server liveness")
async def live() -> dict[str, bool]:
    """The server process answers."""
    return {"live": True}


@router.get("/health/ready", summary="Server readiness", responses={503: ERROR_RESPONSES[503]})
async def ready(services: ServicesDep) -> Any:
    """The model is loaded and the server can infer."""
    if services.is_ready():
        return {"ready": True}
    return JSONResponse(
        {"ready": False, "detail": "model not ready", "error": "model not ready"},
        503,
        headers={"Retry-After": "1"},
    )


def _metadata(backend: InferenceBackend) -> dict[str, Any]:
    size = backend.preprocess_config.input_size
    return {
        "name": backend.model_name,
        "versions": [backend.model_version],
        "platform": "imgclf",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, size, size, 3]},
        ],
        "outputs": [
            {"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(backend.labels)]}
        ],
        "parameters": {"labels": backend.labels},
    }


@router.get("/models/{name}", summary="Model metadata", responses=ERROR_RESPONSES)
async def model_metadata(name: ModelName, services: ServicesDep) -> dict[str, Any]:
    """Inputs, outputs, versions and labels of the served model."""
    return _metadata(_backend_named(services, name))


@router.get("/models/{name}/versions/{version}", summary="Model version metadata")
async def model_version_metadata(
    name: ModelName, version: ModelVersion, services: ServicesDep
) -> dict[str, Any]:
    """Metadata of one version of the served model."""
    return _metadata(_backend_named(services, name, version))


@router.get("/models/{name}/ready", summary="Model readiness", responses=ERROR_RESPONSES)
async def model_ready(name: ModelName, services: ServicesDep) -> Any:
    """Whether this model can infer now."""
    _backend_named(services, name)
    ready = services.is_ready()
    if ready:
        return {"name": name, "ready": True}
    return JSONResponse({"name": name, "ready": False}, 503, headers={"Retry-After": "1"})


async def _infer(
    body: V2InferRequest, services: Services, name: str, version: str | None
) -> dict[str, Any]:
    backend = _backend_named(services, name, version)
    tensor = body.inputs[0]
    if tensor.datatype == "BYTES":
        images = _images_from_tensor(tensor, services.settings.max_batch_images)
        probs, backend = await classify_images(images, services)
    elif tensor.datatype == "UINT8":
        size, limit = backend.preprocess_config.input_size, services.settings.max_batch_images
        probs, backend = await classify_pixels(_pixels_from_tensor(tensor, size, limit), services)
    else:
        raise InputError(
            f"input {tensor.name!r}: datatype {tensor.datatype!r} is not accepted; send BYTES "
            "(base64 image files) or UINT8 [N, H, W, 3] pixels"
        )
    response: dict[str, Any] = {
        "model_name": backend.model_name,
        "model_version": backend.model_version,
        "outputs": _outputs(probs, backend.labels, body.outputs),
    }
    if body.id is not None:
        response["id"] = body.id
    return response


@router.post(
    "/models/{name}/infer", summary="Infer", responses=ERROR_RESPONSES, dependencies=InferenceGuards
)
async def infer(name: ModelName, body: V2InferRequest, services: ServicesDep) -> dict[str, Any]:
    """Classify images given as a BYTES (base64 files) or UINT8 (pixels) tensor."""
    return await _infer(body, services, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Infer with a model version",
    responses=ERROR_RESPONSES,
    dependencies=InferenceGuards,
)
async def infer_version(
    name: ModelName, version: ModelVersion, body: V2InferRequest, services: ServicesDep
) -> dict[str, Any]:
    """Like ``/v2/models/{name}/infer`` for an explicit version."""
    return await _infer(body, services, name, version)
