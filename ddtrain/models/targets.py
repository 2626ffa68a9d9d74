"""The user's own nn.Module through model._target_, built with hydra.utils.instantiate.

    ddtrain-train model._target_=mynets.WideNet +model.width=512

The target (a class or a function returning a module) receives the keys the user added to the model
node, plus input_shape (a tuple, no batch dim) and num_classes from the dataset when its signature
names them (a value the user set wins). ddtrain's own model keys are not passed, except hidden_sizes,
channels and dropout when the signature names them and the user changed them from ddtrain's default
(passing ddtrain's default would silently replace the constructor's own).
"""

from __future__ import annotations

from typing import Sequence

from omegaconf import OmegaConf
from torch import nn

from ddtrain.config import ModelConfig
from ddtrain.errors import UserError
from ddtrain.targets import added_keys, call, locate, takes

SHARED_KEYS = ("hidden_sizes", "channels", "dropout")  # ddtrain's model keys a user's constructor may share
FROM_DATASET = ("input_shape", "num_classes")


def target_kwargs(cfg, target) -> dict:
    """The keyword arguments from the config that go to the target (see the module docstring)."""
    kwargs = {k: cfg[k] for k in added_keys(cfg, "model")}
    defaults = OmegaConf.structured(ModelConfig)
    for key in SHARED_KEYS:
        value = cfg.get(key)
        if takes(target, key) and key not in kwargs and value != defaults[key]:
            kwargs[key] = value
    return kwargs


def build_target_model(cfg, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Instantiate cfg._target_ with its keys (and the dataset's shape and classes if asked); a UserError otherwise."""
    key, path = "model._target_", str(cfg._target_)
    target = locate(key, path)
    node = {"_target_": path, "_convert_": "all", **target_kwargs(cfg, target)}
    given = {"input_shape": tuple(int(d) for d in input_shape), "num_classes": int(num_classes)}
    extra = {k: v for k, v in given.items() if takes(target, k) and k not in node}
    model = call(key, path, OmegaConf.create(node), **extra)
    if not isinstance(model, nn.Module):
        raise UserError(f"{key}={path} returned a {type(model).__name__}, not a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"{key}={path} has no trainable parameters")
    return model.float()


def model_name(cfg) -> str:
    """What to call the model in logs and summary.json: the target's dotted path, or the built-in name."""
    target = cfg.get("_target_") if hasattr(cfg, "get") else getattr(cfg, "_target_", None)
    return str(target) if target else str(cfg.name)


__all__ = ["build_target_model", "model_name", "target_kwargs"]
