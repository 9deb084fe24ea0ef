"""The bundle's int8 ONNX model with the bundle's preprocessing, for the peer servers.

The peers (KServe, BentoML) run in environments of their own without imgclf, so this mirrors
``imgclf.preprocessing`` with Pillow and NumPy alone: JPEG draft decoding at the resize size, EXIF
orientation, RGB, resampling only the centre-crop window, mean/std normalisation, then ONNX
Runtime with the session options imgclf uses. ``bench_peers.py`` refuses to report when a peer's
top-1 differs from ``imgclf serve``'s on the parity images, so the two cannot drift apart unseen.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent areas become white (as imgclf's ``to_rgb``)."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


class BundleModel:
    """Top-1 class of JPEG bytes with a bundle's ONNX artifact (int8 first)."""

    def __init__(self, bundle: Path, threads: int = 0) -> None:
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
        artifacts = manifest["artifacts"]
        artifact = artifacts.get("onnx-int8") or artifacts["onnx"]
        pre = manifest["preprocessing"]
        self.labels: list[str] = list(manifest["labels"])
        self.size = int(pre.get("input_size", 224))
        crop_pct = float(pre.get("crop_pct", 0.875))
        self.resize = math.floor(self.size / crop_pct)
        self.squash = pre.get("crop_mode", "center") == "squash"
        self.resample = _RESAMPLE[pre.get("interpolation", "bicubic")]
        self.mean = np.asarray(pre.get("mean", (0.5, 0.5, 0.5)), dtype=np.float32) * 255.0
        std = np.asarray(pre.get("std", (0.5, 0.5, 0.5)), dtype=np.float32) * 255.0
        self.inv_std = 1.0 / std
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(bundle / artifact["file"]), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = artifact.get("input_name", "input")
        self.output_name = artifact.get("output_name", "logits")

    def pixels(self, data: bytes) -> np.ndarray:
        """Decode, resize and centre-crop to uint8 ``(H, W, 3)``."""
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format in ("JPEG", "MPO"):
                opened.draft("RGB", (self.resize, self.resize))
            opened.load()
            image = _rgb(ImageOps.exif_transpose(opened) or opened)
        width, height = image.size
        if self.squash:
            new_w = new_h = self.resize
        elif width <= height:
            new_w, new_h = self.resize, max(self.resize, round(height * self.resize / width))
        else:
            new_w, new_h = max(self.resize, round(width * self.resize / height)), self.resize
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        if (new_w, new_h) == (width, height):
            image = image.crop((left, top, left + self.size, top + self.size))
        else:
            sx, sy = width / new_w, height / new_h
            box = (left * sx, top * sy, (left + self.size) * sx, (top + self.size) * sy)
            image = image.resize((self.size, self.size), self.resample, box=box, reducing_gap=3.0)
        return np.asarray(image, dtype=np.uint8)

    def classify(self, data: bytes) -> dict[str, object]:
        """``{"class", "probability"}`` of one encoded image."""
        chw = np.moveaxis((self.pixels(data).astype(np.float32) - self.mean) * self.inv_std, -1, 0)
        batch = np.ascontiguousarray(chw[None])
        logits = self.session.run([self.output_name], {self.input_name: batch})[0][0]
        exp = np.exp(logits.astype(np.float32) - logits.max())
        probs = exp / exp.sum()
        best = int(np.argmax(probs))
        return {"class": self.labels[best], "probability": float(probs[best])}
