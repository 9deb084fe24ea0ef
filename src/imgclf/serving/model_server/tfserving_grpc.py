"""TensorFlow Serving's gRPC API on the model server, for ``tensorflow-serving-api`` clients.

Served on a port of its own (``imgclf model-server --tfserving-grpc-port 8500``)::

    tensorflow.serving.PredictionService/Predict           images in, probabilities out
    tensorflow.serving.PredictionService/GetModelMetadata  the signature (and, on request, labels)
    tensorflow.serving.ModelService/GetModelStatus         version states, as TF Serving reports

The messages come from TF Serving's own definitions, checked in under ``proto/tfserving/`` with
their package names (so the official client's stubs talk to this server unchanged) and compiled
into ``proto/tfserving.binpb`` by ``tools/tfserving_protos.py``. They are loaded into a private
descriptor pool, so this module needs neither TensorFlow nor generated code, and coexists with
TensorFlow's own definitions in one process.

``Predict`` takes one input tensor under any name (the model's signature calls it ``images``): a
uint8 or float ``[N, H, W, 3]`` tensor of images of any size (the pixel rule of
:mod:`imgclf.serving.tfserving`), or a string tensor ``[N]`` of encoded images. It answers
``outputs["probabilities"]``, a float ``[N, C]`` tensor in label order. Unimplemented methods
(``Classify``, ``Regress``, ``MultiInference``, ``HandleReloadConfigRequest``) answer
``UNIMPLEMENTED``, as gRPC does for any method a server does not serve.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np

from imgclf.errors import ImgclfError, InputError, ModelNotFoundError
from imgclf.image_budget import DEFAULT_MAX_PIXELS
from imgclf.model_repository import PIXELS_INPUT, PROBABILITIES_OUTPUT
from imgclf.serving import tfserving
from imgclf.serving.model_server.grpc_service import (
    DEFAULT_MAX_CONNECTION_AGE_S,
    DEFAULT_MAX_MESSAGE_BYTES,
    GRPC_STATUS,
    bind,
    new_server,
)
from imgclf.serving.model_server.model import RequestedOutput, ServedModel
from imgclf.serving.model_server.repository import ModelRepository
from imgclf.serving.status import status_for

logger = logging.getLogger(__name__)

DESCRIPTOR_SET = Path(__file__).parent / "proto" / "tfserving.binpb"
#: The TF Serving gRPC status of each core error: the V2 gRPC table, as TF Serving uses the same
#: canonical codes (NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE for a full queue or unloaded model).
TFSERVING_GRPC_STATUS: Mapping[type[Exception], grpc.StatusCode] = GRPC_STATUS
#: TensorFlow ``DataType`` numbers -> numpy dtypes and the TensorProto field of typed values.
_NUMERIC: dict[int, tuple[np.dtype[Any], str]] = {
    1: (np.dtype(np.float32), "float_val"),  # DT_FLOAT
    2: (np.dtype(np.float64), "double_val"),  # DT_DOUBLE
    3: (np.dtype(np.int32), "int_val"),  # DT_INT32
    4: (np.dtype(np.uint8), "int_val"),  # DT_UINT8
    9: (np.dtype(np.int64), "int64_val"),  # DT_INT64
}
DT_FLOAT, DT_STRING = 1, 7
_AVAILABLE, _END = 30, 50  # ModelVersionStatus.State
_UNKNOWN_ERROR = 2  # tensorflow.error.Code.UNKNOWN


class _Messages:
    """Message classes of the checked-in TF Serving definitions, from a private pool."""

    def __init__(self, path: Path) -> None:
        from google.protobuf import (  # type: ignore[import-untyped]
            descriptor_pb2,
            descriptor_pool,
            message_factory,
        )

        self._pool = descriptor_pool.DescriptorPool()
        for file in descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes()).file:
            self._pool.Add(file)
        self._factory = message_factory

    def __getattr__(self, name: str) -> Any:
        prefix = "tensorflow." if name in ("TensorProto", "TensorInfo", "SignatureDef") else ""
        full = prefix + name if prefix else f"tensorflow.serving.{name}"
        return self._factory.GetMessageClass(self._pool.FindMessageTypeByName(full))


@functools.cache
def messages() -> Any:
    """The TF Serving message classes (``messages().PredictRequest``, ...), loaded once."""
    return _Messages(DESCRIPTOR_SET)


def tensor_instances(tensor: Any) -> list[tfserving.Instance]:
    """A request's input ``TensorProto`` -> its images (encoded bytes or raw pixel arrays).

    Raises:
        InputError: Unknown rank, an unsupported dtype, values not filling the shape, or a
            shape other than ``[N, H, W, 3]`` (numbers) or ``[N]`` (strings).
    """
    shape = tensor.tensor_shape
    dims = [int(d.size) for d in shape.dim]
    if shape.unknown_rank or any(d < 0 for d in dims):
        raise InputError(f"the input tensor needs a known shape, got {dims}")
    count = math.prod(dims)
    if tensor.dtype == DT_STRING:
        values = list(tensor.string_val)
        if len(dims) > 2 or (len(dims) == 2 and dims[1] != 1) or len(values) != count:
            raise InputError(
                f"a string input must be [N] encoded images, got shape {dims} with "
                f"{len(values)} values"
            )
        return values
    array = _numeric(tensor, count)
    if len(dims) != 4 or dims[3] != 3 or 0 in dims:
        raise InputError(f"images must have shape [N, height, width, 3], got {dims}")
    batch = array.reshape(dims)
    return [tfserving.to_uint8(image, f"instance {i}") for i, image in enumerate(batch)]


def _numeric(tensor: Any, count: int) -> np.ndarray:
    known = _NUMERIC.get(tensor.dtype)
    if known is None:
        raise InputError(
            f"input dtype {tensor.dtype} is not accepted; send DT_UINT8 or DT_FLOAT images, or "
            "DT_STRING encoded images"
        )
    dtype, field = known
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != count * dtype.itemsize:
            raise InputError(
                f"tensor_content has {len(content)} bytes; the shape needs {count * dtype.itemsize}"
            )
        return np.frombuffer(content, dtype=dtype.newbyteorder("<"))
    values: np.ndarray = np.asarray(getattr(tensor, field), dtype=dtype)
    if values.size == 1 and count > 1:  # TensorFlow fills a tensor with its one value
        return np.repeat(values, count)
    if values.size != count:
        raise InputError(f"{values.size} values do not fill the input shape ({count} values)")
    return values


def probabilities(model: ServedModel, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities ``(N, C)`` of model-ready uint8 pixels: the one call into the model."""
    (output,) = model.infer({PIXELS_INPUT: pixels}, [RequestedOutput(PROBABILITIES_OUTPUT)])
    return output.array


class TFServingServicer:
    """``PredictionService`` and ``ModelService`` over a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self._repository = repository
        self._max_pixels = max_pixels

    def predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Classify the images of the request's one input tensor."""
        model = self._model(request.model_spec, context)
        try:
            tfserving.check_signature(request.model_spec.signature_name)
            if len(request.inputs) != 1:
                raise InputError(
                    f"the model takes one input ({tfserving.INPUT_NAME!r}: images), got "
                    f"{sorted(request.inputs)[:5]}"
                )
            unknown = set(request.output_filter) - {tfserving.OUTPUT_NAME}
            if unknown:
                raise InputError(
                    f"unknown output {sorted(unknown)[0]!r}; the model's output is "
                    f"{tfserving.OUTPUT_NAME!r}"
                )
            (tensor,) = request.inputs.values()
            instances = tensor_instances(tensor)
            pixels = tfserving.model_batch(instances, model.preprocess, self._max_pixels)
            probs = probabilities(model, pixels)
        except ImgclfError as exc:
            abort(context, exc)
        response = messages().PredictResponse()
        _fill_spec(response.model_spec, model)
        _fill_tensor(response.outputs[tfserving.OUTPUT_NAME], probs)
        return response

    def get_model_metadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        """The ``serving_default`` signature; ``labels`` too if asked for in metadata_field."""
        model = self._model(request.model_spec, context)
        fields = list(request.metadata_field)
        unsupported = set(fields) - {"signature_def", "labels"}
        if not fields or unsupported:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Metadata field {sorted(unsupported)[:1] or fields} is not supported; ask for "
                "'signature_def' (and 'labels')",
            )
        response = messages().GetModelMetadataResponse()
        _fill_spec(response.model_spec, model)
        if "signature_def" in fields:
            _pack(response.metadata["signature_def"], _signature_map(model))
        if "labels" in fields:
            labels = messages().TensorProto(dtype=DT_STRING)
            labels.tensor_shape.dim.add(size=len(model.labels))
            labels.string_val.extend(label.encode() for label in model.labels)
            _pack(response.metadata["labels"], labels)
        return response

    def get_model_status(self, request: Any, context: grpc.ServicerContext) -> Any:
        """Every version of the model the repository selected: AVAILABLE, or END with why."""
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        rows = [
            row
            for row in self._repository.index()
            if row.name == spec.name and version in (None, row.version)
        ]
        if not rows:
            wanted = f"version {version} of " if version is not None else "any versions of "
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find {wanted}model {spec.name[:100]!r}"
            )
        response = messages().GetModelStatusResponse()
        for row in rows:
            status = response.model_version_status.add(version=row.version)
            status.state = _AVAILABLE if row.state == "READY" else _END
            if row.reason:
                status.status.error_code = _UNKNOWN_ERROR
                status.status.error_message = row.reason
        return response

    def _model(self, spec: Any, context: grpc.ServicerContext) -> ServedModel:
        try:
            if spec.WhichOneof("version_choice") == "version_label":
                raise ModelNotFoundError(
                    f"version labels are not supported (got {spec.version_label[:50]!r}); "
                    "give a version number or none for the latest"
                )
            version = str(spec.version.value) if spec.HasField("version") else ""
            return self._repository.get(spec.name, version)
        except ImgclfError as exc:
            abort(context, exc)


def abort(context: grpc.ServicerContext, exc: ImgclfError) -> NoReturn:
    """End the call with the code :data:`TFSERVING_GRPC_STATUS` gives the error."""
    code = status_for(exc, TFSERVING_GRPC_STATUS, grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.INTERNAL:
        logger.error("TF Serving request failed: %s", exc)
    context.abort(code, str(exc))
    raise AssertionError("context.abort always raises")  # pragma: no cover


def _fill_spec(spec: Any, model: ServedModel) -> None:
    spec.name = model.name
    spec.version.value = model.version
    spec.signature_name = tfserving.SIGNATURE_NAME


def _fill_tensor(tensor: Any, values: np.ndarray) -> None:
    """A float tensor with typed values (``float_val``), as TF Serving answers."""
    tensor.dtype = DT_FLOAT
    for size in values.shape:
        tensor.tensor_shape.dim.add(size=size)
    tensor.float_val.extend(values.astype(np.float32).ravel().tolist())


def _pack(target: Any, message: Any) -> None:
    target.type_url = "type.googleapis.com/" + message.DESCRIPTOR.full_name
    target.value = message.SerializeToString()


def _signature_map(model: ServedModel) -> Any:
    signature_map = messages().SignatureDefMap()
    signature = signature_map.signature_def[tfserving.SIGNATURE_NAME]
    signature.method_name = "tensorflow/serving/predict"
    images = signature.inputs[tfserving.INPUT_NAME]
    images.name, images.dtype = tfserving.INPUT_NAME, DT_FLOAT
    for size in (-1, -1, -1, 3):
        images.tensor_shape.dim.add(size=size)
    probs = signature.outputs[tfserving.OUTPUT_NAME]
    probs.name, probs.dtype = tfserving.OUTPUT_NAME, DT_FLOAT
    for size in (-1, len(model.labels)):
        probs.tensor_shape.dim.add(size=size)
    return signature_map


def _handler(method: Callable[..., Any], request: str, response: str) -> Any:
    return grpc.unary_unary_rpc_method_handler(
        method,
        request_deserializer=getattr(messages(), request).FromString,
        response_serializer=getattr(messages(), response).SerializeToString,
    )


def create_tfserving_server(
    repository: ModelRepository,
    *,
    host: str = "127.0.0.1",
    port: int = 8500,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    max_connection_age_s: float = DEFAULT_MAX_CONNECTION_AGE_S,
    workers: int = 16,
) -> tuple[grpc.Server, int]:
    """Build (not start) the TF Serving gRPC server; returns it and the bound port."""
    servicer = TFServingServicer(repository)
    server = new_server(workers, "tfs-grpc", max_message_bytes, max_connection_age_s)
    prediction = {
        "Predict": _handler(servicer.predict, "PredictRequest", "PredictResponse"),
        "GetModelMetadata": _handler(
            servicer.get_model_metadata, "GetModelMetadataRequest", "GetModelMetadataResponse"
        ),
    }
    status = {
        "GetModelStatus": _handler(
            servicer.get_model_status, "GetModelStatusRequest", "GetModelStatusResponse"
        )
    }
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "tensorflow.serving.PredictionService", prediction
            ),
            grpc.method_handlers_generic_handler("tensorflow.serving.ModelService", status),
        )
    )
    return server, bind(server, host, port, "TF Serving gRPC")
