"""Training FLOPs per sample, counted by torch's FlopCounterMode (MFU: ddtrain.runtime.throughput).

FlopCounterMode counts only matrix products and convolutions (mm, addmm, bmm, convolution and its
backward, attention kernels), at 2 FLOPs per multiply-add. Element-wise work (activations, BatchNorm,
bias gradients, the loss, the optimizer) is not counted; it is small next to the matmuls and is not what
the tensor-core peaks measure, which is the usual MFU convention.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddtrain.errors import UserError


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP and torch.compile wrappers hold the real module; their deepcopy is unsupported or costly
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def flops_per_sample(model: nn.Module, input_shape: Sequence[int], num_classes: int, batch: int = 2,
                     device=None, input_dtype: torch.dtype = torch.float32) -> int:
    """FLOPs of one training step's forward + backward per sample, leaving model untouched.

    num_classes is not needed any more (kept for callers). input_dtype: the samples' dtype (integer
    for token inputs). Only matrix products and convolutions
    are counted and their backward depends on shapes alone, so any scalar made from the outputs
    drives the backward (the loss itself, e.g. cross-entropy or MSE, adds no counted FLOPs).
    """
    if batch < 1:
        raise UserError(f"batch={batch} must be positive to count FLOPs")
    device = torch.device(device) if device is not None else torch.device("cpu")
    # a copy, not the model: the forward updates BatchNorm running stats and backward fills .grad
    work = copy.deepcopy(_unwrap(model)).to(device)
    work.train()  # count the training-mode graph (BatchNorm on batch statistics, dropout on)
    work.zero_grad(set_to_none=True)  # gradients copied from the model would only be accumulated into
    # zeros, not random data: FLOPs depend on shapes only, and drawing would shift the training RNG stream
    x = torch.zeros(batch, *(int(d) for d in input_shape), device=device, dtype=input_dtype)
    # dropout draws from the global RNG; fork it so the caller's seeded stream is unchanged
    rng_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), FlopCounterMode(display=False) as counter:
        work(x).float().sum().backward()
    # input does not require grad, as in training: the first layer's grad w.r.t. its input is not computed
    return int(round(counter.get_total_flops() / batch))


__all__ = ["flops_per_sample"]
