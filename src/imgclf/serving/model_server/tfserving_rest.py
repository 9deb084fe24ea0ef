"""TensorFlow Serving's REST API on the model server's REST port, beside the V2 routes.

Routes (``/versions/{v}`` is optional wherever a model is named)::

    GET  /v1/models/{m}            version status (as TF Serving's GetModelStatus)
    GET  /v1/models/{m}/metadata   the signature, plus the labels in output order
    POST /v1/models/{m}:predict    ``instances`` / ``inputs`` -> ``predictions`` / ``outputs``

Requests and answers are those of :mod:`imgclf.serving.tfserving` (the same as ``imgclf serve``'s
``/v1`` paths); the body is read as JSON whatever its content type, as TF Serving does. Errors
answer ``{"error": "..."}``: 400 for a bad request, 404 for an unknown model or version, 503 while
a model is not loaded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from imgclf.errors import InputError, ModelNotFoundError
from imgclf.image_budget import DEFAULT_MAX_PIXELS
from imgclf.serving import tfserving
from imgclf.serving.json_input import JSONBodyError, parse_json
from imgclf.serving.model_server.model import ServedModel
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.model_server.tfserving_grpc import probabilities

#: JSON values per predict body: raw pixels take one per channel value (a 224x224 image about
#: 250,000 with its brackets), and decoding costs about 0.1 us each.
MAX_JSON_VALUES = 4_000_000
#: Instances per predict request.
MAX_INSTANCES = 256
ReadBody = Callable[[Request, int], Awaitable[bytes]]


def tfserving_router(
    repository: ModelRepository, read_body: ReadBody, max_body_bytes: int
) -> APIRouter:
    """The ``/v1`` routes over a repository; ``read_body`` reads a capped, decompressed body."""
    router = APIRouter(prefix="/v1/models")

    def served(name: str, version: str = "") -> ServedModel:
        if version and not version.isdigit():
            raise ModelNotFoundError(f"Servable not found for request: Specific({name}, {version})")
        return repository.get(name, version)

    def status(name: str, version: str = "") -> dict[str, Any]:
        model = served(name, version)
        return tfserving.status_answer(str(model.version), ready=True)

    def metadata(name: str, version: str = "") -> dict[str, Any]:
        model = served(name, version)
        return tfserving.metadata_answer(model.name, str(model.version), model.labels)

    async def predict(request: Request, name: str, version: str = "") -> dict[str, Any]:
        model = served(name, version)
        body = await read_body(request, max_body_bytes)
        try:
            data = parse_json(body, max_values=MAX_JSON_VALUES)
        except JSONBodyError as exc:
            raise InputError(str(exc)) from exc
        probs = await run_in_threadpool(_classify, model, data)
        return tfserving.predict_answer(probs, columnar=isinstance(data, dict) and "inputs" in data)

    for prefix in ("/{name}", "/{name}/versions/{version}"):
        router.add_api_route(prefix, status, methods=["GET"])
        router.add_api_route(prefix + "/metadata", metadata, methods=["GET"])
        router.add_api_route(prefix + ":predict", predict, methods=["POST"])
    return router


def _classify(model: ServedModel, data: Any) -> Any:
    body = tfserving.parse_predict_body(data, model.max_batch_size or MAX_INSTANCES)
    pixels = tfserving.model_batch(body.instances, model.preprocess, DEFAULT_MAX_PIXELS)
    return probabilities(model, pixels)
