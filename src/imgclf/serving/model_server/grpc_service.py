"""The Open Inference Protocol (KServe V2) over gRPC: ``inference.GRPCInferenceService``.

The messages and the service come from the stubs ``tritonclient`` ships
(``tritonclient.grpc.service_pb2``), compiled from Triton's ``grpc_service.proto``; the definitions
are checked in under ``proto/``. Errors from :mod:`imgclf.errors` become status codes here only
(:data:`GRPC_STATUS`): bad names, dtypes and shapes -> ``INVALID_ARGUMENT``, unknown model or
version -> ``NOT_FOUND``, model not loaded -> ``UNAVAILABLE``.

gRPC caps messages at 4 MiB by default, which a batch of 8 FP32 224x224 images (4.8 MB) already
exceeds; the server sets both limits explicitly (:data:`DEFAULT_MAX_MESSAGE_BYTES`).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Mapping
from concurrent import futures
from types import MappingProxyType
from typing import Any, NoReturn

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from imgclf import __version__
from imgclf.errors import (
    ImgclfError,
    InputError,
    ModelNotFoundError,
    ModelNotReadyError,
    ModelServerUnavailableError,
    OverloadedError,
)
from imgclf.serving.model_server.model import (
    V2_DTYPES,
    OutputTensor,
    RequestedOutput,
    ServedModel,
)
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.status import status_for

logger = logging.getLogger(__name__)

#: 64 MiB: a batch of 64 FP32 224x224 images (38.5 MB) fits with room to spare.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_NAME = "imgclf"
#: Protocol extensions this server implements (reported by ServerMetadata).
EXTENSIONS = ("classification", "model_configuration", "binary_tensor_data")


#: Connections are closed (gracefully, GOAWAY) after about this long, so clients resolve the
#: server's name again and start sending to replicas added since they connected.
DEFAULT_MAX_CONNECTION_AGE_S = 60.0


def grpc_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Channel/server options that set both message size limits deliberately."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


def server_options(
    max_message_bytes: int, max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S
) -> list[tuple[str, int]]:
    """Server options: message limits, keepalive policy and connection age.

    The gateway sends keepalive pings every 10 s, also between calls, to notice a server that
    vanished; gRPC servers refuse pings more often than every 5 minutes by default (and close the
    connection), so this server accepts them every 5 s. ``max_connection_age_s`` (0: unlimited)
    makes clients reconnect now and then, which is when a client balancing over every address
    of a name (the gateway, ``round_robin``) learns about new replicas.
    """
    options = [
        *grpc_options(max_message_bytes),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ]
    if max_connection_age_s > 0:
        options += [
            ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", 30_000),  # in-flight calls finish first
        ]
    return options


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """V2 gRPC service over a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """The process is up."""
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Every model in the repository is loaded."""
        return service_pb2.ServerReadyResponse(ready=self._repository.is_ready())

    def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """The model (version) is loaded and can answer."""
        try:
            self._repository.get(request.name, request.version)
        except ImgclfError:
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Server name, version and extensions."""
        return service_pb2.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Versions, platform, inputs and outputs of a model."""
        model = self._get(request.name, request.version, context)
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=model.name,
            versions=[str(v) for v in self._repository.versions(model.name)],
            platform="onnxruntime_onnx",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.inputs],
            outputs=[
                tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in model.outputs
            ],
        )

    def ModelConfig(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """The model's ``config.pbtxt`` as Triton returns it (labels/preprocessing parameters)."""
        model = self._get(request.name, request.version, context)
        return service_pb2.ModelConfigResponse(config=model.config)

    def RepositoryIndex(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Model versions: READY, or UNAVAILABLE with the reason (Triton's repository extension)."""
        index = service_pb2.RepositoryIndexResponse()
        for row in self._repository.index():
            if row.state == "READY" or not request.ready:
                index.models.add(
                    name=row.name, version=str(row.version), state=row.state, reason=row.reason
                )
        return index

    def ModelStatistics(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Inference statistics of one model version, or of every loaded one (no name)."""
        response = service_pb2.ModelStatisticsResponse()
        for model in self._models_for_stats(request.name, request.version, context):
            statistics_message(model, response.model_stats.add())
        return response

    def _models_for_stats(
        self, name: str, version: str, context: grpc.ServicerContext
    ) -> list[ServedModel]:
        if name:
            return [self._get(name, version, context)]
        repo = self._repository
        return [repo.get(n, str(v)) for n in repo.model_names() for v in repo.versions(n)]

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Run inference on one request (dynamically batched with concurrent ones)."""
        model = self._get(request.model_name, request.model_version, context)
        try:
            inputs = decode_inputs(request)
            requested = [
                RequestedOutput(out.name, _class_count(out.parameters)) for out in request.outputs
            ]
            outputs = model.infer(inputs, requested)
        except ImgclfError as exc:
            _abort(context, exc)
        except Exception as exc:  # a runtime failure must reach the client as INTERNAL, with why
            logger.exception("inference on %s version %d failed", model.name, model.version)
            context.abort(grpc.StatusCode.INTERNAL, f"inference failed: {exc}")
        response = service_pb2.ModelInferResponse(
            model_name=model.name, model_version=str(model.version), id=request.id
        )
        encode_outputs(outputs, response)
        return response

    def _get(self, name: str, version: str, context: grpc.ServicerContext) -> ServedModel:
        try:
            return self._repository.get(name, version)
        except ImgclfError as exc:
            _abort(context, exc)


def statistics_message(model: ServedModel, message: Any) -> None:
    """Fill a V2 ``ModelStatistics`` message from a model's statistics."""
    snap = model.stats.snapshot()
    message.name = model.name
    message.version = str(model.version)
    message.last_inference = snap.last_inference_ms
    message.inference_count = snap.inference_count
    message.execution_count = snap.execution_count
    infer = message.inference_stats
    for target, source in (
        (infer.success, snap.success),
        (infer.fail, snap.fail),
        (infer.compute_infer, snap.compute_infer),
    ):
        target.count, target.ns = source.count, source.ns
    for size, duration in snap.batches.items():
        batch = message.batch_stats.add(batch_size=size)
        batch.compute_infer.count, batch.compute_infer.ns = duration.count, duration.ns


#: The V2 gRPC status for each core error (errors not listed are INTERNAL, and logged).
GRPC_STATUS: Mapping[type[Exception], grpc.StatusCode] = MappingProxyType(
    {
        ImgclfError: grpc.StatusCode.INTERNAL,
        InputError: grpc.StatusCode.INVALID_ARGUMENT,
        ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
        OverloadedError: grpc.StatusCode.UNAVAILABLE,
        ModelNotReadyError: grpc.StatusCode.UNAVAILABLE,
        ModelServerUnavailableError: grpc.StatusCode.UNAVAILABLE,
    }
)


def _abort(context: grpc.ServicerContext, exc: ImgclfError) -> NoReturn:
    code = status_for(exc, GRPC_STATUS, grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("inference failed: %s", exc)
    context.abort(code, str(exc))
    raise AssertionError("context.abort always raises")  # pragma: no cover


def _class_count(parameters: Any) -> int:
    if "classification" not in parameters:
        return 0
    param = parameters["classification"]
    value = getattr(param, param.WhichOneof("parameter_choice") or "int64_param")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"the classification parameter must be a positive integer, got {value!r}")
    return value


def decode_inputs(request: Any) -> dict[str, np.ndarray]:
    """Input tensors of a ``ModelInferRequest`` as numpy arrays (raw or typed contents).

    Raises:
        InputError: Unknown datatype, duplicate name, or data not matching the declared shape.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input"
        )
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in arrays:
            raise InputError(f"input {tensor.name!r} is given twice")
        dtype = V2_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise InputError(
                f"input {tensor.name!r}: datatype {tensor.datatype!r} is not accepted; "
                "send FP32 or UINT8"
            )
        shape = [int(d) for d in tensor.shape]
        if any(d < 0 for d in shape):
            raise InputError(f"input {tensor.name!r}: negative dimension in shape {shape}")
        if raw and len(raw[index]) % dtype.itemsize:
            raise InputError(
                f"input {tensor.name!r}: {len(raw[index])} raw bytes are not a whole number of "
                f"{tensor.datatype} values ({dtype.itemsize} bytes each)"
            )
        flat = np.frombuffer(raw[index], dtype=dtype) if raw else _typed_contents(tensor, dtype)
        arrays[tensor.name] = reshape(flat, shape, tensor.name)
    return arrays


def reshape(flat: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    """``flat`` in the declared V2 ``shape``, checked with exact integers (no int64 overflow).

    Raises:
        InputError: The values do not fill the shape, or numpy cannot represent it.
    """
    expected = math.prod(shape)  # Python ints: [2**32, 2**32] is 2**64, not 0
    if flat.size != expected:
        raise InputError(
            f"input {name!r}: {flat.size} values do not fill shape {shape} ({expected} values)"
        )
    try:
        return flat.reshape(shape)
    except (ValueError, OverflowError) as exc:  # e.g. more dimensions than numpy supports
        raise InputError(f"input {name!r}: shape {shape} cannot be used ({exc})") from exc


def _typed_contents(tensor: Any, dtype: np.dtype[Any]) -> np.ndarray:
    contents = tensor.contents
    if dtype.kind == "f":
        source = contents.fp64_contents if dtype == np.float64 else contents.fp32_contents
    elif dtype.kind == "u":
        source = contents.uint_contents
    else:
        source = contents.int64_contents if dtype == np.int64 else contents.int_contents
    values = np.asarray(source)
    if values.size and dtype.kind in "ui":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise InputError(f"input {tensor.name!r}: values out of range for {tensor.datatype}")
    return values.astype(dtype)


def encode_outputs(outputs: list[OutputTensor], response: Any) -> None:
    """Append outputs to a ``ModelInferResponse`` as ``raw_output_contents``."""
    for output in outputs:
        response.outputs.add(name=output.name, datatype=output.datatype, shape=output.array.shape)
        response.raw_output_contents.append(tensor_bytes(output))


def tensor_bytes(output: OutputTensor) -> bytes:
    """Raw V2 encoding: little-endian values; BYTES elements as 4-byte length + data."""
    if output.datatype == "BYTES":
        return b"".join(
            struct.pack("<I", len(item)) + item for item in output.array.reshape(-1).tolist()
        )
    return np.ascontiguousarray(output.array, dtype=output.array.dtype.newbyteorder("<")).tobytes()


def create_grpc_server(
    repository: ModelRepository,
    *,
    host: str = "127.0.0.1",
    port: int = 8001,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S,
    workers: int = 16,
) -> tuple[grpc.Server, int]:
    """Build (not start) a gRPC server for the repository; returns it and the bound port."""
    server = new_server(workers, "grpc", max_message_bytes, max_connection_age_s)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(repository), server
    )
    return server, bind(server, host, port, "gRPC")


def new_server(
    workers: int, thread_prefix: str, max_message_bytes: int, max_connection_age_s: float
) -> grpc.Server:
    """A gRPC server with :func:`server_options`, its handlers run by ``workers`` threads."""
    return grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=thread_prefix),
        options=server_options(max_message_bytes, max_connection_age_s),
    )


def bind(server: grpc.Server, host: str, port: int, what: str) -> int:
    """Listen on ``host:port`` (0: a free port) and return the port.

    Raises:
        OSError: The port cannot be bound.
    """
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the {what} port {host}:{port}; is it in use?")
    return int(bound)
