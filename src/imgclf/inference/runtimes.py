"""Runtimes that execute an exported artifact: ONNX Runtime and the LiteRT interpreter.

Each runtime takes a float32 ``(N, 3, H, W)`` batch and returns ``(N, C)`` logits. Which one runs an
artifact is decided by the artifact's ``format`` in the manifest, through :data:`RUNTIMES`. The
runtime libraries are imported when a model is opened, never at import time.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.errors import BundleError, ConfigError
from imgclf.inference.cpus import available_cpus

#: ONNX Runtime's tensor type names -> numpy dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


@dataclass(frozen=True)
class Signature:
    """The input a runtime feeds and the output it reads (``-1`` marks a dynamic dimension).

    Attributes:
        input_name: Graph input fed with the batch.
        input_dtype: Its numpy dtype name (``float32`` for every model imgclf exports).
        input_shape: Its declared shape, e.g. ``(-1, 3, 224, 224)``.
        output_name: Graph output returned as logits.
        output_shape: Its declared shape, e.g. ``(-1, 10)``.
    """

    input_name: str
    input_dtype: str
    input_shape: tuple[int, ...]
    output_name: str
    output_shape: tuple[int, ...]


class Runtime(Protocol):
    """A loaded model that maps normalised NCHW float32 batches to logits. Thread-safe."""

    #: Static input side (H == W) the model declares, or None when it is dynamic.
    input_size: int | None
    #: What the model takes and returns, as declared in the file.
    signature: Signature

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` for a float32 ``(N, 3, H, W)`` batch."""
        ...


def _static_side(shape: list[Any]) -> int | None:
    side = shape[-1] if len(shape) == 4 else None
    return side if isinstance(side, int) and side > 0 else None


def _dims(shape: list[Any]) -> tuple[int, ...]:
    """A declared shape with symbolic or unknown dimensions as -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxRuntimeModel:
    """An ONNX model run by ONNX Runtime's CPU provider with all graph optimisations on."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        input_name: str | None = None,
        output_name: str | None = None,
    ) -> None:
        """Open ``path`` in an inference session.

        Args:
            path: The ``.onnx`` file.
            threads: Intra-op threads; None lets ONNX Runtime use one per physical core
                (:func:`open_runtime` always decides it).
            input_name: Graph input to feed (default: the first one).
            output_name: Graph output to read (default: the first one).

        Raises:
            BundleError: The file is not a loadable ONNX model.
        """
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: warnings about unused initialisers are noise
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise BundleError(f"{path}: ONNX Runtime cannot load the model ({exc})") from exc
        inputs = {node.name: node for node in self._session.get_inputs()}
        outputs = {node.name: node for node in self._session.get_outputs()}
        self._input = input_name or next(iter(inputs))
        self._output = output_name or next(iter(outputs))
        if self._input not in inputs or self._output not in outputs:
            raise BundleError(
                f"{path}: no input {self._input!r} or output {self._output!r}; the model has "
                f"inputs {sorted(inputs)} and outputs {sorted(outputs)}"
            )
        node = inputs[self._input]
        self.input_size = _static_side(list(node.shape))
        self.signature = Signature(
            self._input,
            _ORT_DTYPES.get(node.type, node.type),
            _dims(list(node.shape)),
            self._output,
            _dims(list(outputs[self._output].shape)),
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch (ONNX Runtime sessions are thread-safe)."""
        (logits,) = self._session.run([self._output], {self._input: batch})
        return np.asarray(logits)


class LiteRtModel:
    """A ``.tflite`` model run by the LiteRT interpreter (``ai-edge-litert``)."""

    def __init__(self, path: Path, *, threads: int | None = None, **_: Any) -> None:
        """Open ``path`` in a LiteRT interpreter.

        Raises:
            ConfigError: ``ai-edge-litert`` is not installed.
            BundleError: The file is not a loadable TFLite model.
        """
        try:
            interpreter_module = importlib.import_module("ai_edge_litert.interpreter")
        except ImportError as exc:
            raise ConfigError(
                "running .tflite models needs the 'tflite' extra: pip install 'imgclf[tflite]'"
            ) from exc
        try:
            self._interpreter = interpreter_module.Interpreter(
                model_path=str(path), num_threads=threads
            )
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: LiteRT cannot load the model ({exc})") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_size = _static_side([int(v) for v in self._input["shape"]])
        self.signature = Signature(
            str(self._input["name"]),
            np.dtype(self._input["dtype"]).name,
            _dims([int(v) for v in self._input["shape"]]),
            str(self._output["name"]),
            _dims([int(v) for v in self._output["shape"]]),
        )
        self._batch = int(self._input["shape"][0])
        # One interpreter holds one set of tensors: calls must not interleave.
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits for a float32 NCHW batch; resizes the interpreter when the batch size changes."""
        with self._lock:
            if batch.shape[0] != self._batch:
                self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
                self._interpreter.allocate_tensors()
                self._batch = batch.shape[0]
            self._interpreter.set_tensor(self._input["index"], batch)
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._output["index"]))


RuntimeFactory = Callable[..., Runtime]

#: Artifact ``format`` (as recorded in the manifest) -> runtime that executes it.
RUNTIMES: dict[str, RuntimeFactory] = {
    "onnx": OnnxRuntimeModel,
    "tflite": LiteRtModel,
}


def open_runtime(
    path: Path,
    artifact_format: str,
    *,
    threads: int | None = None,
    input_name: str | None = None,
    output_name: str | None = None,
) -> Runtime:
    """Open an artifact with the runtime registered for its format.

    Every runtime is opened here, so session options and thread counts are decided in one place.

    Args:
        path: The artifact file.
        artifact_format: Its format as the manifest records it (a key of :data:`RUNTIMES`).
        threads: Intra-op threads; None: the CPUs this process may use (the cgroup quota in a
            container, then its CPU affinity; :func:`imgclf.inference.cpus.available_cpus`).
        input_name: Graph input to feed (default: the first one).
        output_name: Graph output to read (default: the first one).

    Raises:
        ConfigError: ``threads`` is below 1, or no runtime handles ``artifact_format``.
        BundleError: The runtime cannot load the file.
    """
    if threads is None:
        threads = available_cpus().cpus
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    factory = RUNTIMES.get(artifact_format)
    if factory is None:
        raise ConfigError(
            f"no inference runtime for {artifact_format!r} artifacts; runnable formats: "
            f"{', '.join(sorted(RUNTIMES))} (export one with `imgclf export --format onnx`)"
        )
    return factory(path, threads=threads, input_name=input_name, output_name=output_name)
