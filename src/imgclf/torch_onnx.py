"""torch -> ONNX through ``torch.onnx.export(..., dynamo=True)``, with a dynamic batch axis.

The graph comes from the ``torch.export`` based exporter. For timm's TF-ported EfficientNet-Lite it
produces ~100 nodes with the "same" paddings folded into the convolutions, where the TorchScript
exporter leaves ~600 nodes of runtime shape arithmetic that ONNX Runtime cannot fold when the batch
axis is dynamic; the dynamo graph runs about 2x faster. Export (the bundle's model) and training
(the frozen backbone's feature extractor, run by ONNX Runtime for the head stage) both use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from imgclf.errors import ExportError

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096


def torch_to_onnx(
    model: nn.Module,
    input_size: int,
    path: Path,
    opset: int = DEFAULT_OPSET,
    output_name: str = OUTPUT_NAME,
    example: torch.Tensor | None = None,
) -> None:
    """Export ``model`` to ``path`` with a dynamic batch axis.

    ``example`` is a batch of two inputs to trace with (default: float32 ``(2, 3, S, S)`` zeros,
    ``S`` being ``input_size``).

    The graph's input is ``input``; its output is ``output_name`` (``logits`` by default).

    Raises:
        ExportError: torch cannot trace or translate the model.
    """
    import torch

    # A batch of 2: with 1, torch.export specialises the batch dimension to a constant.
    if example is None:
        example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    chatter = io.StringIO()  # the exporter prints progress lines; keep them for debug logs only
    try:
        with contextlib.redirect_stdout(chatter), _quiet_optimizer_logs(), torch.no_grad():
            program = torch.onnx.export(
                model,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[output_name],
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
