"""ONNX fp32 export from a bundle's PyTorch weights, checked against PyTorch.

The graph comes from ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export`` based exporter).
For timm's TF-ported EfficientNet-Lite it produces ~100 nodes with the "same" paddings folded into
the convolutions, where the TorchScript exporter leaves ~600 nodes of runtime shape arithmetic that
ONNX Runtime cannot fold when the batch axis is dynamic; the dynamo graph runs about 2x faster.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.bundle import Bundle
from imgclf.errors import ExportError
from imgclf.export.artifacts import model_metadata, require_pytorch, staged_file
from imgclf.export.checks import check_parity, run_batched
from imgclf.export.reference import reference_images, resolve_data
from imgclf.inference.runtimes import OnnxRuntimeModel

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096


def torch_to_onnx(model: nn.Module, input_size: int, path: Path, opset: int) -> None:
    """Export ``model`` to ``path`` with a dynamic batch axis (input ``input``, output ``logits``).

    Raises:
        ExportError: torch cannot trace or translate the model.
    """
    import torch

    # A batch of 2: with 1, torch.export specialises the batch dimension to a constant.
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    chatter = io.StringIO()  # the exporter prints progress lines; keep them for debug logs only
    try:
        with contextlib.redirect_stdout(chatter), _quiet_optimizer_logs(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            if program is None:
                raise ExportError("torch.onnx.export returned no program")
            program.save(str(path), external_data=False)
    except ExportError:
        raise
    except Exception as exc:  # torch.export raises many unrelated types
        raise ExportError(f"torch could not export {type(model).__name__} to ONNX: {exc}") from exc
    finally:
        log.debug("torch.onnx output:\n%s", chatter.getvalue())


@contextlib.contextmanager
def _quiet_optimizer_logs() -> Iterator[None]:
    """Silence the graph optimiser's per-pass INFO logs (hundreds of lines) during export."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def finish_onnx(path: Path, bundle: Bundle, doc: str) -> None:
    """Store labels and preprocessing in the model's metadata, then run the ONNX checker.

    Raises:
        ExportError: The checker rejects the model.
    """
    import onnx

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(model_metadata(bundle))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = doc
    model.producer_name = "imgclf"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported ONNX model is invalid: {exc}") from exc
    onnx.save(model, str(path))


def torch_logits(model: nn.Module, batch: np.ndarray) -> np.ndarray:
    """Logits of a PyTorch model for a normalised NCHW float32 batch."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(batch)).numpy()  # type: ignore[no-any-return]


def export_onnx(
    bundle: Bundle,
    *,
    data: Path | None = None,
    opset: int = DEFAULT_OPSET,
    parity_images: int = 32,
    force: bool = False,
) -> Path:
    """Export the bundle's PyTorch model to ``model.onnx`` and register it as ``onnx``.

    Args:
        bundle: A bundle with a ``pytorch`` artifact.
        data: Dataset whose validation images are used for the parity check (default: the
            training dataset if it is still there, else generated images).
        opset: ONNX opset version.
        parity_images: How many images are compared against PyTorch.
        force: Keep the model even if it fails the parity check.

    Returns:
        Path of the written model.

    Raises:
        BundleError: The bundle has no usable PyTorch weights.
        ExportError: Export, the ONNX checker or the parity check failed.
    """
    from imgclf.backbones import load_torch_model

    require_pytorch(bundle)
    model = load_torch_model(bundle)
    config = bundle.preprocess_config
    reference = reference_images(bundle, resolve_data(bundle, data), parity_images)
    with staged_file(bundle, "model.onnx") as staging:
        torch_to_onnx(model, config.input_size, staging, opset)
        finish_onnx(staging, bundle, f"{bundle.manifest.name} {bundle.manifest.backbone}, fp32")
        runtime = OnnxRuntimeModel(staging)
        expected = run_batched(lambda batch: torch_logits(model, batch), reference.pixels, config)
        actual = run_batched(runtime.run, reference.pixels, config)
        parity = check_parity(expected, actual, what="the ONNX model", force=force)
    details: dict[str, Any] = {
        "exporter": "torch.onnx.export(dynamo=True)",
        "opset": opset,
        "dynamic_batch": True,
        "parity": {**parity, "reference": "pytorch", "images_from": reference.source},
    }
    bundle.add_artifact(
        "onnx",
        bundle.root / "model.onnx",
        format="onnx",
        precision="fp32",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        metrics={"parity_max_abs_diff": parity["max_abs_diff"]},
        details=details,
    )
    log.info(
        "wrote %s (parity max |diff| %.2g)", bundle.root / "model.onnx", parity["max_abs_diff"]
    )
    return bundle.root / "model.onnx"
