"""The export formats, as data: one row per format, one row per option.

A format row names the bundle artifact it writes, the file suffix, the options it accepts and the
function that does the work (as ``"module:function"``, imported only when that format is exported,
so listing formats costs nothing and never imports torch). Adding a format is adding a row here.

An exporter is called as ``exporter(bundle, **options)`` with only the options the caller gave
(each a keyword argument named like the option) and returns the path it wrote.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgclf.errors import ConfigError


@dataclass(frozen=True)
class ExportOption:
    """One option an exporter may accept.

    Attributes:
        name: Keyword argument passed to the exporter (``calibration_images``).
        help: One line for ``--help``.
        type: Parses the command-line string (``int``, ``float``, ``Path``); None for a switch.
        metavar: Placeholder shown in ``--help``.
        choices: Allowed values, if the option is an enumeration.
    """

    name: str
    help: str
    type: Callable[[str], Any] | None = str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """Command-line spelling: ``--calibration-images``."""
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class ExportFormat:
    """One export target.

    Attributes:
        name: What users pass to ``--format``.
        artifact: Bundle artifact key the export registers (None: writes outside the bundle).
        suffix: File name of the artifact inside the bundle (or "" for directories).
        options: Names of the :data:`OPTIONS` this format accepts.
        exporter: ``"module:function"`` doing the export, imported on use.
        description: One line for ``--help`` and error messages.
        extra: The extras the exporter needs, comma-separated (``pip install 'imgclf[extra]'``).
        requires: Top-level modules that extra provides, checked before exporting.
    """

    name: str
    artifact: str | None
    suffix: str
    options: tuple[str, ...]
    exporter: str
    description: str
    extra: str = "train"
    requires: tuple[str, ...] = ("torch", "timm", "onnx", "onnxscript")

    def load_exporter(self) -> Callable[..., Path]:
        """Import the exporter function.

        Raises:
            ConfigError: The libraries it needs are not installed.
        """
        extras = f"{self.extra!r} extra{'s' if ',' in self.extra else ''}"
        needs = f"exporting {self.name} needs the {extras} (pip install 'imgclf[{self.extra}]')"
        missing = [name for name in self.requires if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(f"{needs}; missing: {', '.join(missing)}")
        module_name, function_name = self.exporter.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{needs}: {exc}") from exc
        function: Callable[..., Path] = getattr(module, function_name)
        return function


OPTIONS: dict[str, ExportOption] = {
    option.name: option
    for option in (
        ExportOption(
            "data",
            "dataset folder: validation images for parity and accuracy checks, "
            "training images for int8 calibration (default: the dataset the model was trained on)",
            Path,
            "DIR",
        ),
        ExportOption("opset", "ONNX opset version (default 18)", int, "N"),
        ExportOption(
            "max_drop",
            "refuse an int8 model losing more than this many points of validation top-1 "
            "(default 1.0)",
            float,
            "PTS",
        ),
        ExportOption("force", "keep a model that fails its accuracy or parity check", None),
        ExportOption(
            "calibration_images",
            "training images used to calibrate int8 activations (default 304)",
            int,
            "N",
        ),
        ExportOption(
            "calibration_method",
            "how int8 activation ranges are chosen (default percentile)",
            str,
            choices=("minmax", "entropy", "percentile"),
        ),
        ExportOption("parity_images", "images compared against PyTorch (default 32)", int, "N"),
        ExportOption(
            "out",
            "also write a serving-only bundle (manifest + this artifact, no PyTorch weights) "
            "to DIR; for triton: the model repository to write",
            Path,
            "DIR",
        ),
        ExportOption(
            "model_name", "triton: model name in the repository (default: bundle name)", str, "NAME"
        ),
        ExportOption("version", "triton: version directory to write (default 1)", int, "N"),
        ExportOption(
            "max_batch_size",
            "triton: largest server batch, 0 disables batching (default 8)",
            int,
            "N",
        ),
        ExportOption(
            "artifact",
            "triton: bundle artifact to serve (default auto: the int8 ONNX model if the bundle "
            "has it, else fp32, as imgclf serve runs)",
            str,
            choices=("auto", "onnx-int8", "onnx"),
        ),
    )
}

_COMMON = ("data", "opset", "parity_images", "force", "out")

FORMATS: dict[str, ExportFormat] = {
    fmt.name: fmt
    for fmt in (
        ExportFormat(
            "onnx",
            "onnx",
            "model.onnx",
            _COMMON,
            "imgclf.export.onnx_export:export_onnx",
            "ONNX fp32, dynamic batch, checked against PyTorch",
        ),
        ExportFormat(
            "onnx-int8",
            "onnx-int8",
            "model.int8.onnx",
            (*_COMMON, "max_drop", "calibration_images", "calibration_method"),
            "imgclf.export.quantize:export_onnx_int8",
            "ONNX int8 (static QDQ), accuracy drop vs fp32 measured and bounded",
            requires=("onnx", "onnxruntime"),
        ),
        ExportFormat(
            "tflite",
            "tflite",
            "model.tflite",
            ("data", "parity_images", "force", "out"),
            "imgclf.export.tflite:export_tflite",
            "TFLite via litert-torch, checked against PyTorch with the LiteRT interpreter",
            extra="train,tflite",  # litert-torch converts the PyTorch model timm builds
            requires=("torch", "timm", "litert_torch", "ai_edge_litert"),
        ),
        ExportFormat(
            "triton",
            None,
            "",
            ("out", "model_name", "version", "max_batch_size", "artifact"),
            "imgclf.export.triton:export_triton",
            "Triton/KServe model repository at --out (config.pbtxt, ONNX, labels)",
            extra="serve",
            requires=("onnxruntime",),
        ),
    )
}


def get_format(name: str) -> ExportFormat:
    """Look up a format by name.

    Raises:
        ConfigError: No such format; the message lists the known ones.
    """
    fmt = FORMATS.get(name)
    if fmt is None:
        raise ConfigError(f"unknown export format {name!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def check_options(fmt: ExportFormat, options: Mapping[str, Any]) -> None:
    """Refuse options the format does not accept, naming the ones it does.

    Raises:
        ConfigError: An option is unknown or not accepted by ``fmt``.
    """
    refused = [name for name in options if name not in fmt.options]
    if refused:
        spelled = ", ".join(OPTIONS[n].flag if n in OPTIONS else repr(n) for n in refused)
        accepted = ", ".join(OPTIONS[n].flag for n in fmt.options) or "no options"
        raise ConfigError(f"format {fmt.name!r} does not accept {spelled}; it accepts: {accepted}")
    for name, value in options.items():
        choices = OPTIONS[name].choices
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{OPTIONS[name].flag} must be one of {', '.join(choices)}, got {value!r}"
            )
