"""ONNX fp32 export from a bundle's PyTorch weights, checked against PyTorch.

The graph comes from :func:`imgclf.torch_onnx.torch_to_onnx` (the ``torch.export`` based
exporter; its module says why).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgclf.bundle import Bundle
from imgclf.errors import ExportError
from imgclf.export.artifacts import model_metadata, require_pytorch, staged_file
from imgclf.export.checks import check_parity, run_batched
from imgclf.export.reference import reference_images, resolve_data
from imgclf.inference.runtimes import OnnxRuntimeModel
from imgclf.torch_onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME, torch_to_onnx

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)


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
