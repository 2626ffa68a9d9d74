"""Model registry: build_model(cfg, input_shape, num_classes) for every name in ddtrain.config.MODELS,
and for the user's own module named by model._target_ (ddtrain.models.targets).

Shape checks live here, before any module is built, so a model/dataset mismatch fails as one
UserError line that names the key instead of as a shape error deep inside a forward pass.
"""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Sequence, Tuple

from torch import nn

from ddtrain.config import MODELS
from ddtrain.errors import UserError
from ddtrain.models.alexnet import AlexNet
from ddtrain.models.cnn1d import CNN1d
from ddtrain.models.lenet import LeNet5
from ddtrain.models.mlp import MLP
from ddtrain.models.resnet import resnet18, resnet20, resnet50
from ddtrain.models.targets import build_target_model, model_name

MODEL_NAMES = MODELS  # the one list, shared with config validation


class _Entry(NamedTuple):
    build: Callable[..., nn.Module]  # (cfg, shape, num_classes) -> module
    kind: str  # "any" (flattened), "sequence" (L,) / (C, L), or "image" (C, H, W)
    min_hw: int = 1  # smallest height and width an image model accepts


_IMAGE = ("lenet5", "resnet20", "resnet18", "resnet50", "alexnet")
_REGISTRY: Dict[str, _Entry] = {
    "mlp": _Entry(lambda c, s, n: MLP(s, n, _hidden_sizes(c), _dropout(c)), "any"),
    "cnn1d": _Entry(lambda c, s, n: CNN1d(s, n, _channels(c)), "sequence"),
    "lenet5": _Entry(lambda c, s, n: LeNet5(s, n), "image", 28),
    "resnet20": _Entry(lambda c, s, n: resnet20(s[0], n), "image", 8),
    "resnet18": _Entry(lambda c, s, n: resnet18(s[0], n), "image"),
    "resnet50": _Entry(lambda c, s, n: resnet50(s[0], n), "image"),
    "alexnet": _Entry(lambda c, s, n: AlexNet(s[0], n, _dropout(c)), "image", 63),
}
assert set(_REGISTRY) == set(MODELS), "ddtrain.config.MODELS and the registry must list the same models"


def build_model(cfg, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build the network cfg.name for samples shaped input_shape (no batch dim); returns an fp32 CPU module.

    cfg is a ModelConfig or a DictConfig with the same fields; with cfg._target_ set, the user's module.
    Initialisation draws only from torch's global RNG, so the caller seeds with torch.manual_seed beforehand.
    """
    if getattr(cfg, "_target_", None):
        from omegaconf import OmegaConf

        return build_target_model(cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg),
                                  input_shape, num_classes)
    name = str(cfg.name)
    if name not in _REGISTRY:
        raise UserError(f"model={name} is not supported; choose one of: {', '.join(MODEL_NAMES)}")
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d < 1 for d in shape):
        raise UserError(f"model={name} got an invalid sample shape {shape}: check dataset.shape")
    if int(num_classes) < 1:
        raise UserError(f"model={name} got num_classes={num_classes}: check dataset.num_classes")
    entry = _REGISTRY[name]
    _check_shape(name, entry, shape)
    return entry.build(cfg, shape, int(num_classes)).float()


def _check_shape(name: str, entry: _Entry, shape: Tuple[int, ...]) -> None:
    if entry.kind == "image":
        if len(shape) != 3:
            alt = "model=cnn1d or model=mlp" if len(shape) <= 2 else "model=mlp"
            raise UserError(f"model={name} needs image samples shaped (channels, height, width); "
                            f"the dataset gives {shape}: use {alt}")
        if min(shape[1:]) < entry.min_hw:
            fits = [n for n in _IMAGE if _REGISTRY[n].min_hw <= min(shape[1:])]
            raise UserError(f"model={name} needs images of at least {entry.min_hw}x{entry.min_hw}; the dataset "
                            f"gives {shape}: use model={' or model='.join(fits + ['mlp'])}")
    elif entry.kind == "sequence" and len(shape) > 2:
        raise UserError(f"model={name} needs 1-D samples shaped (length,) or (channels, length); the dataset "
                        f"gives {shape}: use model=lenet5, resnet20, resnet18, resnet50, alexnet or mlp")
    elif entry.kind == "sequence" and shape[-1] < 3:
        raise UserError(f"model={name} needs sequences of length >= 3; the dataset gives {shape}: use model=mlp")


def _hidden_sizes(cfg) -> list:
    sizes = [int(h) for h in cfg.hidden_sizes]
    if any(h < 1 for h in sizes):
        raise UserError(f"model.hidden_sizes={sizes} must all be positive")
    return sizes


def _channels(cfg) -> int:
    if int(cfg.channels) < 1:
        raise UserError(f"model.channels={cfg.channels} must be positive")
    return int(cfg.channels)


def _dropout(cfg) -> float:
    p = float(cfg.dropout)
    if not 0.0 <= p < 1.0:
        raise UserError(f"model.dropout={cfg.dropout} must be in [0, 1)")
    return p


__all__ = ["MODEL_NAMES", "build_model", "model_name"]
