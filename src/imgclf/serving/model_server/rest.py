"""The Open Inference Protocol (KServe V2) over HTTP/JSON, with Triton's binary tensor extension.

Routes (``/versions/{v}`` is optional wherever a model is named)::

    GET  /v2                                 server metadata
    GET  /v2/health/live | /v2/health/ready  200 when live/ready, 503 otherwise
    GET  /v2/models/{m}                      model metadata
    GET  /v2/models/{m}/ready                200 when the model is loaded, else 503 + reason
    POST /v2/repository/index                every version: READY, or UNAVAILABLE with the reason
    GET  /v2/models/{m}/config               the model's config.pbtxt as JSON (as Triton)
    GET  /v2/models/{m}/stats                inference statistics (as Triton)
    POST /v2/models/{m}/infer                inference
    GET  /v1/models/{m}[/metadata], POST /v1/models/{m}:predict   TF Serving's REST API
                                             (:mod:`.tfserving_rest`)

Tensors travel as JSON ``data`` or, with the binary tensor data extension that ``tritonclient``
uses by default, as raw little-endian bytes after the JSON header (its length in the
``Inference-Header-Content-Length`` header). Bodies may be sent with ``Content-Encoding: gzip``
or ``deflate``; they are decompressed incrementally and refused as soon as the output exceeds the
body limit, so a small body that expands to gigabytes costs no memory. Errors answer
``{"error": "..."}`` with 400 (bad request), 404 (unknown model or version), 413 (body too large,
before or after decompression), 415 (unknown content encoding) or 503 (not ready), as
:data:`V2_REST_STATUS` maps the core errors.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from google.protobuf import json_format  # type: ignore[import-untyped]
from pydantic import BaseModel, Field, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from tritonclient.grpc import service_pb2

from imgclf import __version__
from imgclf.errors import ImageTooLargeError, ImgclfError, InputError, UnsupportedMediaError
from imgclf.serving.json_input import JSONBodyError, describe_errors, parse_json
from imgclf.serving.model_server.grpc_service import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EXTENSIONS,
    SERVER_NAME,
    reshape,
    statistics_message,
    tensor_bytes,
)
from imgclf.serving.model_server.model import V2_DTYPES, OutputTensor, RequestedOutput
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.model_server.tfserving_rest import tfserving_router
from imgclf.serving.status import HTTP_STATUS, status_for

HEADER_LENGTH = "Inference-Header-Content-Length"
#: The V2 REST status for each core error: the plain HTTP meaning, as Triton answers.
V2_REST_STATUS: Mapping[type[Exception], int] = HTTP_STATUS


def create_rest_app(
    repository: ModelRepository, *, max_body_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> FastAPI:
    """Build the V2 REST app over a repository (the caller owns the repository's lifetime)."""
    app = FastAPI(title="imgclf model server", version=__version__, docs_url=None, redoc_url=None)

    @app.exception_handler(ImgclfError)
    async def _error(request: Request, exc: ImgclfError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_for(exc, V2_REST_STATUS, 500))

    @app.get("/v2")
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    @app.get("/v2/health/live")
    def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready() -> JSONResponse:
        is_ready = repository.is_ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    def model_metadata(model: str, version: str = "") -> dict[str, Any]:
        served = repository.get(model, version)
        return {
            "name": served.name,
            "versions": [str(v) for v in repository.versions(served.name)],
            "platform": "onnxruntime_onnx",
            "inputs": [_tensor_meta(t) for t in served.inputs],
            "outputs": [_tensor_meta(t) for t in served.outputs],
        }

    def model_ready(model: str, version: str = "") -> JSONResponse:
        try:
            served = repository.get(model, version)
        except ImgclfError as exc:
            body = {"name": model, "version": version, "ready": False, "error": str(exc)}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"name": model, "version": str(served.version), "ready": True})

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> list[dict[str, str]]:
        body = await _read_body(request, 64 * 1024)
        try:
            options = parse_json(body) if body.strip() else {}
        except JSONBodyError as exc:
            raise InputError(f"repository index request is not valid JSON ({exc})") from exc
        ready_only = isinstance(options, dict) and options.get("ready") is True
        return [
            {"name": row.name, "version": str(row.version), "state": row.state}
            | ({"reason": row.reason} if row.reason else {})
            for row in repository.index()
            if row.state == "READY" or not ready_only
        ]

    def model_config(model: str, version: str = "") -> dict[str, Any]:
        served = repository.get(model, version)
        result: dict[str, Any] = json_format.MessageToDict(
            served.config, preserving_proto_field_name=True
        )
        return result

    def model_stats(model: str, version: str = "") -> dict[str, Any]:
        served = repository.get(model, version)
        response = service_pb2.ModelStatisticsResponse()
        statistics_message(served, response.model_stats.add())
        result: dict[str, Any] = json_format.MessageToDict(
            response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return result

    async def infer(request: Request, model: str, version: str = "") -> Response:
        body = await _read_body(request, max_body_bytes)
        served = repository.get(model, version)
        header, inputs, requested, binary = _parse_infer(request, body)
        outputs = await run_in_threadpool(served.infer, inputs, requested)
        reply: dict[str, Any] = {"model_name": served.name, "model_version": str(served.version)}
        if "id" in header:
            reply["id"] = header["id"]
        return _infer_response(reply, outputs, binary)

    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.add_api_route(prefix, model_metadata, methods=["GET"])
        app.add_api_route(prefix + "/ready", model_ready, methods=["GET"])
        app.add_api_route(prefix + "/config", model_config, methods=["GET"])
        app.add_api_route(prefix + "/stats", model_stats, methods=["GET"])
        app.add_api_route(prefix + "/infer", infer, methods=["POST"])
    app.include_router(tfserving_router(repository, _read_body, max_body_bytes))
    return app


def _tensor_meta(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in _WBITS:
        raise UnsupportedMediaError(
            f"Content-Encoding {encoding!r} is not supported; use gzip or deflate"
        )
    return await run_in_threadpool(decompress_capped, body, encoding, limit)


#: zlib window bits per Content-Encoding: gzip framing, zlib framing ("deflate" in HTTP).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_CHUNK = 1 << 20


def decompress_capped(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate body, stopping as soon as the output exceeds ``limit``.

    Output is produced 1 MiB at a time (``max_length``), so a small body that expands to
    gigabytes (a "zip bomb") costs at most ``limit`` bytes of memory before it is refused.
    Concatenated gzip members are decompressed one after another, as ``gzip.decompress`` does.

    Raises:
        ImageTooLargeError: The decompressed body exceeds ``limit``.
        InputError: The body is not valid or complete ``encoding`` data.
    """
    out = bytearray()
    data = body
    while True:
        inflater = zlib.decompressobj(_WBITS[encoding])
        try:
            while not inflater.eof:
                chunk = inflater.decompress(data, min(_CHUNK, limit + 1 - len(out)))
                out += chunk
                if len(out) > limit:
                    raise _too_large(limit, "decompressed ")
                data = inflater.unconsumed_tail
                if not data and not chunk and not inflater.eof:
                    raise InputError(f"request body is truncated {encoding} data")
        except zlib.error as exc:
            raise InputError(f"request body is not valid {encoding} data ({exc})") from exc
        data = inflater.unused_data
        if not data.strip(b"\0"):  # gzip allows zero padding after the last member
            return bytes(out)
        if encoding == "deflate":
            raise InputError("request body has data after the end of the deflate stream")


def _too_large(limit: int, what: str = "") -> ImageTooLargeError:
    return ImageTooLargeError(f"{what}request body exceeds {limit} bytes; send smaller batches")


#: V2 shapes are int64 dimensions.
_Dim = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]


class _InputTensor(BaseModel):
    """One entry of ``inputs``: data as JSON ``data`` or as ``binary_data_size`` raw bytes."""

    name: StrictStr
    datatype: StrictStr
    shape: list[_Dim] = Field(max_length=32)
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class _OutputTensor(BaseModel):
    """One entry of ``outputs``."""

    name: StrictStr
    parameters: dict[str, Any] = Field(default_factory=dict)


class _InferRequest(BaseModel):
    """The JSON header of a V2 inference request (fields other than these are ignored)."""

    id: StrictStr | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[_InputTensor]
    outputs: list[_OutputTensor] = Field(default_factory=list)


def _parse_infer(
    request: Request, body: bytes
) -> tuple[dict[str, Any], dict[str, np.ndarray], list[RequestedOutput], set[str]]:
    length = _header_length(request.headers.get(HEADER_LENGTH), len(body))
    try:
        header = parse_json(body[:length])
    except JSONBodyError as exc:
        raise InputError(f"inference request is not valid JSON ({exc})") from exc
    try:
        parsed = _InferRequest.model_validate(header)
    except ValidationError as exc:
        problems = describe_errors(
            exc.errors(include_url=False, include_input=False),
            limit=3,
            unnamed="request",
            more="more",
        )
        raise InputError(f"invalid inference request: {problems}") from exc
    inputs = _decode_json_inputs(parsed.inputs, memoryview(body)[length:])
    binary_default = bool(parsed.parameters.get("binary_data_output", False))
    requested: list[RequestedOutput] = []
    binary: set[str] = set()
    for item in parsed.outputs:
        count = item.parameters.get("classification", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InputError(f"classification must be a non-negative integer, got {count!r}")
        requested.append(RequestedOutput(item.name, count))
        if item.parameters.get("binary_data", binary_default):
            binary.add(item.name)
    if not requested and binary_default:
        binary.add("*")
    return {"id": parsed.id} if parsed.id is not None else {}, inputs, requested, binary


def _header_length(text: str | None, body_length: int) -> int:
    if text is None:
        return body_length
    if not (text.isascii() and text.isdigit() and len(text) < 20 and int(text) <= body_length):
        raise InputError(
            f"{HEADER_LENGTH} must be the JSON header's length in bytes (at most the body's "
            f"{body_length}), got {text[:40]!r}"
        )
    return int(text)


def _decode_json_inputs(items: list[_InputTensor], payload: memoryview) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        name, datatype, shape = item.name, item.datatype, item.shape
        dtype = V2_DTYPES.get(datatype)
        if dtype is None:
            raise InputError(
                f"input {name!r}: datatype {datatype!r} is not accepted; use FP32/UINT8"
            )
        size = item.parameters.get("binary_data_size")
        if size is not None and (
            isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(payload)
        ):
            raise InputError(
                f"input {name!r}: binary_data_size must be an integer between 0 and the "
                f"{len(payload)} bytes after the JSON header, got {str(size)[:40]}"
            )
        try:
            if size is not None:
                if offset + size > len(payload):
                    raise InputError(f"input {name!r}: binary data ends past the request body")
                flat = np.frombuffer(payload[offset : offset + size], dtype=dtype)
                offset += size
            elif "data" in item.model_fields_set:
                flat = np.asarray(item.data, dtype=dtype).reshape(-1)
            else:
                raise InputError(f'input {name!r} has neither "data" nor binary_data_size')
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            if isinstance(exc, InputError):
                raise
            reason = str(exc)[:200]
            raise InputError(
                f"input {name!r}: data cannot be read as {datatype} ({reason})"
            ) from exc
        arrays[name] = reshape(flat, shape, name)
    return arrays


def _infer_response(
    reply: dict[str, Any], outputs: list[OutputTensor], binary: set[str]
) -> Response:
    chunks: list[bytes] = []
    reply["outputs"] = []
    for output in outputs:
        meta: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if output.name in binary or "*" in binary:
            data = tensor_bytes(output)
            meta["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        elif output.datatype == "BYTES":
            meta["data"] = [item.decode("utf-8") for item in output.array.reshape(-1).tolist()]
        else:
            meta["data"] = output.array.reshape(-1).tolist()
        reply["outputs"].append(meta)
    header = json.dumps(reply).encode("utf-8")
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
