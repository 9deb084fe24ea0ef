"""``train``: folders of photos in, a verified model bundle (and a report) out.

The run is resumable: after every fine-tuning epoch the full state (weights, optimiser, schedule
position, best weights so far, history and random-number generators) is written atomically to
``<out>/checkpoint.pt``; ``resume=True`` continues from it and finishes exactly as an
uninterrupted run with the same seed would.

Started as several processes (``imgclf train --nproc N``, ``torchrun``), the run is data-parallel:
see :mod:`imgclf.training.distributed` for what each rank does. One process runs as it always has.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn

from imgclf.backbones import create_model, default_preprocess_config
from imgclf.bundle import Bundle, Manifest, load_bundle
from imgclf.data import DatasetSplits, load_dataset
from imgclf.errors import ConfigError, DatasetError
from imgclf.preprocessing import PreprocessConfig
from imgclf.progress import note, silence
from imgclf.training import distributed
from imgclf.training.distributed import SINGLE, Processes
from imgclf.training.finetune import (
    EpochStats,
    FinetuneState,
    freeze_early,
    param_groups,
    predict_probs,
    train_epoch,
)
from imgclf.training.head import (
    Features,
    feature_extractor,
    fit_head,
    onnx_features,
    probe_for,
)
from imgclf.training.images import Augmenter, DecodedSplit, Pixels, decode_split
from imgclf.training.precision import FP32, Precision, choose_precision
from imgclf.training.recipe import TrainConfig
from imgclf.training.resolution import (
    choose_epochs,
    choose_image_size,
    default_patience,
    median_short_side,
)

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_NAME = "history.json"


@dataclass
class TrainResult:
    """What a training run produced."""

    bundle: Bundle
    metrics: dict[str, dict[str, float]]
    seconds: float
    report: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device() -> torch.device:
    """A GPU when one is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prepared:
    """Decoded data and settings shared by both stages."""

    dataset: DatasetSplits
    preprocess: PreprocessConfig
    train_size: int
    splits: dict[str, DecodedSplit]
    device: torch.device
    image_size_reason: str = ""
    epochs: int = 0
    epochs_reason: str = ""
    patience: int = 3
    precision: Precision = FP32
    procs: Processes = SINGLE


def _preprocess_for(
    dataset: DatasetSplits, config: TrainConfig, backbone_size: int
) -> tuple[PreprocessConfig, str]:
    """The serving preprocessing to train for, and why its input size was chosen."""
    image_size, reason = config.image_size, "--image-size given"
    if image_size is None:
        short_side = median_short_side([r.path for r in dataset.splits["train"]])
        image_size, reason = choose_image_size(short_side, backbone_size)
    preprocess = default_preprocess_config(config.backbone, image_size)
    if config.crop_pct is not None:
        preprocess = dataclasses.replace(preprocess, crop_pct=config.crop_pct)
    if config.crop_mode is not None:
        preprocess = dataclasses.replace(preprocess, crop_mode=config.crop_mode)
    return preprocess, reason


def prepare(
    data: str | Path | DatasetSplits,
    config: TrainConfig,
    device: torch.device | None = None,
    procs: Processes = SINGLE,
) -> Prepared:
    """Load and check the dataset, then decode every split once (on ``device``, or the best)."""
    if isinstance(data, DatasetSplits):
        dataset = data
    else:
        dataset = load_dataset(
            data,
            val_fraction=config.val_fraction,
            test_fraction=config.test_fraction,
            seed=config.seed,
        )
    for split in ("train", "validation"):
        if not dataset.splits.get(split):
            raise DatasetError(f"{dataset.root}: no usable {split} images; training needs both")
    backbone_size = default_preprocess_config(config.backbone).input_size
    preprocess, size_reason = _preprocess_for(dataset, config, backbone_size)
    note(f"image size: {preprocess.input_size} px ({size_reason})")
    count = len(dataset.splits)
    decoded = {
        name: decode_split(
            [r.path for r in records],
            [r.label for r in records],
            preprocess,
            keep_train_images=name == "train" and config.epochs != 0,
            workers=config.workers,
            desc=f"decode {index}/{count} splits ({name})",
        )
        for index, (name, records) in enumerate(dataset.splits.items(), start=1)
    }
    train_size = config.resolved_train_size(preprocess.input_size)
    epochs, epochs_reason = config.epochs, "--epochs given"
    if epochs is None:
        epochs, epochs_reason = choose_epochs(preprocess.input_size, backbone_size)
    patience = default_patience(epochs) if config.patience is None else config.patience
    note(f"fine-tuning: up to {epochs} epochs ({epochs_reason}), patience {patience}")
    return Prepared(
        dataset,
        preprocess,
        train_size,
        decoded,
        device or pick_device(),
        size_reason,
        epochs,
        epochs_reason,
        patience,
        procs=procs,
    )


@dataclass
class HeadStage:
    """What the head stage produced: its history row and the fp32 features it computed.

    ``features`` holds pre-logit features per split, only when they were computed in fp32 on the
    serving pixels, so the final evaluation may reuse them while the network is unchanged.
    """

    row: dict[str, Any]
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The fp32 extractor that computed ``features``, kept for the final evaluation's other splits
    #: when no fine-tuning follows.
    extract: Features | None = None


def _embed(features: Features, pixels: Pixels, prep: Prepared, **options: Any) -> torch.Tensor:
    """``features`` of every row of ``pixels``: each rank computes its shard, all get all rows."""
    local = features(distributed.shard(pixels, prep.procs), **options)
    return distributed.gather_rows(local, len(pixels), prep.procs)


def _train_features(features: Features, prep: Prepared, config: TrainConfig) -> torch.Tensor:
    train = prep.splits["train"]
    passes = 2 if config.head_flip else 1
    chunks = [
        _embed(
            features,
            train.eval_pixels,
            prep,
            flip=flipped,
            desc=f"features train {index}/{passes}{' (flipped)' if flipped else ''}",
        )
        for index, flipped in enumerate((False, True)[:passes], start=1)
    ]
    return torch.cat(chunks)


def _head_stage(model: nn.Module, prep: Prepared, config: TrainConfig) -> HeadStage:
    train, val = prep.splits["train"], prep.splits["validation"]
    started = time.perf_counter()
    onnx = onnx_features(model, prep.preprocess, prep.device)
    # Rank 0 times the precisions; every rank must embed in the one it chose.
    precision = _choose_precision(model, prep, config, onnx) if prep.procs.is_main else None
    prep.precision = distributed.broadcast(precision, prep.procs) or FP32
    features = feature_extractor(model, prep.preprocess, prep.device, prep.precision, onnx)
    note(f"features: {features.engine} {prep.precision.name} ({prep.precision.reason})")
    log.info("features %s %s: %s", features.engine, prep.precision.name, prep.precision.reason)
    train_features = _train_features(features, prep, config)
    passes = len(train_features) // max(1, len(train))
    train_labels = torch.from_numpy(np.concatenate([train.labels] * passes))
    val_features = _embed(features, val.eval_pixels, prep, desc="features validation 1/1")
    fit = fit_head(
        train_features,
        train_labels,
        val_features,
        torch.from_numpy(val.labels),
        len(prep.dataset.classes),
        config.label_smoothing,
    )
    classifier: Any = model.get_classifier()  # type: ignore[operator]
    with torch.no_grad():
        classifier.weight.copy_(fit.weight)
        classifier.bias.copy_(fit.bias)
        train_logits = train_features @ fit.weight.T + fit.bias
        train_acc = float((train_logits.argmax(1) == train_labels).float().mean())
        train_loss = float(nn.functional.cross_entropy(train_logits, train_labels))
    row = {
        "epoch": 0,
        "stage": "head",
        "train_loss": train_loss,
        "train_acc": train_acc,
        "val_loss": fit.val_loss,
        "val_acc": fit.val_accuracy,
        "lr": 1e-2,
        "weight_decay": fit.weight_decay,
        "seconds": time.perf_counter() - started,
    }
    if prep.precision.dtype is not None:
        return HeadStage(row)  # reduced-precision features differ from what serving computes
    cached = {"train": train_features[: len(train)], "validation": val_features}
    # Fine-tuning will change the network: its extractor would be stale by the final evaluation.
    return HeadStage(row, cached, features if prep.epochs == 0 else None)


def _validate(model: nn.Module, prep: Prepared, desc: str) -> tuple[float, float]:
    val = prep.splits["validation"]
    pixels = distributed.shard(val.eval_pixels, prep.procs)
    probs = predict_probs(model, pixels, prep.preprocess, prep.device, desc=desc)
    if prep.procs.enabled:
        probs = distributed.gather_rows(torch.from_numpy(probs), len(val), prep.procs).numpy()
    picked = probs[np.arange(len(val.labels)), val.labels]
    loss = float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())
    return float((probs.argmax(1) == val.labels).mean()), loss


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


@dataclass
class LoopState:
    """Progress of the fine-tuning loop; what a checkpoint restores."""

    epoch: int = 0
    best_score: tuple[float, float] = (-1.0, 0.0)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    best_finetune_score: tuple[float, float] = (-1.0, 0.0)
    stale_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _finetune(
    model: nn.Module,
    prep: Prepared,
    config: TrainConfig,
    loop: LoopState,
    checkpoint: Path,
    resumed: dict[str, Any] | None,
    stop_after: int | None = None,
) -> LoopState:
    procs = prep.procs
    frozen = freeze_early(model, config.freeze_blocks)
    net = distributed.wrap(model, prep.device, procs)  # rank 0's weights on every rank
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr)
    train = prep.splits["train"]
    steps_per_epoch = max(1, len(train) // config.batch_size)
    rng = np.random.default_rng(config.seed)
    if procs.enabled:  # each rank its own augmentation and dropout draws
        rng = np.random.default_rng([config.seed, procs.rank])
        torch.manual_seed(int(rng.integers(2**63)))
    state = FinetuneState(
        config=config,
        preprocess=prep.preprocess,
        augmenter=Augmenter(prep.train_size, config.augment, config.crop_scale),
        frozen=frozen,
        device=prep.device,
        rng=rng,
        total_steps=steps_per_epoch * prep.epochs,
        warmup_steps=round(steps_per_epoch * config.warmup_epochs),
        ema=ModelEmaV3(model, decay=config.ema_decay, use_warmup=True)
        if config.ema_decay
        else None,
    )
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        if state.ema is not None:
            state.ema.module.load_state_dict(resumed["ema"])
        state.step = resumed["step"]
        if resumed["rng"] is not None:
            rng.bit_generator.state = resumed["rng"]["numpy"]
            torch.set_rng_state(resumed["rng"]["torch"])
    target = prep.epochs if stop_after is None else min(prep.epochs, loop.epoch + stop_after)
    while loop.epoch < target and loop.stale_epochs < prep.patience:
        epoch = loop.epoch + 1
        batches = None
        if procs.enabled:
            batches = distributed.rank_batches(
                len(train), config.batch_size, config.seed, epoch, procs
            )
        stats = _all_ranks(
            train_epoch(
                net,
                optimizer,
                train.train_images,
                train.labels,
                state,
                f"epoch {epoch}/{prep.epochs}",
                batches,
            ),
            procs,
        )
        evaluated = state.evaluated(model)
        val_acc, val_loss = _validate(evaluated, prep, f"validate {epoch}/{prep.epochs}")
        loop.history.append(
            {
                "epoch": epoch,
                "stage": "finetune",
                "train_loss": stats.loss,
                "train_acc": stats.accuracy,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "lr": stats.lr,
                "seconds": stats.seconds,
            }
        )
        # Beside the progress bars (stderr), one line per epoch stays on screen.
        note(
            f"epoch {epoch}/{prep.epochs}: train loss {stats.loss:.4f} acc {stats.accuracy:.3f}"
            f" | val loss {val_loss:.4f} acc {val_acc:.4f}"
            f"{' (moving average)' if state.ema is not None else ''} | {stats.seconds:.0f} s"
        )
        loop.epoch = epoch
        score = (val_acc, -val_loss)
        if score > loop.best_score:
            loop.best_score = score
            loop.best_state = copy.deepcopy(evaluated.state_dict())
            loop.best_epoch = epoch
        # Patience counts fine-tuning epochs only: the head stage is a fallback, not a bar that
        # early, high-learning-rate epochs must clear.
        if score > loop.best_finetune_score:
            loop.best_finetune_score, loop.stale_epochs = score, 0
        else:
            loop.stale_epochs += 1
        payload = {
            # The schedule as resolved, so a resumed run keeps it (see _adopt_schedule).
            "config": {**config.to_dict(), "epochs": prep.epochs, "patience": prep.patience},
            "labels": prep.dataset.classes,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "ema": None if state.ema is None else state.ema.module.state_dict(),
            "step": state.step,
            "rng": _rng_state(rng),
            "loop": loop.__dict__,
        }
        if procs.enabled:  # every rank's generators, so a resumed run draws what it would have
            payload["rank_rng"] = distributed.gather_objects(payload["rng"], procs)
            payload["processes"] = procs.world_size
        if procs.is_main:
            _save_checkpoint(checkpoint, payload)
    return loop


def _all_ranks(stats: EpochStats, procs: Processes) -> EpochStats:
    """One epoch's loss and accuracy over every rank's images (this rank's in one process)."""
    if not procs.enabled:
        return stats
    loss, correct, images = distributed.all_sum(
        [stats.loss * stats.images, stats.accuracy * stats.images, float(stats.images)], procs
    )
    seen = max(1.0, images)
    return dataclasses.replace(stats, loss=loss / seen, accuracy=correct / seen, images=int(images))


def _load_checkpoint(path: Path, config: TrainConfig, labels: list[str]) -> dict[str, Any]:
    payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    saved = payload["config"]
    for key in (
        "backbone",
        "image_size",
        "train_size",
        "crop_pct",
        "crop_mode",
        "freeze_blocks",
        "ema_decay",
        "batch_size",
        "seed",
    ):
        if saved.get(key) != getattr(config, key):
            raise ConfigError(
                f"{path}: cannot resume, {key} was {saved.get(key)!r} and is now "
                f"{getattr(config, key)!r}; use the original settings or a new output folder"
            )
    if payload["labels"] != labels:
        raise ConfigError(f"{path}: cannot resume, the dataset's classes changed")
    return payload


def _split_probs(
    model: nn.Module, prep: Prepared, name: str, extract: Features, cached: torch.Tensor | None
) -> np.ndarray:
    """Probabilities of one split in fp32 with the serving preprocessing.

    The classifier applied to the network's pre-logit features gives what a full forward pass
    would; ``cached`` are the head stage's features of this split (only while the network is
    unchanged since), otherwise ``extract`` computes them in one pass.
    """
    split = prep.splits[name]
    if cached is None:
        cached = extract(split.eval_pixels, desc=f"evaluate {name}")
    classifier: Any = model.get_classifier()  # type: ignore[operator]
    with torch.no_grad():
        weight = classifier.weight.detach().float().cpu()
        logits = nn.functional.linear(
            cached.float(), weight, classifier.bias.detach().float().cpu()
        )
        return torch.softmax(logits, dim=1).numpy()


def _final_metrics(
    model: nn.Module,
    prep: Prepared,
    config: TrainConfig,
    head: tuple[dict[str, torch.Tensor], Features | None] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and predictions per split (train only with ``eval_train``).

    ``head`` (None once the network changed since the head stage) holds the head stage's cached
    features per split and, when it can still serve, the extractor that computed them.
    """
    from imgclf.data import ImageRecord
    from imgclf.evaluation import SplitPredictions, compute_metrics

    cached, extract = head or ({}, None)
    if extract is None:
        extract = feature_extractor(model, prep.preprocess, prep.device)

    results: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for name, split in prep.splits.items():
        if name == "train" and not config.eval_train:
            continue
        probs = _split_probs(model, prep, name, extract, cached.get(name))
        results[name] = compute_metrics(probs, split.labels, prep.dataset.classes)
        records = [ImageRecord(p, int(y)) for p, y in zip(split.paths, split.labels, strict=True)]
        predictions[name] = SplitPredictions(records, probs)
    return results, predictions


def _choose_precision(
    model: nn.Module, prep: Prepared, config: TrainConfig, fp32: Features | None
) -> Precision:
    """Feature-extraction precision on this device, fp32 timed on ``fp32`` when given."""
    pixels = prep.splits["train"].eval_pixels
    probe = probe_for(model, pixels, prep.preprocess, prep.device, fp32)
    engine = f" ({fp32.engine})" if fp32 is not None else ""
    return choose_precision(prep.device, config.bf16, probe, fp32_name=f"fp32{engine}")


def _write_bundle(
    out: Path,
    model: nn.Module,
    prep: Prepared,
    config: TrainConfig,
    training: dict[str, Any],
    metrics: dict[str, dict[str, float]],
) -> Bundle:
    name = config.name or prep.dataset.root.name
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    model_path = out / "model.pt"
    torch.save(state, model_path)
    manifest = Manifest(
        name=name,
        version=config.version,
        backbone=config.backbone,
        labels=prep.dataset.classes,
        preprocessing=prep.preprocess.to_dict(),
        metrics=metrics,
        dataset=prep.dataset.summary(prep.dataset.root.name),
        training=training,
    )
    bundle = Bundle(root=out, manifest=manifest)
    bundle.add_artifact("pytorch", model_path, format="pytorch", precision="fp32")
    return bundle


def _release_train_pixels(prep: Prepared, config: TrainConfig) -> None:
    """Free the training split's serving pixels once the head stage has used them.

    Fine-tuning crops from ``train_images``; only ``eval_train`` evaluates these pixels again.
    Freeing them before the training activations are allocated lowers the run's peak memory.
    """
    train = prep.splits["train"]
    if prep.epochs > 0 and not config.eval_train:
        train.eval_pixels = train.eval_pixels.emptied()


def _adopt_schedule(prep: Prepared, config: TrainConfig, saved: dict[str, Any]) -> None:
    """A resumed run keeps the interrupted run's epochs and patience unless they are given again.

    The defaults depend on the input size, and an interrupted run may have set them itself.
    """
    if config.epochs is None and isinstance(saved.get("epochs"), int):
        prep.epochs, prep.epochs_reason = saved["epochs"], "the interrupted run's schedule"
    if config.patience is None and isinstance(saved.get("patience"), int):
        prep.patience = saved["patience"]
    note(f"resuming: up to {prep.epochs} epochs ({prep.epochs_reason}), patience {prep.patience}")


def _read_checkpoint(checkpoint: Path, config: TrainConfig, labels: list[str]) -> dict[str, Any]:
    if not checkpoint.is_file():
        raise ConfigError(f"nothing to resume: {checkpoint} does not exist")
    return _load_checkpoint(checkpoint, config, labels)


def _resume(
    model: nn.Module, checkpoint: Path, config: TrainConfig, labels: list[str], procs: Processes
) -> dict[str, Any]:
    """Load an interrupted run's checkpoint into ``model``; return the checkpoint.

    With several processes rank 0 reads it and sends it to the others (only rank 0 needs the
    output folder); each rank takes back its own random-number state when the run has as many
    processes as the interrupted one, and starts fresh generators otherwise.
    """
    if not procs.enabled:
        resumed = _read_checkpoint(checkpoint, config, labels)
        model.load_state_dict(resumed["model"])
        return resumed
    read: tuple[dict[str, Any] | None, str] = (None, "")
    if procs.is_main:
        try:
            read = (_read_checkpoint(checkpoint, config, labels), "")
        except ConfigError as exc:
            read = (None, str(exc))
    payload, error = distributed.broadcast(read, procs)
    if payload is None:
        raise ConfigError(error)
    model.load_state_dict(payload["model"])
    states = payload.get("rank_rng") or [payload["rng"]]
    if len(states) == procs.world_size:
        payload["rng"] = states[procs.rank]
    else:
        note(
            f"resuming with {procs.world_size} processes where the checkpoint had {len(states)}: "
            "random draws differ from those of an uninterrupted run"
        )
        payload["rng"] = None
    return payload


def _after_head(model: nn.Module, head: HeadStage) -> LoopState:
    """The loop's start: the head stage is epoch 0 and the best weights so far."""
    loop = LoopState(best_state=copy.deepcopy(model.state_dict()))
    loop.history.append(head.row)
    loop.best_score = (head.row["val_acc"], -head.row["val_loss"])
    return loop


def _agree_on_resume(checkpoint: Path, resume: bool | Literal["auto"], procs: Processes) -> bool:
    """Whether to resume: ``"auto"`` asks rank 0 whether there is a checkpoint.

    Every process must do the same, or they would wait on each other forever: a run whose
    processes were given different ``resume`` values is refused.
    """
    if resume == "auto":
        found = checkpoint.is_file() if procs.is_main else None
        resume = bool(distributed.broadcast(found, procs))
        if resume:
            note(f"resuming from {checkpoint}")
        return resume
    if len(set(distributed.gather_objects(resume, procs))) > 1:
        raise ConfigError("resume was given to some training processes and not to others")
    return resume


def _training_record(
    config: TrainConfig,
    prep: Prepared,
    loop: LoopState,
    timings: dict[str, float],
    model_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``training`` section: the recipe and how this run went."""
    return {
        **config.to_dict(),
        "model_kwargs": model_kwargs,
        "train_size": prep.train_size,
        "best_epoch": loop.best_epoch,
        "epochs_run": loop.epoch,
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "device": str(prep.device),
        "precision": prep.precision.to_dict(),
        "image_size_reason": prep.image_size_reason,
        "epochs": prep.epochs,
        "epochs_reason": prep.epochs_reason,
        "patience": prep.patience,
        "threads": torch.get_num_threads(),
        "processes": prep.procs.world_size,
        "torch_version": torch.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus",
    }


def train(
    data: str | Path | DatasetSplits,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool | Literal["auto"] = False,
    report: bool = True,
    stop_after: int | None = None,
) -> TrainResult | None:
    """Train a classifier on a folder-per-class dataset and write a bundle to ``out_dir``.

    Args:
        data: Dataset root (see :func:`imgclf.data.load_dataset`) or a loaded dataset.
        out_dir: Bundle directory to write (``manifest.json``, ``model.pt``, ``history.json``,
            ``report/``).
        config: The recipe; defaults to :class:`TrainConfig`'s defaults.
        resume: Continue an interrupted run from ``out_dir/checkpoint.pt``; ``"auto"``: when
            that file exists, else start afresh (for jobs that restart themselves).
        report: Also write the evaluation report (plots, per-class figures, mistakes).
        stop_after: Stop after this many fine-tuning epochs in this call, leaving the checkpoint
            for a later ``resume=True`` (time-boxed runs, e.g. on preemptible machines).

    Returns:
        The bundle, its metrics per split, and timings; None when ``stop_after`` stopped the run
        before it finished, and in every process of a multi-process run but rank 0's (which
        alone writes the bundle).

    Raises:
        DatasetError: The data cannot be used for training.
        ConfigError: Bad settings, or a checkpoint that does not match them.
        WeightsUnavailableError: Pretrained weights cannot be loaded.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = distributed.from_env()
    if not procs.is_main:
        silence()  # rank 0 shows the progress
    device = distributed.start(procs, config.threads)
    try:
        return _train(data, out, config, procs, device, started, resume, report, stop_after)
    finally:
        distributed.finish(procs)


def _train(
    data: str | Path | DatasetSplits,
    out: Path,
    config: TrainConfig,
    procs: Processes,
    device: torch.device | None,
    started: float,
    resume: bool | Literal["auto"],
    report: bool,
    stop_after: int | None,
) -> TrainResult | None:
    resume = _agree_on_resume(out / CHECKPOINT_NAME, resume, procs)
    seed_everything(config.seed)
    timings: dict[str, float] = {}
    prep = prepare(data, config, device, procs)
    timings["load_and_decode_s"] = time.perf_counter() - started
    labels = prep.dataset.classes
    model_kwargs = {"drop_rate": config.drop_rate, "drop_path_rate": config.drop_path_rate}
    model = create_model(config.backbone, len(labels), pretrained=config.pretrained, **model_kwargs)
    model = model.to(prep.device).to(memory_format=torch.channels_last)
    checkpoint = out / CHECKPOINT_NAME
    if resume:
        if procs.is_main:  # the bundle's writer
            prep.precision = _choose_precision(model, prep, config, None)  # recorded, not used
        resumed = _resume(model, checkpoint, config, labels, procs)
        _adopt_schedule(prep, config, resumed["config"])
        loop, head_features, extract = LoopState(**resumed["loop"]), None, None
    else:
        mark = time.perf_counter()
        head = _head_stage(model, prep, config)
        timings["head_s"] = time.perf_counter() - mark
        loop, resumed = _after_head(model, head), None
        head_features, extract = head.features, head.extract
    _release_train_pixels(prep, config)
    mark = time.perf_counter()
    loop = _finetune(model, prep, config, loop, checkpoint, resumed, stop_after)
    timings["finetune_s"] = time.perf_counter() - mark
    if loop.epoch < prep.epochs and loop.stale_epochs < prep.patience:
        log.info("stopped after epoch %d; continue with resume=True", loop.epoch)
        return None
    if not procs.is_main:
        return None  # rank 0 evaluates and writes the bundle
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    mark = time.perf_counter()
    # The best weights are the head stage's (epochs=0, or no fine-tuned epoch beat it): the
    # network is unchanged, so its features need not be computed again.
    unchanged = loop.best_epoch == 0
    results, predictions = _final_metrics(
        model, prep, config, (head_features or {}, extract) if unchanged else None
    )
    timings["final_eval_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started
    metrics = {name: result.summary() for name, result in results.items()}
    training = _training_record(config, prep, loop, timings, model_kwargs)
    bundle = _write_bundle(out, model, prep, config, training, metrics)
    (out / HISTORY_NAME).write_text(json.dumps(loop.history, indent=2) + "\n", encoding="utf-8")
    checkpoint.unlink(missing_ok=True)
    report_path = None
    if report:
        from imgclf.evaluation import write_report

        report_path = write_report(
            out / "report",
            bundle_manifest=bundle.manifest,
            results=results,
            predictions=predictions,
            history=loop.history,
            artifact="pytorch",
            data_root=prep.dataset.root,
            problems=prep.dataset.problems,
        )
    return TrainResult(load_bundle(out), metrics, timings["total_s"], report_path, timings)
