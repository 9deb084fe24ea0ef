"""Export trained bundles to portable, fast artifacts: ONNX fp32, ONNX int8, TFLite.

The formats are a table (:data:`FORMATS`); :func:`export_bundle` runs one row::

    from imgclf.export import export_bundle

    export_bundle("runs/clothing", "onnx-int8", data="datasets/clothing-small")

Every export is checked before it is registered in the bundle's manifest: fp32 models against
PyTorch on validation images, int8 models by their validation top-1 drop against fp32. Importing
this package does not import torch; exporters load it when they run.
"""

from __future__ import annotations

from imgclf.export.api import ExportResult, export_bundle
from imgclf.export.formats import FORMATS, OPTIONS, ExportFormat, ExportOption

__all__ = ["FORMATS", "OPTIONS", "ExportFormat", "ExportOption", "ExportResult", "export_bundle"]
