"""The training recipe: every knob of ``imgclf train`` in one validated dataclass.

The defaults are the recipe measured on clothing-small (see docs/benchmarks.md); they need no
tuning for other folder-per-class datasets of photos:

1. **Head stage**: the frozen ImageNet backbone embeds every training and validation image once
   (the serving centre crop; its mirror image too with ``head_flip``; bf16 only where the device
   runs it natively and faster, see :mod:`imgclf.training.precision`); a linear head is fitted
   on those cached features in seconds, with the weight decay picked on the validation split.
   With ``epochs=0`` the final evaluation reuses those features.
2. **Fine-tuning stage**: the whole network except the stem and the first blocks is fine-tuned at a
   lower resolution than it is evaluated at (FixRes: random-resized crops make objects look
   larger than centre crops do, and training at ~80% of the test size both compensates and makes
   each step about twice as cheap), with RandomResizedCrop + flip + TrivialAugment, label
   smoothing, AdamW with layer-wise learning-rate decay, linear warm-up then cosine decay, early
   stopping on validation, the best epoch kept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from imgclf.backbones import DEFAULT_BACKBONE, resolve_backbone
from imgclf.errors import ConfigError
from imgclf.preprocessing import CropMode


@dataclass
class TrainConfig:
    """Settings for one training run.

    Attributes:
        backbone: timm model name or alias (``lite0``, ``lite1``, ``lite2``).
        pretrained: Start from ImageNet weights (strongly recommended).
        image_size: Evaluation/serving input size; None takes the backbone's pretrained size,
            or less for small photos (see :mod:`imgclf.training.resolution`).
        train_size: Fine-tuning input size; None means 80% of ``image_size`` (multiple of 16).
        crop_pct: Share of the short side kept by the evaluation/serving centre crop. 1.0 keeps
            the whole short side, so details at the edges (sleeves, hems) stay in view; None
            takes the backbone's ImageNet value (0.875 for the Lite family).
        crop_mode: ``center`` keeps the aspect ratio and centre-crops a square; ``squash``
            resizes the whole image to a square, so nothing is cut off (a 3:4 portrait photo
            loses the top and bottom eighth of its height to a centre crop); None takes the
            backbone's ImageNet value (``center`` for the Lite family).
        epochs: Maximum fine-tuning epochs (0 trains the head only); None takes 8, or more for
            small photos trained below the backbone's size (see
            :func:`imgclf.training.resolution.choose_epochs`).
        batch_size: Images per optimisation step.
        lr: Peak learning rate of the head and the last block; earlier blocks get
            ``lr * layer_decay ** depth``.
        layer_decay: Learning-rate factor per block going down the network.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        label_smoothing: Cross-entropy label smoothing.
        warmup_epochs: Linear warm-up length, in epochs (fractions allowed).
        min_lr_ratio: Final learning rate as a fraction of the peak (cosine floor).
        freeze_blocks: Number of early blocks (after the stem) kept frozen while fine-tuning.
        augment: ``trivial`` (RandomResizedCrop + flip + TrivialAugmentWide), ``light``
            (crop + flip) or ``none`` (centre crop).
        crop_scale: Smallest area fraction RandomResizedCrop keeps.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth rate.
        ema_decay: Keep an exponential moving average of the weights with this decay (with
            warm-up, so early steps move it faster) and validate, keep and ship the average
            instead of the raw weights; 0 turns it off.
        patience: Stop after this many epochs without a better validation score; None takes
            3 of every 8 epochs of the schedule (3 for 8 epochs, 9 for 24), so a longer
            schedule is not stopped by the noise of its high-learning-rate epochs.
        seed: Seed for splits, augmentation order and initialisation.
        val_fraction: Validation share carved from train when the data has no validation split.
        test_fraction: Test share carved when the data is a single folder of classes.
        threads: CPU threads for torch (None: all cores).
        workers: Threads decoding images.
        bf16: Reduced precision (bf16; fp16 on GPUs without bf16) for the head stage's feature
            extraction: True forces it, False forces fp32, None (default) uses it only where
            the device runs it natively and a short timing shows it faster.
        head_flip: Also embed the mirror image of every training image for the head fit (a
            second pass over the training set).
        eval_train: Also evaluate the training split at the end (metrics, report); off by
            default because it is the largest split and says little about the model.
        name: Model name written to the manifest.
        version: Model version written to the manifest.
    """

    backbone: str = DEFAULT_BACKBONE
    pretrained: bool = True
    image_size: int | None = None
    train_size: int | None = None
    crop_pct: float | None = 1.0
    crop_mode: CropMode | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    freeze_blocks: int = 2
    augment: str = "trivial"
    crop_scale: float = 0.25
    drop_rate: float = 0.2
    drop_path_rate: float = 0.1
    ema_decay: float = 0.0
    patience: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    threads: int | None = None
    workers: int = 4
    bf16: bool | None = None
    head_flip: bool = False
    eval_train: bool = False
    name: str | None = None
    version: str = "1"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.backbone = resolve_backbone(self.backbone)
        checks = [
            (self.epochs is None or self.epochs >= 0, "epochs must be >= 0"),
            (
                self.batch_size >= 2,
                "batch_size must be >= 2 (batch norm needs more than one image)",
            ),
            (self.lr > 0, "lr must be > 0"),
            (0 < self.layer_decay <= 1, "layer_decay must be in (0, 1]"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 <= self.min_lr_ratio <= 1, "min_lr_ratio must be in [0, 1]"),
            (self.freeze_blocks >= 0, "freeze_blocks must be >= 0"),
            (
                self.augment in ("trivial", "light", "none"),
                "augment must be trivial, light or none",
            ),
            (
                self.crop_mode is None or self.crop_mode in get_args(CropMode),
                f"crop_mode must be one of {', '.join(get_args(CropMode))}",
            ),
            (0.05 <= self.crop_scale <= 1, "crop_scale must be in [0.05, 1]"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1"),
            (
                self.ema_decay == 0 or 0.9 <= self.ema_decay < 1,
                "ema_decay must be 0 (off) or in [0.9, 1)",
            ),
            (self.workers >= 1, "workers must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.crop_pct is not None and not 0.1 <= self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1.0], got {self.crop_pct}")
        for size in (self.image_size, self.train_size):
            if size is not None and not 32 <= size <= 1024:
                raise ConfigError(f"image sizes must be between 32 and 1024, got {size}")

    def resolved_train_size(self, image_size: int) -> int:
        """Fine-tuning resolution: explicit, or 80% of the evaluation size rounded to 16."""
        if self.train_size is not None:
            return self.train_size
        return max(32, round(image_size * 0.8 / 16) * 16)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, stored in the manifest's ``training`` section."""
        return asdict(self)
