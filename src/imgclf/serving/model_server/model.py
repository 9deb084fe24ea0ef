"""One served model version: a protocol adapter over the inference core (tensor in, tensor out).

The model runs in the core's ONNX Runtime layer (:mod:`imgclf.inference.runtimes`, session options
and threads decided there) behind the core's batcher (:mod:`imgclf.inference.batching`, with
Triton's rule of waiting up to the configured queue delay for a batch to fill); probabilities are
the core's softmax. This module only maps V2 tensors onto it.

A model version accepts either of two inputs (exactly one per request):

- the ONNX model's own input (``input``), FP32 ``(N, 3, H, W)`` normalised with the model's
  mean/std, exactly what Triton would accept for the same repository;
- ``pixels``, UINT8 ``(N, H, W, 3)`` resized and cropped pixels, normalised here with the
  repository's preprocessing (4x smaller on the wire than FP32).

It returns the ONNX output (``logits``) and ``probabilities`` (softmax), both FP32 ``(N, C)``, and
supports the classification extension: asking for an output with ``classification = k`` returns
BYTES ``(N, k)`` strings ``"<score>:<index>:<label>"``, highest first, as Triton does.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.errors import BundleError, InputError
from imgclf.inference.batching import Batcher
from imgclf.inference.cpus import plan_cpus
from imgclf.inference.predictions import softmax
from imgclf.inference.runtimes import Runtime, open_runtime
from imgclf.model_repository import (
    METADATA_NAME,
    PIXELS_INPUT,
    PROBABILITIES_OUTPUT,
    read_parameters,
)
from imgclf.preprocessing import PreprocessConfig, normalize
from imgclf.serving.model_server.stats import ModelStats

logger = logging.getLogger(__name__)

#: V2 protocol data types <-> numpy dtypes for the tensors this server exchanges.
V2_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "UINT8": np.dtype(np.uint8),
    "FP64": np.dtype(np.float64),
    "INT64": np.dtype(np.int64),
    "INT32": np.dtype(np.int32),
    "FP16": np.dtype(np.float16),
    "INT8": np.dtype(np.int8),
}


@dataclass(frozen=True)
class TensorMetadata:
    """A tensor as V2 model metadata describes it (``-1`` marks the dynamic batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for; ``class_count > 0`` asks for top-k label strings."""

    name: str
    class_count: int = 0


@dataclass(frozen=True)
class OutputTensor:
    """One output of an inference: FP32 arrays, or BYTES as a numpy object array of bytes."""

    name: str
    datatype: str
    array: np.ndarray


class ServedModel:
    """A loaded model version. Thread-safe; :meth:`close` drains pending requests."""

    def __init__(
        self,
        *,
        name: str,
        version: int,
        config: Any,
        runtime: Runtime,
        labels: list[str],
        preprocess: PreprocessConfig,
    ) -> None:
        self.name = name
        self.version = version
        self.config = config
        self.labels = labels
        self.preprocess = preprocess
        self._runtime = runtime
        self.stats = ModelStats()
        self.input_name: str = runtime.signature.input_name
        self.output_name: str = runtime.signature.output_name
        self.max_batch_size: int = int(config.max_batch_size)
        size = preprocess.input_size
        self.inputs = (
            TensorMetadata(self.input_name, "FP32", (-1, 3, size, size)),
            TensorMetadata(PIXELS_INPUT, "UINT8", (-1, size, size, 3)),
        )
        classes = len(labels)
        self.outputs = (
            TensorMetadata(self.output_name, "FP32", (-1, classes)),
            TensorMetadata(PROBABILITIES_OUTPUT, "FP32", (-1, classes)),
        )
        self._batcher = Batcher(
            self._run_logits,
            max_batch_size=self.max_batch_size if config.HasField("dynamic_batching") else 1,
            max_wait_s=config.dynamic_batching.max_queue_delay_microseconds / 1e6,
            instances=instance_count(config),
            wait_when_idle=True,  # Triton's rule: the configured delay is waited for
        )

    @classmethod
    def load(
        cls, model_dir: Path, version: int, config: Any, *, threads: int | None = None
    ) -> ServedModel:
        """Load ``<model_dir>/<version>/<model file>`` with its labels and preprocessing.

        Args:
            model_dir: The model's folder in the repository.
            version: The version folder to load.
            config: The parsed ``config.pbtxt``.
            threads: Runtime threads per instance; None shares the process's CPUs equally
                among the config's instances (:func:`imgclf.inference.cpus.plan_cpus`).

        Raises:
            BundleError: The model file, labels or preprocessing are missing or unusable.
        """
        path = model_dir / str(version) / (config.default_model_filename or "model.onnx")
        if not path.is_file():
            raise BundleError(f"{path}: the model file is missing (not copied yet?)")
        if threads is None:
            threads = plan_cpus(instance_count(config)).threads
        runtime = open_runtime(path, "onnx", threads=threads)
        labels, preprocess = read_model_info(model_dir, config)
        _check_signature(runtime, labels, preprocess, path)
        return cls(
            name=config.name or model_dir.name,
            version=version,
            config=config,
            runtime=runtime,
            labels=labels,
            preprocess=preprocess,
        )

    def infer(
        self, inputs: dict[str, np.ndarray], requested: list[RequestedOutput]
    ) -> list[OutputTensor]:
        """Run one request (already decoded to numpy) through the batcher.

        Raises:
            InputError: Wrong input names, dtypes or shapes, a batch above ``max_batch_size``,
                or an unknown output.
        """
        started = time.perf_counter_ns()
        rows = 0
        try:
            batch = self._model_input(inputs)
            rows = len(batch)
            logits = self._batcher.submit(batch)
            wanted = requested or [RequestedOutput(meta.name) for meta in self.outputs]
            outputs = [self._output(logits, item) for item in wanted]
        except BaseException:
            self.stats.record_request(
                ok=False, duration_ns=time.perf_counter_ns() - started, rows=rows
            )
            raise
        self.stats.record_request(ok=True, duration_ns=time.perf_counter_ns() - started, rows=rows)
        return outputs

    def close(self) -> None:
        """Finish pending requests and stop the batcher threads."""
        self._batcher.close()

    def _run_logits(self, batch: np.ndarray) -> np.ndarray:
        started = time.perf_counter_ns()
        result = self._runtime.run(batch)
        self.stats.record_execution(
            batch_size=len(batch), duration_ns=time.perf_counter_ns() - started
        )
        return np.asarray(result, dtype=np.float32)

    def _model_input(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        names = {meta.name: meta for meta in self.inputs}
        unknown = sorted(set(inputs) - set(names))
        if unknown or len(inputs) != 1:
            raise InputError(
                f"model {self.name!r} takes exactly one input, {self.input_name!r} (FP32 "
                f"N,3,H,W) or {PIXELS_INPUT!r} (UINT8 N,H,W,3); got {sorted(inputs)}"
            )
        ((name, array),) = inputs.items()
        meta = names[name]
        expected = V2_DTYPES[meta.datatype]
        if array.dtype != expected:
            found = _v2_name(array.dtype)
            raise InputError(f"input {name!r} must be {meta.datatype}, got {found}")
        if array.ndim != len(meta.shape) or array.shape[1:] != meta.shape[1:]:
            raise InputError(
                f"input {name!r} must have shape [N, {', '.join(map(str, meta.shape[1:]))}], "
                f"got {list(array.shape)}"
            )
        if len(array) == 0:
            raise InputError(f"input {name!r} has an empty batch")
        if self.max_batch_size and len(array) > self.max_batch_size:
            raise InputError(
                f"batch of {len(array)} exceeds max_batch_size {self.max_batch_size} of model "
                f"{self.name!r}; split the request"
            )
        if name == PIXELS_INPUT:
            return normalize(array, self.preprocess)
        return np.ascontiguousarray(array)

    def _output(self, logits: np.ndarray, requested: RequestedOutput) -> OutputTensor:
        if requested.name == self.output_name:
            values = logits
        elif requested.name == PROBABILITIES_OUTPUT:
            values = softmax(logits)
        else:
            known = [meta.name for meta in self.outputs]
            raise InputError(f"model {self.name!r} has no output {requested.name!r}; use {known}")
        if requested.class_count > 0:
            return OutputTensor(requested.name, "BYTES", self._classify(values, requested))
        return OutputTensor(requested.name, "FP32", values)

    def _classify(self, values: np.ndarray, requested: RequestedOutput) -> np.ndarray:
        k = min(requested.class_count, values.shape[1])
        order = np.argsort(-values, axis=1, kind="stable")[:, :k]
        rows = [
            [f"{row[i]:.6g}:{i}:{self.labels[i]}".encode() for i in indices]
            for row, indices in zip(values, order, strict=True)
        ]
        result: np.ndarray = np.array(rows, dtype=np.object_).reshape(len(values), k)
        return result


def instance_count(config: Any) -> int:
    """Model instances a ``config.pbtxt`` asks for (batches run at once); at least 1."""
    return sum(max(1, group.count) for group in config.instance_group) or 1


def read_model_info(model_dir: Path, config: Any) -> tuple[list[str], PreprocessConfig]:
    """Labels and preprocessing of a repository model, from ``imgclf.json`` or the config.

    Raises:
        BundleError: Neither source provides them.
    """
    info: dict[str, Any] = {}
    meta_path = model_dir / METADATA_NAME
    if meta_path.is_file():
        try:
            info = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{meta_path}: cannot read ({exc})") from exc
    params = {key: config.parameters[key].string_value for key in config.parameters}
    param_labels, param_preprocess = read_parameters(params)
    labels = info.get("labels")
    if labels is None:
        labels = param_labels
    if labels is None and config.output and config.output[0].label_filename:
        label_path = model_dir / config.output[0].label_filename
        labels = label_path.read_text(encoding="utf-8").splitlines()
    preprocess = param_preprocess
    if info.get("preprocessing") is not None:
        preprocess = PreprocessConfig.from_dict(info["preprocessing"])
    if not labels or preprocess is None:
        raise BundleError(
            f"{model_dir}: labels or preprocessing missing; re-export the model with "
            "`imgclf export BUNDLE --format triton`"
        )
    return [str(label) for label in labels], preprocess


def _check_signature(
    runtime: Runtime, labels: list[str], preprocess: PreprocessConfig, path: Path
) -> None:
    signature = runtime.signature
    size = preprocess.input_size
    shape = list(signature.input_shape)
    if signature.input_dtype != "float32" or shape[1:] != [3, size, size]:
        raise BundleError(
            f"{path}: input {signature.input_name!r} is {signature.input_dtype} {shape}, expected "
            f"float32 [N, 3, {size}, {size}] to match the preprocessing"
        )
    classes = signature.output_shape[-1]
    if classes != len(labels):
        raise BundleError(f"{path}: output has {classes} classes but {len(labels)} labels")


def _v2_name(dtype: np.dtype[Any]) -> str:
    for name, known in V2_DTYPES.items():
        if known == dtype:
            return name
    return "BYTES" if dtype == np.object_ else str(dtype)
