"""Fine-tuning stage: layer-wise learning rates, warm-up + cosine schedule, one epoch at a time."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from imgclf.preprocessing import PreprocessConfig
from imgclf.progress import progress
from imgclf.training.images import Augmenter, PixelRows, to_model_input
from imgclf.training.recipe import TrainConfig


def _stages(model: nn.Module) -> list[list[nn.Module]]:
    """The network as stages from input to output: stem, each block group, then the head.

    EfficientNet-style timm models have ``conv_stem``/``bn1``, ``blocks`` and ``conv_head``/
    ``bn2``/``classifier``; other architectures fall back to their top-level children.
    """
    net: Any = model  # timm attributes are not visible to type checkers
    if hasattr(net, "blocks") and hasattr(net, "conv_stem"):
        stem: list[nn.Module] = [net.conv_stem, net.bn1]
        head: list[nn.Module] = [
            m for m in (getattr(net, n, None) for n in ("conv_head", "bn2")) if m is not None
        ]
        head.append(net.get_classifier())
        return [stem, *[[block] for block in net.blocks], head]
    children = list(model.children())
    return [[child] for child in children[:-1]] + [[children[-1]]]


def freeze_early(model: nn.Module, blocks: int) -> list[nn.Module]:
    """Freeze the stem and the first ``blocks`` stages; return the frozen modules.

    Frozen modules must stay in eval mode (see :func:`set_train_mode`) so their batch-norm
    statistics keep the ImageNet values they were trained with.
    """
    frozen = [module for stage in _stages(model)[: blocks + 1] for module in stage]
    for module in frozen:
        module.requires_grad_(False)
    return frozen


def set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    """Train mode for the trainable part, eval mode for frozen modules."""
    model.train()
    for module in frozen:
        module.eval()


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, object]]:
    """AdamW parameter groups with layer-wise learning-rate decay.

    The learning rate shrinks by ``layer_decay`` per stage going down the network; norms and
    biases get no weight decay.
    """
    stages = _stages(model)
    groups: list[dict[str, object]] = []
    for depth, stage in enumerate(reversed(stages)):
        scale = config.layer_decay**depth
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for module in stage:
            for param in module.parameters():
                if param.requires_grad:
                    (no_decay if param.ndim <= 1 else decay).append(param)
        for params, weight_decay in ((decay, config.weight_decay), (no_decay, 0.0)):
            if params:
                groups.append({"params": params, "weight_decay": weight_decay, "lr_scale": scale})
    return groups


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class EpochStats:
    """Running loss/accuracy of one training epoch."""

    loss: float
    accuracy: float
    lr: float
    seconds: float
    images: int = 0


def _shuffled(total: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(total)
    # Drop a last batch of one: batch norm cannot train on a single image.
    for start in range(0, total - (1 if total % batch_size == 1 else 0), batch_size):
        yield order[start : start + batch_size]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    state: FinetuneState,
    desc: str,
    batches: Sequence[np.ndarray] | None = None,
) -> EpochStats:
    """One pass over the training images with fresh augmentation; steps the LR schedule.

    ``batches`` are this process's index batches when several processes train together (see
    :func:`imgclf.training.distributed.rank_batches`); None shuffles all images with
    ``state.rng``.
    """
    started = time.perf_counter()
    loss_fn = nn.CrossEntropyLoss(label_smoothing=state.config.label_smoothing)
    set_train_mode(model, state.frozen)
    total_loss, correct, seen, lr = 0.0, 0, 0, 0.0
    if batches is None:
        batches = list(_shuffled(len(images), state.config.batch_size, state.rng))
    bar = progress(batches, desc=desc, unit="batch", leave=False)
    for indices in bar:
        lr = state.apply_lr(optimizer)
        pixels = state.augmenter.batch([images[i] for i in indices])
        inputs = to_model_input(pixels, state.preprocess).to(state.device)
        targets = torch.from_numpy(labels[indices]).to(state.device)
        logits = model(inputs)
        loss = loss_fn(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        if state.ema is not None:
            state.ema.update(model, step=state.step)
        total_loss += float(loss.detach()) * len(indices)
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(indices)
        # refresh=False: the bar's own interval decides when to redraw (one line per few s in logs)
        bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    return EpochStats(
        total_loss / max(1, seen), correct / max(1, seen), lr, time.perf_counter() - started, seen
    )


@dataclass
class FinetuneState:
    """What the epoch loop needs besides the model and optimiser."""

    config: TrainConfig
    preprocess: PreprocessConfig
    augmenter: Augmenter
    frozen: list[nn.Module]
    device: torch.device
    rng: np.random.Generator
    total_steps: int
    warmup_steps: int
    step: int = 0
    ema: ModelEmaV3 | None = None

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The weights that are validated, kept and shipped: the moving average if there is one."""
        return model if self.ema is None else self.ema.module

    def apply_lr(self, optimizer: torch.optim.Optimizer) -> float:
        """Set every group's learning rate for the current step; return the peak group's."""
        factor = lr_factor(self.step, self.total_steps, self.warmup_steps, self.config.min_lr_ratio)
        peak = self.config.lr * factor
        for group in optimizer.param_groups:
            group["lr"] = peak * float(group.get("lr_scale", 1.0))
        return peak


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    pixels: PixelRows,
    config: PreprocessConfig,
    device: torch.device,
    batch_size: int = 64,
    desc: str = "evaluating",
) -> np.ndarray:
    """Softmax probabilities for uint8 ``(N, H, W, 3)`` pixels in fp32 (what serving computes)."""
    model.eval()
    chunks = []
    bar = progress(desc=desc, total=len(pixels), unit="img", leave=False)
    for start in range(0, len(pixels), batch_size):
        batch = torch.from_numpy(pixels[start : start + batch_size])
        logits = model(to_model_input(batch, config).to(device))
        chunks.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        bar.update(len(batch))
    bar.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
