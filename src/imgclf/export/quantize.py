"""ONNX int8 export: static QDQ quantisation calibrated on training images, bounded accuracy drop.

The fp32 ONNX model is first prepared with ``quant_pre_process`` (shape inference and graph
optimisation, so BatchNorm and friends are folded before ranges are measured), then quantised with
``quantize_static``: QDQ format, per-channel int8 weights, uint8 activations (the U8S8 pairing
x86 VNNI kernels run fastest), activation ranges calibrated on training images preprocessed by the
same code serving uses. Ranges come from the 99.99th percentile of each activation's histogram
by default: the linear (un-activated) projection outputs have rare outliers that min/max
calibration would stretch the int8 range to cover.

Two layers stay fp32: the stem convolution (three input channels, so int8 buys no speed there,
while rounding the raw image costs accuracy) and the classifier (a few thousand
multiply-adds whose rounding moves the logits directly). On the clothing model this halved the
accuracy drop (docs/benchmarks.md).

The int8 and fp32 models are then both evaluated on the validation split; an int8 model losing
more than ``max_drop`` points of top-1 is refused unless forced.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from imgclf.bundle import Bundle, verify_artifact
from imgclf.errors import ConfigError, ExportError
from imgclf.export.artifacts import model_metadata, staged_file
from imgclf.export.checks import top1_accuracy, top1_agreement
from imgclf.export.onnx_export import export_onnx
from imgclf.export.reference import ReferenceImages, resolve_data, split_pixels
from imgclf.inference.runtimes import OnnxRuntimeModel
from imgclf.preprocessing import PreprocessConfig, normalize
from imgclf.torch_onnx import DEFAULT_OPSET, INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

DEFAULT_MAX_DROP = 1.0
DEFAULT_CALIBRATION_IMAGES = 304  # 19 batches of 16
CALIBRATION_BATCH = 16
#: Share of each activation's histogram the percentile calibrator keeps inside the int8 range.
CALIB_PERCENTILE = 99.99
#: Operators quantised. Activations (Clip = ReLU6, Relu) and residual Adds are included so the
#: graph stays int8 from one convolution to the next: ONNX Runtime then folds each activation into
#: its QLinearConv and runs the Add as QLinearAdd. With convolutions alone, every activation ran
#: in float between a DequantizeLinear and a QuantizeLinear, which cost as much time as the
#: int8 convolutions saved (the int8 model was no faster than fp32).
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Clip", "Relu", "Add")
#: Batches the calibrator sees before it folds their activations into its histograms and lets
#: them go. Given all at once, ONNX Runtime keeps every activation of every calibration image
#: (about 64 MB per 224 px image for Lite0: 19.5 GB for 304 images); one batch at a time holds
#: one batch's (about 1 GB). Despite its name, ONNX Runtime's ``CalibStridedMinMax`` option
#: strides every calibrator, histogram ones included.
CALIBRATION_STRIDE = 1


def calibration_batches(images: int) -> tuple[int, int]:
    """Batch size and number of images calibration uses out of ``images`` (equal batches)."""
    batch_size = max(1, min(CALIBRATION_BATCH, images))
    return batch_size, images - images % batch_size


def _calibration_reader(pixels: np.ndarray, config: PreprocessConfig) -> Any:
    """A ``CalibrationDataReader`` feeding normalised batches of ``pixels``.

    Every batch has the same size (a remainder is dropped): the histogram-based calibrators
    (entropy, percentile) fail on batches of different sizes. Its length is its number of
    batches and ``set_range`` limits it to some of them, so ONNX Runtime can calibrate one batch
    at a time (see :data:`CALIBRATION_STRIDE`).
    """
    batch_size, used = calibration_batches(len(pixels))
    pixels = pixels[:used]
    batches = used // batch_size
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._next, self._end = 0, batches

        def __len__(self) -> int:
            return batches

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next, self._end = start_index, min(end_index, batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= self._end:
                return None
            start = self._next * batch_size
            self._next += 1
            return {INPUT_NAME: normalize(pixels[start : start + batch_size], config)}

    return _Reader()


def fp32_nodes(model: Any) -> list[str]:
    """Names of the nodes kept in fp32: convolutions reading the model input, and the classifier.

    The classifier is any Gemm/MatMul whose result reaches a model output directly or through
    one more node (a bias Add, say).
    """
    graph = model.graph
    inputs = {i.name for i in graph.input}
    outputs = {o.name for o in graph.output}
    near_output = set(outputs)
    for node in graph.node:
        if outputs.intersection(node.output):
            near_output.update(node.input)
    stem = [n.name for n in graph.node if n.op_type == "Conv" and inputs.intersection(n.input)]
    head = [
        n.name
        for n in graph.node
        if n.op_type in ("Gemm", "MatMul") and near_output.intersection(n.output)
    ]
    return stem + head


def quantize_onnx(
    fp32_path: Path,
    out_path: Path,
    calibration: np.ndarray,
    config: PreprocessConfig,
    method: str = "percentile",
) -> list[str]:
    """Quantise ``fp32_path`` into ``out_path`` (static, QDQ, per-channel weights).

    Returns:
        The nodes left in fp32 (see :func:`fp32_nodes`).

    Raises:
        ExportError: ONNX Runtime's quantisation tools failed.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    chatter = io.StringIO()  # the calibrator prints a line per batch; keep them for debug logs
    with (
        tempfile.TemporaryDirectory(prefix="imgclf-quant-") as scratch,
        contextlib.redirect_stdout(chatter),
    ):
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
            kept = fp32_nodes(onnx.load(str(prepared)))
            quantize_static(
                str(prepared),
                str(out_path),
                _calibration_reader(calibration, config),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=kept,
                extra_options={
                    "CalibTensorRangeSymmetric": False,
                    "CalibPercentile": CALIB_PERCENTILE,
                    "CalibStridedMinMax": CALIBRATION_STRIDE,
                },
            )
        except Exception as exc:  # the quantisation tools raise assorted types
            raise ExportError(f"ONNX Runtime could not quantise {fp32_path}: {exc}") from exc
        finally:
            log.debug("ONNX Runtime quantisation output:\n%s", chatter.getvalue())
    return kept


def _ensure_fp32(bundle: Bundle, data: Path, opset: int, parity_images: int, force: bool) -> Path:
    info = bundle.manifest.artifacts.get("onnx")
    if info is None or not (bundle.root / info.file).is_file():
        log.info("no fp32 ONNX model yet: exporting it first")
        return export_onnx(bundle, data=data, opset=opset, parity_images=parity_images, force=force)
    verify_artifact(bundle.root, "onnx", info)
    return bundle.root / info.file


def _set_metadata(path: Path, bundle: Bundle) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key for p in model.metadata_props}
    for key, value in model_metadata(bundle).items():
        if key not in existing:
            model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def measure_drop(
    fp32_path: Path, int8_path: Path, validation: ReferenceImages, config: PreprocessConfig
) -> dict[str, float]:
    """Validation top-1 (in %) of both models, the drop in points and their top-1 agreement."""
    assert validation.labels is not None
    outputs = []
    for path in (fp32_path, int8_path):
        runtime = OnnxRuntimeModel(path)
        batches = [
            runtime.run(normalize(validation.pixels[i : i + 32], config))
            for i in range(0, len(validation.pixels), 32)
        ]
        outputs.append(np.concatenate(batches))
    fp32 = 100.0 * top1_accuracy(outputs[0], validation.labels)
    int8 = 100.0 * top1_accuracy(outputs[1], validation.labels)
    return {
        "val_top1_fp32": round(fp32, 3),
        "val_top1_int8": round(int8, 3),
        "val_top1_drop": round(fp32 - int8, 3),
        "val_top1_agreement": round(100.0 * top1_agreement(outputs[0], outputs[1]), 3),
    }


def export_onnx_int8(
    bundle: Bundle,
    *,
    data: Path | None = None,
    opset: int = DEFAULT_OPSET,
    parity_images: int = 32,
    force: bool = False,
    max_drop: float = DEFAULT_MAX_DROP,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    calibration_method: str = "percentile",
) -> Path:
    """Quantise the bundle's fp32 ONNX model to ``model.int8.onnx`` (artifact ``onnx-int8``).

    Args:
        bundle: A bundle with an ``onnx`` artifact or PyTorch weights to export one from.
        data: Dataset with train (calibration) and validation (accuracy check) images; default:
            the dataset the model was trained on, if it is still there.
        opset: Opset of the fp32 export, if one has to be made first.
        parity_images: Parity images of the fp32 export, if one has to be made first.
        force: Keep a model whose accuracy drop exceeds ``max_drop``.
        max_drop: Largest accepted loss of validation top-1, in percentage points.
        calibration_images: Training images used to calibrate activation ranges.
        calibration_method: ``minmax``, ``entropy`` or ``percentile``.

    Returns:
        Path of the written model.

    Raises:
        ConfigError: No dataset to calibrate on, or invalid numbers.
        ExportError: Quantisation failed or the accuracy drop exceeds ``max_drop``.
    """
    if calibration_images < 1 or max_drop < 0:
        raise ConfigError("--calibration-images must be >= 1 and --max-drop >= 0")
    dataset = resolve_data(bundle, data)
    if dataset is None:
        raise ConfigError(
            "int8 export needs images: pass --data DIR (a dataset with train and validation "
            "images of the model's classes) for calibration and the accuracy check"
        )
    config = bundle.preprocess_config
    fp32_path = _ensure_fp32(bundle, dataset, opset, parity_images, force)
    calibration = split_pixels(bundle, dataset, "train", limit=calibration_images)
    validation = split_pixels(bundle, dataset, "validation")
    with staged_file(bundle, "model.int8.onnx") as staging:
        kept = quantize_onnx(fp32_path, staging, calibration.pixels, config, calibration_method)
        _set_metadata(staging, bundle)
        metrics = measure_drop(fp32_path, staging, validation, config)
        _check_drop(metrics, max_drop, force)
    details: dict[str, Any] = {
        "quantization": "static QDQ, per-channel int8 weights, uint8 activations",
        "quantized_ops": list(QUANTIZED_OPS),
        "fp32_nodes": kept,
        "calibration": {
            "method": calibration_method,
            "images": calibration_batches(len(calibration.pixels))[1],
            "images_from": calibration.source,
        },
        "validation_images": len(validation.pixels),
        "max_drop": max_drop,
    }
    bundle.add_artifact(
        "onnx-int8",
        bundle.root / "model.int8.onnx",
        format="onnx",
        precision="int8",
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        metrics=metrics,
        details=details,
    )
    return bundle.root / "model.int8.onnx"


def _check_drop(metrics: dict[str, float], max_drop: float, force: bool) -> None:
    drop = metrics["val_top1_drop"]
    summary = (
        f"validation top-1 fp32 {metrics['val_top1_fp32']:.2f}%, int8 "
        f"{metrics['val_top1_int8']:.2f}% (drop {drop:.2f} points, limit {max_drop:.2f})"
    )
    if drop <= max_drop:
        log.info("int8 accepted: %s", summary)
        return
    if not force:
        raise ExportError(
            f"int8 model refused: {summary}. Try --calibration-images with more images or "
            "another --calibration-method, raise --max-drop, or pass --force to keep it"
        )
    log.warning("int8 kept despite its accuracy drop (--force): %s", summary)
