"""Write a bundle's ONNX model as an NVIDIA Triton / KServe model repository.

The layout, names and parameters are the contract in :mod:`imgclf.model_repository`, which
Triton and ``imgclf model-server`` both serve::

    <repo>/<model>/config.pbtxt        Triton ModelConfig (text protobuf)
    <repo>/<model>/labels.txt          one label per line, in output order (for classification)
    <repo>/<model>/imgclf.json         labels, preprocessing and provenance of the model
    <repo>/<model>/<version>/model.onnx

``config.pbtxt`` declares ``platform: "onnxruntime_onnx"``, the ONNX model's real input and output
names, types and dims (without the batch dim), ``max_batch_size``, dynamic batching and a CPU
instance group, so Triton loads the directory unchanged. The output points at ``labels.txt`` with
``label_filename`` so Triton's classification extension returns label names. The labels and the
preprocessing are also stored as ``parameters`` (``imgclf.labels``, ``imgclf.preprocessing``), which
any V2 client can read through the ``ModelConfig`` call; this is how the gateway learns how to
preprocess images for a model server it has never seen, whether that is imgclf's or Triton.

Exporting another version into an existing model directory adds ``<version>/model.onnx`` and
rewrites the shared files, which a running model server picks up without a restart.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf import __version__
from imgclf.bundle import Bundle, load_bundle
from imgclf.errors import BundleError, ConfigError, ExportError
from imgclf.export.artifacts import copy_atomically, write_text_atomically
from imgclf.inference.predictor import select_artifact
from imgclf.model_repository import (
    CONFIG_NAME,
    LABELS_NAME,
    METADATA_NAME,
    MODEL_FILENAME,
    SERVABLE_FORMATS,
    config_parameters,
)

#: ONNX Runtime tensor types -> Triton data types.
ORT_TO_TRITON: dict[str, str] = {
    "tensor(float)": "TYPE_FP32",
    "tensor(float16)": "TYPE_FP16",
    "tensor(double)": "TYPE_FP64",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Bundle artifacts ``artifact=`` may name; ``auto`` picks among the ONNX ones as the Predictor
#: (``imgclf serve``, ``imgclf model-server --bundle``) does, int8 first.
TRITON_ARTIFACTS: tuple[str, ...] = ("onnx-int8", "onnx")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as Triton declares it (dims exclude the batch dim)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


def export_triton_repository(
    bundle: Bundle | str | Path,
    repo_dir: str | Path,
    *,
    model_name: str | None = None,
    version: int = 1,
    max_batch_size: int = 8,
    artifact: str = "auto",
    max_queue_delay_us: int = 2000,
) -> Path:
    """Write (or add a version to) a Triton model repository from a bundle's ONNX artifact.

    Args:
        bundle: A loaded bundle or its directory.
        repo_dir: Repository root; created if missing. Other models in it are left alone.
        model_name: Model directory name (defaults to the bundle's name).
        version: Positive integer version directory to write.
        max_batch_size: Largest batch the server forms; 0 disables batching.
        artifact: Bundle artifact to copy: ``auto`` (the int8 ONNX model if the bundle has it,
            else fp32, like ``imgclf serve``), ``onnx-int8`` or ``onnx``.
        max_queue_delay_us: How long dynamic batching waits to fill a batch, in microseconds.

    Returns:
        The model directory ``<repo_dir>/<model_name>``.

    Raises:
        ConfigError: A bad model name, version, batch size or artifact kind.
        BundleError: The bundle or its artifact is missing or corrupt.
        ExportError: The ONNX model's shapes cannot be served with these settings.
    """
    loaded = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    name = model_name or loaded.manifest.name
    _check_options(name, version, max_batch_size, artifact, max_queue_delay_us)
    artifact = select_artifact(loaded, artifact, formats=SERVABLE_FORMATS)
    source = loaded.artifact_path(artifact)
    inputs, outputs = read_onnx_signature(source, batched=max_batch_size > 0)
    model_dir = Path(repo_dir) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    # A polling model server must never see a half-written file: each one is replaced in one step.
    copy_atomically(source, version_dir / MODEL_FILENAME)
    write_text_atomically(model_dir / LABELS_NAME, "".join(f"{label}\n" for label in loaded.labels))
    write_text_atomically(
        model_dir / METADATA_NAME, json.dumps(_metadata(loaded, artifact), indent=2)
    )
    config = render_config(
        name,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        max_queue_delay_us=max_queue_delay_us,
        parameters=config_parameters(loaded.labels, loaded.preprocess_config),
    )
    write_text_atomically(model_dir / CONFIG_NAME, config)
    return model_dir


def export_triton(
    bundle: Bundle | str | Path,
    *,
    out: str | Path | None = None,
    model_name: str | None = None,
    version: int = 1,
    max_batch_size: int = 8,
    artifact: str = "auto",
) -> Path:
    """The ``triton`` row of the export-format table: ``imgclf export B --format triton --out R``.

    Raises:
        ConfigError: ``out`` (the repository directory) is missing, or a bad option.
    """
    if out is None:
        raise ConfigError("the triton format writes a model repository: give it with --out DIR")
    return export_triton_repository(
        bundle,
        out,
        model_name=model_name,
        version=version,
        max_batch_size=max_batch_size,
        artifact=artifact,
    )


def _check_options(
    name: str, version: int, max_batch_size: int, artifact: str, max_queue_delay_us: int
) -> None:
    if not _MODEL_NAME.match(name):
        raise ConfigError(
            f"model name {name!r} is not a valid directory name; use letters, digits, '_', '-', '.'"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version must be a positive integer, got {version!r}")
    if not 0 <= max_batch_size <= 1024:
        raise ConfigError(f"max_batch_size must be between 0 and 1024, got {max_batch_size}")
    if artifact != "auto" and artifact not in TRITON_ARTIFACTS:
        raise ConfigError(
            f"artifact must be 'auto', 'onnx-int8' or 'onnx' for Triton, got {artifact!r}"
        )
    if max_queue_delay_us < 0:
        raise ConfigError(f"max_queue_delay_us must be >= 0, got {max_queue_delay_us}")


def read_onnx_signature(path: Path, *, batched: bool) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX model as Triton tensor specs.

    Raises:
        ExportError: A tensor type Triton cannot declare, or a fixed batch dim with batching on.
    """
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad models
        raise BundleError(f"{path}: ONNX Runtime cannot load the model ({exc})") from exc
    inputs = [_tensor_spec(node, batched, path) for node in session.get_inputs()]
    outputs = [_tensor_spec(node, batched, path) for node in session.get_outputs()]
    return inputs, outputs


def _tensor_spec(node: Any, batched: bool, path: Path) -> TensorSpec:
    data_type = ORT_TO_TRITON.get(node.type)
    if data_type is None:
        raise ExportError(f"{path}: tensor {node.name!r} has type {node.type}, unsupported")
    dims = [d if isinstance(d, int) else -1 for d in node.shape]
    if batched:
        if not dims or dims[0] not in (-1,):
            raise ExportError(
                f"{path}: tensor {node.name!r} has a fixed batch dimension {dims[:1]}; export the "
                "ONNX model with a dynamic batch axis or use max_batch_size=0"
            )
        dims = dims[1:]
    return TensorSpec(name=node.name, data_type=data_type, dims=tuple(dims))


def render_config(
    name: str,
    *,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    max_batch_size: int,
    max_queue_delay_us: int,
    parameters: dict[str, str],
) -> str:
    """Render a Triton ``config.pbtxt`` for an ONNX Runtime model on CPU."""
    lines = [
        f"name: {_quote(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "version_policy: { latest: { num_versions: 1 } }",
        "input [",
        ",\n".join(_tensor_block(spec, None) for spec in inputs),
        "]",
        "output [",
        ",\n".join(_tensor_block(spec, LABELS_NAME) for spec in outputs[:1])
        + "".join(",\n" + _tensor_block(spec, None) for spec in outputs[1:]),
        "]",
    ]
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}")
    lines.append("instance_group [ { count: 1, kind: KIND_CPU } ]")
    lines.append("parameters [")
    lines.append(
        ",\n".join(
            f"  {{ key: {_quote(key)}, value: {{ string_value: {_quote(value)} }} }}"
            for key, value in parameters.items()
        )
    )
    lines.append("]")
    return "\n".join(lines) + "\n"


def _tensor_block(spec: TensorSpec, label_filename: str | None) -> str:
    fields = [
        f"    name: {_quote(spec.name)}",
        f"    data_type: {spec.data_type}",
        f"    dims: [ {', '.join(str(d) for d in spec.dims)} ]",
    ]
    if label_filename:
        fields.append(f"    label_filename: {_quote(label_filename)}")
    return "  {\n" + "\n".join(fields) + "\n  }"


def _quote(text: str) -> str:
    """A protobuf text-format string literal: printable ASCII kept, other UTF-8 bytes octal."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in (0x22, 0x27, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _metadata(bundle: Bundle, artifact: str) -> dict[str, Any]:
    info = bundle.manifest.artifacts[artifact]
    return {
        "name": bundle.manifest.name,
        "bundle_version": bundle.manifest.version,
        "backbone": bundle.manifest.backbone,
        "labels": bundle.labels,
        "preprocessing": bundle.preprocess_config.to_dict(),
        "artifact": artifact,
        "precision": info.precision,
        "sha256": info.sha256,
        "imgclf_version": __version__,
    }
