"""TFLite export through litert-torch, checked against PyTorch with the LiteRT interpreter.

The model keeps PyTorch's layout (input ``(N, 3, H, W)`` float32, normalised like the ONNX model),
so every runtime is fed by the same preprocessing. The file is converted with a batch of 1; the
LiteRT interpreter resizes the batch axis at run time.

This needs the ``tflite`` extra (``litert-torch``, ``ai-edge-litert``), which pins its own versions
of several common libraries; install it in its own environment if it conflicts with yours.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from pathlib import Path
from typing import Any

from imgclf.bundle import Bundle
from imgclf.errors import ConfigError, ExportError
from imgclf.export.artifacts import require_pytorch, staged_file
from imgclf.export.checks import check_parity, run_batched
from imgclf.export.onnx_export import torch_logits
from imgclf.export.reference import reference_images, resolve_data
from imgclf.inference.runtimes import LiteRtModel

log = logging.getLogger(__name__)


def _litert_torch() -> Any:
    try:
        return importlib.import_module("litert_torch")
    except ImportError as exc:
        raise ConfigError(
            "TFLite export needs the 'tflite' extra: pip install 'imgclf[tflite]' "
            f"(litert-torch and ai-edge-litert); import failed: {exc}"
        ) from exc


def export_tflite(
    bundle: Bundle, *, data: Path | None = None, parity_images: int = 32, force: bool = False
) -> Path:
    """Convert the bundle's PyTorch model to ``model.tflite`` and register it as ``tflite``.

    Args:
        bundle: A bundle with a ``pytorch`` artifact.
        data: Dataset whose validation images are used for the parity check.
        parity_images: How many images are compared against PyTorch.
        force: Keep the model even if it fails the parity check.

    Raises:
        ConfigError: litert-torch or ai-edge-litert is not installed.
        BundleError: The bundle has no usable PyTorch weights.
        ExportError: Conversion or the parity check failed.
    """
    import torch

    from imgclf.backbones import load_torch_model

    litert_torch = _litert_torch()
    require_pytorch(bundle)
    model = load_torch_model(bundle)
    config = bundle.preprocess_config
    reference = reference_images(bundle, resolve_data(bundle, data), parity_images)
    example = torch.zeros(1, 3, config.input_size, config.input_size)
    with staged_file(bundle, "model.tflite") as staging:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                litert_torch.convert(model, (example,)).export(str(staging))
        except Exception as exc:  # the converter raises many unrelated types
            raise ExportError(f"litert-torch could not convert the model: {exc}") from exc
        runtime = LiteRtModel(staging)
        expected = run_batched(lambda batch: torch_logits(model, batch), reference.pixels, config)
        actual = run_batched(runtime.run, reference.pixels, config)
        parity = check_parity(expected, actual, what="the TFLite model", force=force)
    bundle.add_artifact(
        "tflite",
        bundle.root / "model.tflite",
        format="tflite",
        precision="fp32",
        metrics={"parity_max_abs_diff": parity["max_abs_diff"]},
        details={
            "exporter": f"litert_torch {getattr(litert_torch, '__version__', '?')}",
            "parity": {**parity, "reference": "pytorch", "images_from": reference.source},
        },
    )
    return bundle.root / "model.tflite"
