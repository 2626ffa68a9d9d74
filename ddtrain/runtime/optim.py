"""Optimizers, LARS, learning-rate scaling and the warmup + decay schedule.

Learning-rate policy for large batches (Goyal et al. 2017): scale train.lr from
train.base_batch_size to the global batch size, warm up gradually from the unscaled
LR, then decay. Weight decay (and LARS adaptation) skip 1-D parameters such as
biases and norm weights.
"""

from __future__ import annotations

import functools
import math
from typing import Iterable, List, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ddtrain.config import LR_SCALING, OPTIMIZERS, SCHEDULES, OptimizerConfig
from ddtrain.errors import UserError


# --------------------------------------------------------------------------- LR scaling


def scaled_lr(lr: float, global_batch_size: int, base_batch_size: int, rule: str) -> float:
    """The LR for global_batch_size, given lr at base_batch_size: linear, sqrt or none scaling."""
    if rule not in LR_SCALING:
        raise UserError(f"train.lr_scaling={rule} is not supported; choose one of: {', '.join(LR_SCALING)}")
    if not global_batch_size > 0:
        raise UserError(f"train.global_batch_size={global_batch_size} must be positive")
    if not base_batch_size > 0:
        raise UserError(f"train.base_batch_size={base_batch_size} must be positive")
    ratio = global_batch_size / base_batch_size
    if rule == "linear":
        return lr * ratio
    if rule == "sqrt":
        return lr * math.sqrt(ratio)
    return lr


# --------------------------------------------------------------------------- LARS


class Lars(torch.optim.Optimizer):
    """LARS (You, Gitman, Ginsburg 2017) with the momentum form of NVIDIA's/MLPerf's implementation.

    For a group with lars=True, each parameter p with gradient g is updated as
        g' = g + weight_decay * p
        local_lr = trust_coefficient * ||p|| / ||g'||   (1 if either norm is 0)
        v = momentum * v + lr * local_lr * g'
        p = p - v
    A group with lars=False is plain SGD with momentum (same v/p update, local_lr = 1), with
    its weight_decay as an L2 term; build_optimizer gives that group weight_decay = 0.
    """

    def __init__(self, params: Iterable, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, lars: bool = True):
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not momentum >= 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not trust_coefficient > 0.0:
            raise ValueError(f"Invalid trust_coefficient value: {trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars=lars)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns the closure's loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
            eta = group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lars does not support sparse gradients")
                g = p.grad.add(p, alpha=wd) if wd != 0 else p.grad
                if group["lars"]:
                    p_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    # torch.where instead of a Python `if` keeps the test on the device: no host
                    # sync per parameter. The unselected branch may hold inf/nan; it is discarded.
                    local_lr = torch.where((p_norm > 0) & (g_norm > 0), eta * p_norm / g_norm,
                                           torch.ones_like(p_norm))
                    update = g * (local_lr * lr)
                else:
                    update = g * lr
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    # v starts at 0, so the first step is v = lr * local_lr * g'.
                    buf = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf.mul_(momentum).add_(update)
                p.sub_(buf)
        return loss


# --------------------------------------------------------------------------- building the optimizer


def _param_groups(model: nn.Module) -> tuple[List[nn.Parameter], List[nn.Parameter]]:
    """Trainable parameters split into (decay, no_decay), each in registration order."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # Biases and norm scales/shifts are 1-D (or scalars): decaying them hurts accuracy
        # and LARS trust ratios on them are meaningless (Goyal et al. 2017; You et al. 2017).
        (decay if p.ndim > 1 else no_decay).append(p)
    return decay, no_decay


def _require(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise UserError(f"{key}={value} must be {expected}")


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """The optimizer cfg.name (sgd, adam, adamw, lars) over model's trainable parameters at learning rate lr.

    Two parameter groups in this order: "decay" (parameters with 2+ dims, weight decay and LARS
    adaptation) and "no_decay" (1-D parameters: no weight decay, no LARS). Without weight decay,
    sgd, adam and adamw get one group "all" instead: the same update, and half the optimizer's
    Python per step. With cfg._target_ set, the user's optimizer class (target_optimizer).
    """
    if getattr(cfg, "_target_", None):
        return target_optimizer(model, cfg, lr)
    name = cfg.name
    if name not in OPTIMIZERS:
        raise UserError(f"optimizer={name} is not supported; choose one of: {', '.join(OPTIMIZERS)}")
    weight_decay = float(cfg.weight_decay)
    momentum = float(cfg.momentum)
    _require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, ">= 0")
    if name in ("sgd", "lars"):
        _require(momentum >= 0, "optimizer.momentum", momentum, ">= 0")
    if name == "sgd" and cfg.nesterov and momentum == 0:
        raise UserError("optimizer.nesterov=true needs optimizer.momentum > 0")

    decay, no_decay = _param_groups(model)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters to optimize")
    # Both groups exist (even if empty) so the optimizer state has the same layout for every model of
    # a configuration; without weight decay (and LARS) the split changes nothing and each group would
    # cost the optimizer's whole Python path once more per step
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    if weight_decay == 0 and name != "lars":
        groups = [{"name": "all", "params": decay + no_decay, "weight_decay": 0.0}]

    kernels = _kernels(decay + no_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=bool(cfg.nesterov), **kernels)
    if name == "lars":
        _require(cfg.trust_coefficient > 0, "optimizer.trust_coefficient", cfg.trust_coefficient, "> 0")
        groups[0]["lars"], groups[1]["lars"] = True, False
        return Lars(groups, lr=lr, momentum=momentum, trust_coefficient=float(cfg.trust_coefficient))

    betas = tuple(float(b) for b in cfg.betas)
    if len(betas) != 2:
        raise UserError(f"optimizer.betas={list(betas)} must be two numbers, e.g. [0.9, 0.999]")
    _require(all(0.0 <= b < 1.0 for b in betas), "optimizer.betas", list(betas), "in [0, 1)")
    eps = float(cfg.eps)
    _require(eps >= 0, "optimizer.eps", eps, ">= 0")
    cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=betas, eps=eps, **kernels)


SHARED_KEYS = ("momentum", "nesterov", "weight_decay", "betas", "eps")  # ddtrain's keys a user's optimizer may share


def target_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """optimizer._target_ (e.g. torch.optim.RAdam) over the model's parameter groups at the scaled lr.

    It gets the keys the user added to the optimizer node, and ddtrain's momentum, nesterov,
    weight_decay, betas and eps when its signature names them and the user changed them from ddtrain's
    default (ddtrain's default would silently replace the optimizer's own). weight_decay applies to the
    "decay" group only, as for the built-ins; empty groups are left out.
    """
    from omegaconf import OmegaConf

    from ddtrain.targets import added_keys, call, locate, takes

    cfg = cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg)
    key, path = "optimizer._target_", str(cfg._target_)
    target = locate(key, path)
    defaults = OmegaConf.structured(OptimizerConfig)
    kwargs = {k: cfg[k] for k in added_keys(cfg, "optimizer")}
    for k in SHARED_KEYS:
        if takes(target, k) and k not in kwargs and cfg[k] != defaults[k]:
            kwargs[k] = cfg[k]
    decay, no_decay = _param_groups(model)
    groups = [{"name": "decay", "params": decay}, {"name": "no_decay", "params": no_decay}]
    if "weight_decay" in kwargs:
        groups[0]["weight_decay"], groups[1]["weight_decay"] = float(kwargs.pop("weight_decay")), 0.0
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError("the model has no trainable parameters to optimize")
    optimizer = call(key, path, OmegaConf.create({"_target_": path, "_convert_": "all", **kwargs}), groups, lr=lr)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError(f"{key}={path} gave a {type(optimizer).__name__}, not a torch.optim.Optimizer")
    return optimizer


def _kernels(params: list) -> dict:
    """fused=True when every parameter is on a GPU (one kernel per step), else foreach (batched kernels)."""
    if params and all(p.is_cuda for p in params):
        return {"fused": True}
    return {"foreach": True}


# --------------------------------------------------------------------------- schedule


def lr_factor(step: int, *, name: str, total_steps: int, warmup_steps: int, warmup_start_factor: float,
              min_lr_factor: float, milestones: Sequence[float], gamma: float) -> float:
    """LR multiplier at optimizer step `step` (0-based): linear warmup, then constant, cosine or step decay."""
    if name not in SCHEDULES:
        raise UserError(f"schedule={name} is not supported; choose one of: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        # Goyal et al. 2017: ramp from the unscaled LR to the scaled one. When there is no
        # scaling (start factor >= 1, or nonsense <= 0) still ramp, from 1/warmup_steps.
        start = warmup_start_factor if 0.0 < warmup_start_factor < 1.0 else 1.0 / warmup_steps
        return start + (1.0 - start) * step / warmup_steps
    # Clamped so extra scheduler steps past the end (e.g. one after the last optimizer step) stay finite.
    t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    if name == "constant":
        return 1.0
    if name == "cosine":
        return min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return gamma ** sum(1 for m in milestones if t >= m)


class _LambdaLR(LambdaLR):
    """LambdaLR whose load_state_dict also sets the optimizer's LR from the restored step.

    Without this the LR would depend on loading order: an optimizer state loaded before the
    scheduler is built would be overwritten by the scheduler's initial step.
    """

    def load_state_dict(self, state_dict):
        """Restore the scheduler and re-derive each group's LR for the restored step."""
        super().load_state_dict(state_dict)
        self._set_lrs()

    def step(self, epoch=None):
        """LambdaLR's step (LR = base_lr * lr_lambda(step)) without torch's generic path, which costs
        about 30 us on every training step; the optimizer step comes first, as in the trainer."""
        if epoch is not None:
            return super().step(epoch)
        self.last_epoch += 1
        self._set_lrs()

    def _set_lrs(self) -> None:
        for group, base_lr, fn in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            group["lr"] = base_lr * fn(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, total_steps: int, steps_per_epoch: float,
                    warmup_start_factor: float) -> LambdaLR:
    """A LambdaLR giving LR = base_lr * lr_factor(k) at optimizer step k; call .step() after each optimizer step."""
    name = cfg.name
    if name not in SCHEDULES:
        raise UserError(f"schedule={name} is not supported; choose one of: {', '.join(SCHEDULES)}")
    _require(cfg.warmup_epochs >= 0, "schedule.warmup_epochs", cfg.warmup_epochs, ">= 0")
    milestones = [float(m) for m in cfg.milestones]
    if name == "step":
        if any(not 0.0 < m < 1.0 for m in milestones) or any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise UserError(f"schedule.milestones={milestones} must be increasing fractions of the run, "
                            "each in (0, 1), e.g. [0.5, 0.75]")
        _require(cfg.gamma > 0, "schedule.gamma", cfg.gamma, "> 0")
    if name == "cosine":
        _require(0.0 <= cfg.min_lr_factor <= 1.0, "schedule.min_lr_factor", cfg.min_lr_factor, "in [0, 1]")
    # A partial of a module-level function (not a lambda) keeps state_dict free of code objects,
    # so it saves and loads with torch.load(weights_only=True).
    fn = functools.partial(
        lr_factor, name=name, total_steps=int(total_steps),
        warmup_steps=round(float(cfg.warmup_epochs) * steps_per_epoch),
        warmup_start_factor=float(warmup_start_factor), min_lr_factor=float(cfg.min_lr_factor),
        milestones=milestones, gamma=float(cfg.gamma))
    return _LambdaLR(optimizer, lr_lambda=fn)
