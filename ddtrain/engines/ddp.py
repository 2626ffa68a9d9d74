"""torch DistributedDataParallel: bucketed allreduce overlapped with the backward pass."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ddtrain.engines.base import Engine


class DDPEngine(Engine):
    """Gradients averaged by DDP's reducer while backward runs; no_sync on accumulation micro-steps."""

    name = "ddp"

    def __init__(self, dist, bucket_cap_mb: float):
        self.dist = dist
        self.bucket_cap_mb = bucket_cap_mb

    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.active:
            return model  # one process: nothing to average
        device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
        # gradient_as_bucket_view: gradients live in the allreduce buckets, saving a copy per step
        return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb,
                                       gradient_as_bucket_view=True)

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
        inner = getattr(wrapped, "_orig_mod", wrapped)
        if not isinstance(inner, DistributedDataParallel):
            return False

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
