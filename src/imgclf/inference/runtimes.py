"""Runtimes that execute an exported artifact: ONNX Runtime and the LiteRT interpreter.

Each runtime takes a float32 ``(N, 3, H, W)`` batch and returns ``(N, C)`` logits. Which one runs an
artifact is decided by the artifact's ``format`` in the manifest, through :data:`RUNTIMES`. The
runtime libraries are imported when a model is opened, never at import time.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgclf.errors import BundleError, ConfigError


class Runtime(Protocol):
    """A loaded model that maps normalised NCHW float32 batches to logits. Thread-safe."""

    #: Static input side (H == W) the model declares, or None when it is dynamic.
    input_size: int | None

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` for a float32 ``(N, 3, H, W)`` batch."""
        ...


def _static_side(shape: list[Any]) -> int | None:
    side = shape[-1] if len(shape) == 4 else None
    return side if isinstance(side, int) and side > 0 else None


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
            threads: Intra-op threads; None lets ONNX Runtime use one per physical core.
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
            raise BundleError(f"{path}: ONNX Runtime cannot load this model ({exc})") from exc
        inputs = self._session.get_inputs()
        self._input = input_name or inputs[0].name
        self._output = output_name or self._session.get_outputs()[0].name
        self.input_size = _static_side(list(inputs[0].shape))

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
            raise BundleError(f"{path}: LiteRT cannot load this model ({exc})") from exc
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self.input_size = _static_side([int(v) for v in self._input["shape"]])
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

    Raises:
        ConfigError: ``threads`` is below 1, or no runtime handles ``artifact_format``.
        BundleError: The runtime cannot load the file.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    factory = RUNTIMES.get(artifact_format)
    if factory is None:
        raise ConfigError(
            f"no inference runtime for {artifact_format!r} artifacts; runnable formats: "
            f"{', '.join(sorted(RUNTIMES))} (export one with `imgclf export --format onnx`)"
        )
    return factory(path, threads=threads, input_name=input_name, output_name=output_name)
