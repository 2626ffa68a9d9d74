"""model.sync_batchnorm: BatchNorm statistics over the global batch, so BatchNorm models are world-size invariant.

With plain BatchNorm each rank normalises by its own per-rank batch, so 2 ranks x 16 train a different
model from 1 rank x 32. SyncBatchNorm sums the statistics over the ranks first. torch's
nn.SyncBatchNorm does this on GPUs only (it raises for CPU tensors), so on CPUs (gloo) this module
does the same with two autograd-aware all-reduces per layer: the sum and count of each channel,
then the sum of squared deviations from the global mean (two passes, as numerically careful as
BatchNorm's own). Backward all-reduces the gradients of those sums, which gives every rank the exact
gradient of the global-batch normalisation. Evaluation uses the running statistics, with no
communication; the running statistics are updated identically on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as tdist
from torch import nn


class _SumOverRanks(torch.autograd.Function):
    """Sum over ranks; backward sums the gradients too (every rank's loss depends on every rank's input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        tdist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        tdist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (any of 1d, 2d, 3d) over every rank's batch together, on CPU tensors (gloo).

    Not a subclass of nn.SyncBatchNorm: DistributedDataParallel refuses those on CPU modules.
    """

    def __init__(self, *args, process_group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.process_group = process_group  # None: every rank

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise by the statistics of every rank's batch together (training), else by the running ones."""
        if not self.training or not tdist.is_initialized() or tdist.get_world_size(self.process_group) == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() / x.shape[1])
        # distributed: every rank's per-channel sums and sample counts, summed over ranks (autograd-aware)
        totals = _SumOverRanks.apply(torch.cat([x.sum(dims), count]), self.process_group)
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims), self.process_group) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * var.detach() * n / (n - 1).clamp(min=1))
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert(module: nn.Module, cuda: bool = False) -> nn.Module:
    """module with every BatchNorm synchronised (same parameters and buffers, same state dict keys).

    cuda: torch's nn.SyncBatchNorm (NCCL); else this module's SyncBatchNorm (gloo).
    """
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                       SyncBatchNorm)):
        out = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias  # the very parameters the optimizer holds
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, convert(child))
    return out


def count(module: nn.Module) -> int:
    """How many BatchNorm layers a model has (0: model.sync_batchnorm changes nothing)."""
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


__all__ = ["SyncBatchNorm", "convert", "count"]
