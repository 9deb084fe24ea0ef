"""TF Serving's request and answer formats for an image classifier, shared by every transport.

A client written for TensorFlow Serving runs unchanged against ``imgclf serve`` (REST), the model
server's REST port and its TF Serving gRPC port. Each of them decodes its request into
*instances* here, resizes them with the model's own preprocessing, calls the model, and encodes
the probabilities the way TF Serving answers.

An instance is an image in one of two forms:

- encoded bytes (JPEG, PNG, ...): ``{"b64": "..."}`` in JSON, a string tensor over gRPC;
- raw pixels, an ``H x W x 3`` array (a nested JSON list, or a numeric tensor over gRPC) of any
  size, read by this rule:

  1. integers (JSON numbers without a fraction or exponent; integer tensors) are 0-255 pixels;
  2. floats whose largest value is at most 1.0 are ``[0, 1]`` pixels (scaled by 255);
  3. other floats are 0-255 pixels (as Keras models with their own rescaling take them).

  Every value must be finite and within 0-255; anything else is refused with the reason. An image
  whose every value is written ``0`` or ``1`` is therefore read as almost black: send floats
  (``1.0``) for a ``[0, 1]`` image.

Raw pixels are resized and centre-cropped exactly as a decoded photo is, so a 32x32 CIFAR
instance and the same image sent as a PNG to ``/predict`` get the same probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from imgclf.errors import ImageTooLargeError, InputError
from imgclf.preprocessing import PreprocessConfig, load_pixels, resize_and_crop
from imgclf.serving.json_input import decode_base64

#: The one signature an imgclf model serves, and TF Serving's default signature key.
SIGNATURE_NAME = "serving_default"
#: Names of the signature's input (images) and output (probabilities in label order).
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
#: An instance: encoded image bytes, or an ``(H, W, 3)`` array of raw pixels.
Instance = bytes | np.ndarray


@dataclass(frozen=True)
class PredictBody:
    """A decoded REST predict request: its instances and whether it used the columnar form."""

    instances: list[Instance]
    columnar: bool


def decode_base64_instance(value: Any) -> bytes | None:
    """The bytes of ``{"b64": "..."}``, or None if the value is not of that form."""
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        return decode_base64(value["b64"])
    return None


def parse_predict_body(data: Any, limit: int) -> PredictBody:
    """Decode a REST ``:predict`` body (row ``instances`` or columnar ``inputs``).

    Named inputs (``{"images": ...}`` or ``{"image_bytes": ...}``) are accepted in both forms, as
    TF Serving accepts a model's single input under its name.

    Raises:
        InputError: Not TF Serving's format, more than ``limit`` instances, or a bad instance.
    """
    if not isinstance(data, dict):
        raise InputError("the body must be a JSON object with 'instances' or 'inputs'")
    unknown = sorted(set(data) - {"instances", "inputs", "signature_name"})
    if unknown or (("instances" in data) == ("inputs" in data)):
        raise InputError(
            "give exactly one of 'instances' (row format) or 'inputs' (columnar format)"
            + (f"; unknown fields {unknown[:5]}" if unknown else "")
        )
    check_signature(data.get("signature_name"))
    columnar = "inputs" in data
    rows = _unwrap_named(data["inputs"] if columnar else data["instances"])
    if not isinstance(rows, list):
        rows = [rows]
    if not 1 <= len(rows) <= limit:
        raise InputError(f"send between 1 and {limit} instances, got {len(rows)}")
    return PredictBody([json_instance(row, i) for i, row in enumerate(rows)], columnar)


def check_signature(name: Any) -> None:
    """Refuse a signature other than :data:`SIGNATURE_NAME` (empty means the default)."""
    if name not in (None, "", SIGNATURE_NAME):
        raise InputError(
            f"Serving signature name: {str(name)[:100]!r} not found in signature def; this "
            f"model serves {SIGNATURE_NAME!r}"
        )


def _unwrap_named(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1 and set(value) != {"b64"}:
        return next(iter(value.values()))
    return value


def json_instance(value: Any, index: int) -> Instance:
    """One row-format instance: ``{"b64": ...}`` bytes, or a nested list of raw pixels."""
    value = _unwrap_named(value)
    encoded = decode_base64_instance(value)
    if encoded is not None:
        return encoded
    if isinstance(value, list):
        return pixel_array(value, f"instance {index}")
    raise InputError(
        f"instance {index}: expected {{'b64': '<base64 image>'}} or an HxWx3 nested list of "
        "pixels (0-255 integers or [0, 1] floats)"
    )


def pixel_array(values: Any, where: str) -> np.ndarray:
    """A nested list or array of raw pixels -> uint8 ``(H, W, 3)`` at the size sent.

    Raises:
        InputError: Ragged, not numbers, not finite, outside 0-255, or not ``H x W x 3``.
    """
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nesting
        raise InputError(
            f"{where}: pixels must be a rectangular HxWx3 nested list of numbers ({str(exc)[:120]})"
        ) from exc
    if array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise InputError(
            f"{where}: pixels must have shape [height, width, 3] (rank 3, RGB), got "
            f"{list(array.shape)[:8]}"
        )
    return to_uint8(array, where)


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Apply the pixel rule of this module's docstring -> uint8 of the same shape.

    Raises:
        InputError: Not numbers, not finite, or outside 0-255.
    """
    if array.dtype == np.uint8:
        return array
    kind = array.dtype.kind
    if kind not in "iuf":
        found = {"U": "strings", "S": "strings", "b": "booleans"}.get(kind, "mixed values")
        raise InputError(f"{where}: pixels must be numbers, got {found}")
    if kind == "f" and not np.isfinite(array).all():
        raise InputError(f"{where}: pixels must be finite numbers, got NaN or infinity")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise InputError(
            f"{where}: pixel values must be within 0-255 (or [0, 1] floats), got {low:g} to "
            f"{high:g}"
        )
    if kind == "f" and high <= 1.0:
        array = array * 255.0
    pixels: np.ndarray = np.rint(array).astype(np.uint8)
    return pixels


def model_pixels(instance: Instance, config: PreprocessConfig, max_pixels: int) -> np.ndarray:
    """One instance -> uint8 ``(S, S, 3)`` model-ready pixels, resized by the model's rules.

    Raises:
        InputError: Not a decodable image (encoded bytes), or more than ``max_pixels`` pixels.
    """
    if isinstance(instance, bytes):
        return load_pixels(instance, config, max_pixels=max_pixels)
    height, width = instance.shape[:2]
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels}"
        )
    image = Image.fromarray(np.ascontiguousarray(instance), "RGB")
    return np.asarray(resize_and_crop(image, config), dtype=np.uint8)


def model_batch(
    instances: Sequence[Instance], config: PreprocessConfig, max_pixels: int
) -> np.ndarray:
    """Every instance as model-ready pixels -> uint8 ``(N, S, S, 3)``; errors name the position."""
    pixels = []
    for index, instance in enumerate(instances):
        try:
            pixels.append(model_pixels(instance, config, max_pixels))
        except InputError as exc:
            if len(instances) == 1 or str(exc).startswith("instance "):
                raise
            raise type(exc)(f"instance {index}: {exc}") from exc
    return np.stack(pixels)


def predict_answer(probabilities: np.ndarray, *, columnar: bool) -> dict[str, Any]:
    """TF Serving's REST answer: one probability list per instance, in label order."""
    rows = [[round(float(p), 7) for p in row] for row in probabilities]
    return {"outputs": rows} if columnar else {"predictions": rows}


def status_answer(version: str, *, ready: bool) -> dict[str, Any]:
    """TF Serving's REST answer to ``GET /v1/models/{name}``."""
    return {
        "model_version_status": [
            {
                "version": version,
                "state": "AVAILABLE" if ready else "LOADING",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def metadata_answer(name: str, version: str, labels: Sequence[str]) -> dict[str, Any]:
    """TF Serving's REST answer to ``GET /v1/models/{name}/metadata``, plus the labels.

    The signature takes images of any size (float or uint8 pixels, or encoded bytes) and returns
    probabilities ``(N, C)`` in the order of ``metadata.labels``.
    """
    tensor_info = {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}] * 3 + [{"size": "3", "name": ""}]},
        "name": INPUT_NAME,
    }
    output_info = {
        "dtype": "DT_FLOAT",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": str(len(labels))}]},
        "name": OUTPUT_NAME,
    }
    signature = {
        "inputs": {INPUT_NAME: tensor_info},
        "outputs": {OUTPUT_NAME: output_info},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": version},
        "metadata": {
            "signature_def": {"signature_def": {SIGNATURE_NAME: signature}},
            "labels": list(labels),
        },
    }
