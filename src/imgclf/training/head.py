"""Head stage: fit the classifier on cached features of the frozen backbone.

Embedding the training set once and fitting a linear head on the cached features takes seconds,
where training the head through the network would take epochs. Starting fine-tuning from a good
head (rather than a random one) keeps the early, large gradients from damaging the pretrained
features ("linear probe, then fine-tune").
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from imgclf.errors import BundleError, ExportError
from imgclf.inference.runtimes import Runtime, open_runtime
from imgclf.preprocessing import PreprocessConfig
from imgclf.progress import progress
from imgclf.torch_onnx import torch_to_onnx
from imgclf.training.images import PixelRows, to_model_input
from imgclf.training.precision import FP32, Precision, Probe, autocast, timed_forward

log = logging.getLogger(__name__)

#: Weight decays tried for the linear head; the best on validation wins.
HEAD_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2)


def _batches(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


@torch.inference_mode()
def embed(
    model: nn.Module,
    pixels: PixelRows,
    config: PreprocessConfig,
    *,
    device: torch.device,
    precision: Precision = FP32,
    batch_size: int = 64,
    flip: bool = False,
    desc: str = "features",
) -> torch.Tensor:
    """Pooled pre-logit features of uint8 ``(N, H, W, 3)`` pixels, float32 ``(N, D)``.

    ``desc`` names the pass on the progress bar (``"features train 1/2"``; empty: no bar).
    """
    net: Any = model.eval()  # timm's forward_features/forward_head are untyped
    chunks = []
    bar = progress(desc=desc, total=len(pixels), unit="img", leave=False, disable=not desc)
    for part in _batches(len(pixels), batch_size):
        batch = torch.from_numpy(pixels[part])
        if flip:
            batch = batch.flip(2)
        inputs = to_model_input(batch, config).to(device)
        with precision.autocast(device):
            features = net.forward_head(net.forward_features(inputs), pre_logits=True)
        chunks.append(features.float().cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(chunks) if chunks else torch.zeros((0, 0))


class Features(Protocol):
    """Pre-logit features of the frozen network, float32 ``(N, D)``, one pass over ``pixels``."""

    #: What computes them (``"onnxruntime"`` or ``"torch"``), for the log and the manifest.
    engine: str
    #: Their precision and why it was chosen.
    precision: Precision

    def __call__(self, pixels: PixelRows, *, flip: bool = False, desc: str) -> torch.Tensor:
        """Features of uint8 ``(N, H, W, 3)`` pixels (mirrored with ``flip``)."""
        ...


class TorchFeatures:
    """Features computed by the torch model itself (GPUs, reduced precision, or no ONNX graph)."""

    engine = "torch"

    def __init__(
        self,
        model: nn.Module,
        config: PreprocessConfig,
        device: torch.device,
        precision: Precision = FP32,
    ) -> None:
        self._model, self._config, self._device, self.precision = model, config, device, precision

    def __call__(self, pixels: PixelRows, *, flip: bool = False, desc: str) -> torch.Tensor:
        """Features of uint8 ``(N, H, W, 3)`` pixels (see :func:`embed`)."""
        return embed(
            self._model,
            pixels,
            self._config,
            device=self._device,
            precision=self.precision,
            flip=flip,
            desc=desc,
        )


class _PreLogits(nn.Module):
    """A timm classifier up to its last linear layer, from uint8 ``(N, H, W, 3)`` pixels.

    The normalisation (:func:`imgclf.preprocessing.normalize`'s arithmetic) is part of the graph:
    ONNX Runtime fuses it into the first convolution's input on all its threads, where numpy
    took about 6 ms per 224 px image on one.
    """

    def __init__(self, model: nn.Module, config: PreprocessConfig) -> None:
        super().__init__()
        self.model: Any = model
        mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.mean: torch.Tensor
        self.inv_std: torch.Tensor
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        inputs = (pixels.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
        features: torch.Tensor = self.model.forward_head(
            self.model.forward_features(inputs), pre_logits=True
        )
        return features


class OnnxFeatures:
    """Features computed by ONNX Runtime from the frozen network, exported once.

    On a CPU the head stage is one forward pass over every image, and ONNX Runtime runs the
    exported graph several times faster than torch's eager CPU kernels (about 5x for Lite0 at
    224 px on an AVX2 machine), for the cost of one export (about 10 s). The features equal
    torch's within float32 rounding; the bundle keeps the torch weights either way.
    """

    engine = "onnxruntime"

    def __init__(
        self, model: nn.Module, config: PreprocessConfig, threads: int, precision: Precision = FP32
    ) -> None:
        """Export ``model``'s pre-logit part and open it with ``threads`` intra-op threads.

        Raises:
            ExportError: torch cannot export the network, or ONNX Runtime cannot load it.
        """
        self.precision = precision
        with tempfile.TemporaryDirectory(prefix="imgclf-features-") as scratch:
            path = Path(scratch) / "features.onnx"
            size = config.input_size
            example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
            module = _PreLogits(model, config).eval()
            torch_to_onnx(module, size, path, output_name="features", example=example)
            try:
                self._runtime: Runtime = open_runtime(path, "onnx", threads=threads)
            except BundleError as exc:
                raise ExportError(str(exc)) from exc

    def __call__(
        self, pixels: PixelRows, *, flip: bool = False, desc: str, batch_size: int = 32
    ) -> torch.Tensor:
        """Features of uint8 ``(N, H, W, 3)`` pixels, ``batch_size`` images per run."""
        chunks = []
        bar = progress(desc=desc, total=len(pixels), unit="img", leave=False, disable=not desc)
        for part in _batches(len(pixels), batch_size):
            batch = np.ascontiguousarray(pixels[part][:, :, ::-1] if flip else pixels[part])
            chunks.append(self._runtime.run(batch))
            bar.update(len(batch))
        bar.close()
        if not chunks:
            return torch.zeros((0, 0))
        return torch.from_numpy(np.concatenate(chunks).astype(np.float32, copy=False))


def onnx_features(
    model: nn.Module, config: PreprocessConfig, device: torch.device
) -> Features | None:
    """ONNX Runtime's extractor of ``model``'s features on a CPU.

    None on other devices, and when the network does not export (logged; torch computes the
    features then).
    """
    if device.type != "cpu":
        return None
    try:
        return OnnxFeatures(model, config, threads=torch.get_num_threads())
    except ExportError as exc:
        log.warning("features by torch: the network does not export to ONNX (%s)", exc)
        return None


def feature_extractor(
    model: nn.Module,
    config: PreprocessConfig,
    device: torch.device,
    precision: Precision = FP32,
    onnx: Features | None = None,
) -> Features:
    """The fastest way to compute ``model``'s features in ``precision`` here.

    fp32 on a CPU is ONNX Runtime's (``onnx`` when already built); torch computes reduced
    precision (chosen only where it beat fp32, see :func:`probe_for`), on accelerators, and for
    networks that do not export.
    """
    if precision.dtype is None:
        onnx = onnx or onnx_features(model, config, device)
        if onnx is not None:
            onnx.precision = precision
            return onnx
    return TorchFeatures(model, config, device, precision)


def probe_for(
    model: nn.Module,
    pixels: PixelRows,
    config: PreprocessConfig,
    device: torch.device,
    fp32: Features | None = None,
) -> Probe:
    """A precision probe: one forward pass of a batch of ``pixels`` (up to 16 images).

    Reduced precision runs in torch; fp32 runs in ``fp32`` when given (ONNX Runtime on a CPU,
    so bf16 must beat the fp32 engine that would really be used), else in torch.
    """
    net: Any = model.eval()
    sample = pixels[:16]
    inputs = to_model_input(torch.from_numpy(sample), config).to(device)

    @torch.inference_mode()
    def forward(dtype: torch.dtype | None) -> float:
        def run() -> object:
            if dtype is None and fp32 is not None:
                return fp32(sample, desc="")  # no progress bar
            with autocast(device, dtype):
                return net.forward_head(net.forward_features(inputs), pre_logits=True)

        return timed_forward(run, device)

    return forward


@dataclass
class HeadFit:
    """A fitted linear head and how well it did on validation."""

    weight: torch.Tensor
    bias: torch.Tensor
    weight_decay: float
    val_accuracy: float
    val_loss: float


def _fit_linear(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...],
    label_smoothing: float,
    steps: int = 300,
) -> list[nn.Linear]:
    """One linear head per weight decay, fitted together by full-batch AdamW.

    The heads share one matrix product per step (``features`` is read once for all of them; the
    product is memory-bound, so three heads cost about what one did) yet are independent: each
    has its own loss term, gradients and Adam moments, and starts from the same seeded init.
    """
    count = len(weight_decays)
    torch.manual_seed(0)
    init = nn.Linear(features.shape[1], num_classes)
    weight = nn.Parameter(init.weight.detach().repeat(count, 1, 1))  # (heads, C, D)
    bias = nn.Parameter(init.bias.detach().repeat(count, 1))  # (heads, C)
    decays = torch.tensor(weight_decays, dtype=features.dtype)
    optimizer = torch.optim.AdamW([weight, bias], lr=1e-2, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    targets = labels.unsqueeze(1).expand(-1, count)  # (N, heads)
    for _ in progress(range(steps), desc="head fit", unit="step"):
        optimizer.zero_grad()
        logits = (features @ weight.reshape(count * num_classes, -1).T).view(
            len(features), count, num_classes
        ) + bias  # (N, heads, C)
        losses = nn.functional.cross_entropy(
            logits.permute(0, 2, 1), targets, label_smoothing=label_smoothing, reduction="none"
        ).mean(0)  # (heads,)
        penalty = decays * weight.pow(2).sum(dim=(1, 2))
        torch.autograd.backward((losses + penalty).sum())
        optimizer.step()
        schedule.step()
    heads = []
    for index in range(count):
        head = nn.Linear(features.shape[1], num_classes)
        with torch.no_grad():
            head.weight.copy_(weight[index])
            head.bias.copy_(bias[index])
        heads.append(head)
    return heads


def fit_head(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    val_features: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    label_smoothing: float,
) -> HeadFit:
    """Fit a linear head for each candidate weight decay; keep the best on validation."""
    mean = train_features.mean(0)
    best: HeadFit | None = None
    # Each step is a few small operations: one thread does them in about 3 s for 3,000 images,
    # where two threads synchronising at every operation took 30 s on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        heads = _fit_linear(
            train_features - mean, train_labels, num_classes, HEAD_WEIGHT_DECAYS, label_smoothing
        )
    finally:
        torch.set_num_threads(threads)
    for decay, head in zip(HEAD_WEIGHT_DECAYS, heads, strict=True):
        with torch.no_grad():
            logits = head(val_features - mean)
            accuracy = float((logits.argmax(1) == val_labels).float().mean())
            loss = float(nn.functional.cross_entropy(logits, val_labels))
            # Fold the feature centring into the bias so the head applies to raw features.
            bias = head.bias - head.weight @ mean
        log.info("head wd=%g: val top1 %.4f loss %.4f", decay, accuracy, loss)
        if best is None or (accuracy, -loss) > (best.val_accuracy, -best.val_loss):
            best = HeadFit(
                head.weight.detach().clone(), bias.detach().clone(), decay, accuracy, loss
            )
    assert best is not None
    return best
