"""torch DistributedDataParallel: bucketed allreduce overlapped with the backward pass.

dist.compression picks a DDP communication hook: fp16 or bf16 (gradients cast for the
allreduce, then back), or PowerSGD (rank-2 low-rank approximation with error feedback after
10 plain steps; its results differ from an uncompressed run by design).
"""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel

from ddtrain.engines.base import Engine
from ddtrain.errors import UserError

POWERSGD_RANK = 2
POWERSGD_START_ITER = 10


def _compression_hook(compression: str):
    """(state, hook) for DDP's register_comm_hook; (None, allreduce_hook) for none."""
    if compression == "fp16":
        return None, default_hooks.fp16_compress_hook
    if compression == "bf16":
        return None, default_hooks.bf16_compress_hook
    if compression == "powersgd":
        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=POWERSGD_RANK,
                                       start_powerSGD_iter=POWERSGD_START_ITER)
        return state, powersgd.powerSGD_hook
    return None, default_hooks.allreduce_hook


class DDPEngine(Engine):
    """Gradients averaged by DDP's reducer while backward runs; no_sync on accumulation micro-steps."""

    name = "ddp"

    def __init__(self, dist, bucket_cap_mb: float, compression: str = "none"):
        self.dist = dist
        self.bucket_cap_mb = bucket_cap_mb
        self.compression = compression
        self.state, self.hook = _compression_hook(compression)

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.active:
            return model  # one process: nothing to average
        if self.compression == "bf16" and self.dist.backend != "nccl":
            raise UserError(f"dist.compression=bf16 needs NCCL (CUDA GPUs); this run uses {self.dist.backend}: "
                            "use dist.compression=fp16 or none")
        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        # gradient_as_bucket_view: gradients live in the allreduce buckets, saving a copy per step
        wrapped = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb,
                                          gradient_as_bucket_view=True)
        if self.compression != "none":
            wrapped.register_comm_hook(self.state, self.hook)
        return wrapped

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
        inner = getattr(wrapped, "_orig_mod", wrapped)
        if not isinstance(inner, DistributedDataParallel) or self.compression != "none":
            return False  # one comm hook per model: the compression hook already holds the slot

        def hook(state, bucket):
            # the bucket still holds this rank's own gradients; the allreduce below averages them
            squared_norm.add_(bucket.buffer().double().pow(2).sum())
            return default_hooks.allreduce_hook(state, bucket)

        inner.register_comm_hook(None, hook)
        return True

    def no_sync(self, wrapped: nn.Module):
        inner = getattr(wrapped, "_orig_mod", wrapped)  # torch.compile wraps the DDP module
        if isinstance(inner, DistributedDataParallel):
            return inner.no_sync()
        return super().no_sync(wrapped)
