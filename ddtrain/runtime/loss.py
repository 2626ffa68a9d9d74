"""The loss of training and evaluation: cross-entropy, or any callable (outputs, targets) -> scalar (loss._target_).

    ddtrain-train loss._target_=torch.nn.MSELoss                 # a class: built once with the keys added to `loss`
    ddtrain-train loss._target_=torch.nn.functional.huber_loss +loss.delta=0.5   # a function: called with them

Accuracy (argmax of the outputs against integer labels) is reported only for classification losses
(ddtrain.targets.reports_accuracy), so a regression or sequence model logs its loss alone.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ddtrain.errors import UserError
from ddtrain.targets import added_keys, locate, partial, reports_accuracy


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss: mean cross-entropy of class scores against class indices."""
    return F.cross_entropy(outputs, targets)


class Loss:
    """loss(outputs, targets) -> the mean loss, in fp32 (also under autocast); .accuracy: whether accuracy applies."""

    def __init__(self, fn, accuracy: bool, name: str):
        self.fn, self.accuracy, self.name = fn, accuracy, name

    def __call__(self, outputs, targets) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
            outputs = outputs.float()  # bf16/fp16 outputs: the loss and its reduction in fp32
        return self.fn(outputs, targets)


def build_loss(cfg=None) -> Loss:
    """The loss the config names (cfg: the `loss` node; None or no _target_: cross-entropy)."""
    accuracy = reports_accuracy(cfg)
    target = cfg.get("_target_") if cfg is not None else None
    if target is None:
        return Loss(cross_entropy, accuracy, "cross-entropy (the default)")
    key = "loss._target_"
    obj = locate(key, target)
    node = OmegaConf.create({"_target_": target, "_convert_": "all", **{k: cfg[k] for k in added_keys(cfg, "loss")}})
    bound = partial(key, target, node)
    if inspect.isclass(obj):  # a loss module such as torch.nn.MSELoss: build it once
        try:
            fn = bound()
        except Exception as exc:
            raise UserError(f"{key}={target} failed: {type(exc).__name__}: {exc}") from exc
    else:  # a function (outputs, targets, **keys)
        fn = bound
    if not callable(fn):
        raise UserError(f"{key}={target} gave a {type(fn).__name__}, not a callable (outputs, targets) -> loss")
    return Loss(fn, accuracy, target)


def check_fits(model, loss: Loss, x: torch.Tensor, y: torch.Tensor, model_key: str) -> None:
    """Before training: the model's outputs on two samples go into the loss and give a scalar; else a UserError.

    Runs in eval mode without gradients, so parameters, BatchNorm statistics and the RNG stay untouched.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                outputs = model(x)
            except Exception as exc:
                raise UserError(f"{model_key} fails on a batch of the dataset shaped {tuple(x.shape)}: "
                                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}") from exc
            try:
                value = loss(outputs, y)
            except Exception as exc:
                shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
                raise UserError(f"loss {loss.name} fails on the model's outputs {shape} and the targets "
                                f"{tuple(y.shape)} ({y.dtype}): {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0]}; set loss._target_ to a loss for them") from exc
    finally:
        model.train(was_training)
    if not (isinstance(value, torch.Tensor) and value.numel() == 1):
        raise UserError(f"loss {loss.name} must return a scalar tensor; it returned "
                        f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}")
    if loss.accuracy and not (isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and y.dim() == 1
                              and not y.is_floating_point()):
        raise UserError(f"accuracy needs class scores (batch, classes) and integer labels; the model gives "
                        f"{tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__} "
                        f"and the labels are {tuple(y.shape)} {y.dtype}: set loss.accuracy=false")


__all__ = ["Loss", "build_loss", "check_fits", "cross_entropy"]
