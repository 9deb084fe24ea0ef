"""Gateway mode: an :class:`~imgclf.serving.backend.InferenceBackend` backed by a V2 model server.

The REST app decodes, resizes and crops images as usual, then :class:`RemoteBackend` sends the
uint8 pixels over the Open Inference Protocol (gRPC, ``inference.GRPCInferenceService``) to
``imgclf model-server``, or to NVIDIA Triton / KServe serving a repository written by
``imgclf export --format triton``.

What the gateway learns from the server at start-up, all through standard V2 calls:

- ``ModelConfig``: labels and preprocessing, from the config parameters ``imgclf.labels`` and
  ``imgclf.preprocessing`` that the export writes into ``config.pbtxt``; ``max_batch_size``, so
  larger batches are split instead of refused.
- ``ModelMetadata``: the tensors. If the server offers the UINT8 ``pixels`` input (imgclf's model
  server does), pixels are sent as they are, 4x smaller than float32; otherwise (plain Triton)
  they are normalised here and sent as the model's FP32 input. ``probabilities`` is requested when
  offered, else the logits are turned into probabilities here.
- ``RepositoryIndex``: which model to use when ``model_name`` is not given (the only one served).

Failures raise a :class:`~imgclf.errors.ModelServerError` saying which kind (the REST app's
status in brackets): unreachable or not ready -> ``ModelServerUnavailableError`` [503] (after
``retries`` retries with backoff, all within the deadline), too slow ->
``ModelServerTimeoutError`` [504] (deadline ``timeout_s`` per call), anything else the server
answers that the gateway cannot use (errors, malformed responses) -> ``ModelServerError``
[502]. Only UNAVAILABLE is retried: inference is idempotent, but a timeout or a rejection would
only repeat. Their messages reach
clients, so they never name the model server's address or repeat gRPC's details (which do);
those are logged as a warning instead.

Finding the model server is left to gRPC itself (:func:`channel_options`): ``grpc://host:port``
becomes the target ``dns:///host:port``, and the ``round_robin`` policy keeps a connection to
every address the name resolves to (every container of a Compose service, every pod behind a
headless Kubernetes Service) and spreads requests over them. When a connection drops, the name
is resolved again, at most once a second instead of gRPC's default 30 s, so a model server that
restarts on a new IP address is found in about a second; reconnection backoff is capped at 0.5 s
and keepalive pings find a peer that vanished without closing its connections.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from imgclf.errors import (
    ConfigError,
    InputError,
    ModelServerError,
    ModelServerTimeoutError,
    ModelServerUnavailableError,
)
from imgclf.model_repository import (
    LABELS_PARAMETER,
    PIXELS_INPUT,
    PREPROCESSING_PARAMETER,
    PROBABILITIES_OUTPUT,
    read_parameters,
)
from imgclf.preprocessing import PreprocessConfig, normalize

logger = logging.getLogger(__name__)

#: 64 MiB, matching the model server: gRPC's 4 MiB default is exceeded by 8 FP32 224px images.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Keepalive ping interval; the model server accepts pings this often (``server_options``).
KEEPALIVE_TIME_MS = 10_000


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Channel arguments of the gateway: message limits, balancing, re-resolution, keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A connection to every address of the name, requests spread over them (default:
        # pick_first, which pins the gateway to one model server).
        ("grpc.lb_policy_name", "round_robin"),
        # Re-resolve the name at most once a second when a connection drops (default 30 s: a
        # server restarted on a new IP stayed unreachable for up to half a minute).
        ("grpc.dns_min_time_between_resolutions_ms", 1000),
        # Reconnect within 0.5 s once a restarted model server is back (default: up to 120 s).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 500),
        # Find a peer that vanished without closing the connection (node lost, network cut).
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


@dataclass(frozen=True)
class RemoteModel:
    """What the gateway knows about the model it forwards to."""

    name: str
    version: str
    labels: list[str]
    preprocess: PreprocessConfig
    input_name: str
    input_datatype: str
    output_name: str
    output_is_probabilities: bool
    max_batch_size: int


class RemoteBackend:
    """Forwards preprocessed batches to a V2 gRPC model server. Thread-safe.

    Use :meth:`from_url`; the constructor takes an already open channel (tests inject one).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        target: str,
        timeout_s: float = 5.0,
        retries: int = 2,
        model_name: str | None = None,
    ) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ConfigError("timeout_s must be > 0 and retries >= 0")
        self.target = target
        self.timeout_s = timeout_s
        self.retries = retries
        self._channel = channel
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._lock = threading.Lock()
        self._model = self._discover(model_name)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        model_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        wait_s: float = 30.0,
    ) -> RemoteBackend:
        """Connect to ``grpc://host:port`` and learn the model's labels and preprocessing.

        Args:
            url: Model server address, ``grpc://host:port``; every address ``host`` resolves to
                gets requests in turn.
            timeout_s: Deadline of each call to the model server, retries included.
            retries: Extra attempts when the server is unavailable, with exponential backoff.
            model_name: Model to use; None picks the only model the server serves.
            max_message_bytes: Largest message sent or received.
            wait_s: How long to wait for the model server to come up at start-up.

        Raises:
            ConfigError: A malformed URL, or a server whose model cannot be used.
            ModelServerUnavailableError: The server did not answer within ``wait_s``.
        """
        return cls.from_target(
            parse_grpc_url(url),
            timeout_s=timeout_s,
            retries=retries,
            model_name=model_name,
            max_message_bytes=max_message_bytes,
            wait_s=wait_s,
        )

    @classmethod
    def from_target(
        cls,
        target: str,
        *,
        timeout_s: float = 5.0,
        retries: int = 2,
        model_name: str | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        wait_s: float = 30.0,
    ) -> RemoteBackend:
        """Like :meth:`from_url`, for any gRPC target (``dns://DNS-SERVER/host:port``, ...)."""
        channel = grpc.insecure_channel(target, options=channel_options(max_message_bytes))
        try:
            grpc.channel_ready_future(channel).result(timeout=wait_s)
        except grpc.FutureTimeoutError:
            channel.close()
            raise ModelServerUnavailableError(
                f"model server {target} did not answer within {wait_s:g} s; is it running?"
            ) from None
        try:
            return cls(
                channel,
                target=target,
                timeout_s=timeout_s,
                retries=retries,
                model_name=model_name,
            )
        except BaseException:
            channel.close()
            raise

    @property
    def labels(self) -> list[str]:
        """Class names in output order, as the model server's config declares them."""
        return self._model.labels

    @property
    def preprocess_config(self) -> PreprocessConfig:
        """Preprocessing the remote model expects."""
        return self._model.preprocess

    @property
    def model_name(self) -> str:
        """Name of the remote model."""
        return self._model.name

    @property
    def model_version(self) -> str:
        """Version that answered the most recent request (the latest at start-up)."""
        return self._model.version

    @property
    def remote_model(self) -> RemoteModel:
        """Everything learned about the remote model."""
        return self._model

    def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` for uint8 pixels ``(N, H, W, 3)``, computed remotely.

        Raises:
            InputError: The pixels do not have the model's shape or dtype.
            ModelServerError: Unusable answer; its subclasses: unavailable, too slow.
        """
        model = self._model
        size = model.preprocess.input_size
        if pixels.dtype != np.uint8 or pixels.shape[1:] != (size, size, 3):
            raise InputError(f"expected uint8 pixels (N, {size}, {size}, 3), got {pixels.shape}")
        step = model.max_batch_size or len(pixels) or 1
        parts = [
            self._infer_chunk(model, pixels[i : i + step]) for i in range(0, len(pixels), step)
        ]
        if not parts:
            return np.zeros((0, len(model.labels)), dtype=np.float32)
        return np.concatenate(parts)

    def is_ready(self) -> bool:
        """True when the model server says the model is ready (asked now, 1 s at most)."""
        request = service_pb2.ModelReadyRequest(name=self._model.name)
        try:
            response = self._stub.ModelReady(request, timeout=min(1.0, self.timeout_s))
        except grpc.RpcError:
            return False
        return bool(response.ready)

    def close(self) -> None:
        """Close the gRPC channel."""
        self._channel.close()

    def _infer_chunk(self, model: RemoteModel, pixels: np.ndarray) -> np.ndarray:
        request = service_pb2.ModelInferRequest(model_name=model.name)
        if model.input_datatype == "UINT8":
            data = np.ascontiguousarray(pixels)
        else:
            data = normalize(pixels, model.preprocess)
        request.inputs.add(name=model.input_name, datatype=model.input_datatype, shape=data.shape)
        request.raw_input_contents.append(data.tobytes())
        request.outputs.add(name=model.output_name)
        response = self._call("ModelInfer", request)
        probs = _read_output(response, model, len(pixels))
        if response.model_version and response.model_version != model.version:
            self._on_new_version(response.model_version)
        return probs

    def _on_new_version(self, version: str) -> None:
        logger.info("model server now answers with %s version %s", self._model.name, version)
        try:
            model = self._describe(self._model.name)
        except (ModelServerError, ConfigError) as exc:
            logger.warning("could not refresh the model description: %s", exc)
            return
        with self._lock:
            self._model = model

    def _call(self, method: str, request: Any, *, for_operator: bool = False) -> Any:
        """One unary call with a deadline; UNAVAILABLE is retried with exponential backoff.

        ``for_operator`` calls (start-up discovery, refreshing the model description) fail with
        the server's address and details; the others' errors reach clients and name neither.
        """
        deadline = time.monotonic() + self.timeout_s
        rpc = getattr(self._stub, method)
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            try:
                return rpc(request, timeout=max(remaining, 0.001))
            except grpc.RpcError as exc:
                code = exc.code()
                backoff = min(0.05 * 2**attempt, 1.0)
                last = attempt == self.retries or time.monotonic() + backoff >= deadline
                if code != grpc.StatusCode.UNAVAILABLE or last:
                    error = _to_model_server_error(
                        exc, self.target, method, self.timeout_s, for_operator=for_operator
                    )
                    raise error from None  # the gRPC error names addresses: logged, not chained
                time.sleep(backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _discover(self, model_name: str | None) -> RemoteModel:
        if model_name is None:
            index = self._call(
                "RepositoryIndex", service_pb2.RepositoryIndexRequest(ready=True), for_operator=True
            )
            names = sorted({m.name for m in index.models})
            if len(names) != 1:
                raise ConfigError(
                    f"model server {self.target} serves {names or 'no models'}; "
                    "choose one with model_name"
                )
            model_name = names[0]
        return self._describe(model_name)

    def _describe(self, name: str) -> RemoteModel:
        request = service_pb2.ModelMetadataRequest(name=name)
        metadata = self._call("ModelMetadata", request, for_operator=True)
        request = service_pb2.ModelConfigRequest(name=name)
        config = self._call("ModelConfig", request, for_operator=True).config
        return describe_model(metadata, config, self.target)


def describe_model(metadata: Any, config: Any, target: str) -> RemoteModel:
    """Build a :class:`RemoteModel` from ``ModelMetadata`` and ``ModelConfig`` responses.

    Raises:
        ConfigError: The model lacks the parameters or tensors the gateway needs.
    """
    params = config.parameters
    missing = [key for key in (LABELS_PARAMETER, PREPROCESSING_PARAMETER) if key not in params]
    if missing:
        raise ConfigError(
            f"model {metadata.name!r} on {target} has no {missing} config parameters; export its "
            "repository with `imgclf export BUNDLE --format triton`"
        )
    labels, preprocess = read_parameters({key: params[key].string_value for key in params})
    assert labels is not None and preprocess is not None  # both checked present above
    inputs = {t.name: t for t in metadata.inputs}
    if PIXELS_INPUT in inputs and inputs[PIXELS_INPUT].datatype == "UINT8":
        input_name, datatype = PIXELS_INPUT, "UINT8"
    else:
        fp32 = [t for t in metadata.inputs if t.datatype == "FP32"]
        if not fp32:
            raise ConfigError(f"model {metadata.name!r} on {target} has no FP32 or UINT8 input")
        input_name, datatype = fp32[0].name, "FP32"
    outputs = [t.name for t in metadata.outputs]
    if not outputs:
        raise ConfigError(f"model {metadata.name!r} on {target} declares no outputs")
    use_probs = PROBABILITIES_OUTPUT in outputs
    return RemoteModel(
        name=metadata.name,
        version=max(metadata.versions, key=lambda v: int(v) if v.isdigit() else -1, default=""),
        labels=labels,
        preprocess=preprocess,
        input_name=input_name,
        input_datatype=datatype,
        output_name=PROBABILITIES_OUTPUT if use_probs else outputs[0],
        output_is_probabilities=use_probs,
        max_batch_size=int(config.max_batch_size),
    )


def _read_output(response: Any, model: RemoteModel, rows: int) -> np.ndarray:
    index = next((i for i, o in enumerate(response.outputs) if o.name == model.output_name), None)
    if index is None or index >= len(response.raw_output_contents):
        raise ModelServerError(f"model server answered without output {model.output_name!r}")
    tensor = response.outputs[index]
    expected = (rows, len(model.labels))
    raw = response.raw_output_contents[index]
    if (
        tensor.datatype != "FP32"
        or tuple(tensor.shape) != expected
        or len(raw) != 4 * rows * expected[1]
    ):
        raise ModelServerError(
            f"model server answered {tensor.datatype} {list(tensor.shape)} ({len(raw)} bytes) for "
            f"{model.output_name!r}, expected FP32 {list(expected)}"
        )
    values = np.frombuffer(raw, dtype="<f4").reshape(expected).astype(np.float32)
    if model.output_is_probabilities:
        return values
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    probs: np.ndarray = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs


def _to_model_server_error(
    exc: grpc.RpcError, target: str, method: str, timeout_s: float, *, for_operator: bool = False
) -> ModelServerError:
    """The error for a failed call; for clients, the address and gRPC details go to the log.

    gRPC details name addresses (``ipv4:10.0.3.7:8001``) and the model server's internals, which
    clients must not see: they get the status and a generic reason. ``for_operator`` errors
    (start-up) keep both, as they are what an operator needs to fix the setup.
    """
    code = exc.code()
    details = exc.details()
    logger.warning("model server %s: %s failed: %s %s", target, method, code.name, details)
    kind: type[ModelServerError] = ModelServerError
    message = f"the model server failed to answer ({code.name})"
    if code == grpc.StatusCode.UNAVAILABLE:
        kind, message = (
            ModelServerUnavailableError,
            "the model server is unavailable; retry shortly",
        )
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        kind = ModelServerTimeoutError
        message = f"the model server did not answer within {timeout_s:g} s"
    if for_operator:
        message = f"{message}: {method} on {target}: {details}"
    return kind(message)


def parse_grpc_url(url: str) -> str:
    """``grpc://host:port`` -> the gRPC target ``dns:///host:port``.

    Raises:
        ConfigError: Not a ``grpc://`` URL with a host and a port.
    """
    parts = urlsplit(url if "://" in url else f"grpc://{url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ConfigError(f"model server URL must look like grpc://HOST:PORT, got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"dns:///{host}:{port}"
