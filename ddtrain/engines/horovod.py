"""Horovod engine: hvd.DistributedOptimizer averages gradients with fused, negotiated allreduces.

Horovod hooks every parameter; after backward_passes_per_step (= train.grad_accum_steps)
backward passes a gradient is queued for allreduce, and the background thread fuses queued
tensors up to HOROVOD_FUSION_THRESHOLD (set from dist.bucket_cap_mb when Horovod starts).
finish_gradients() is optimizer.synchronize(); the step then runs inside skip_synchronize(),
which is Horovod's documented pattern for clipping and AMP between the two.
"""

from __future__ import annotations

import contextlib

from torch import nn

from ddtrain.engines.base import Engine


class HorovodEngine(Engine):
    """Gradients averaged by Horovod's DistributedOptimizer; parameters and state broadcast from rank 0."""

    name = "horovod"

    def __init__(self, dist, compression: str = "none"):
        import horovod.torch as hvd

        self.hvd = hvd
        self.dist = dist
        self.compression = {"none": hvd.Compression.none, "fp16": hvd.Compression.fp16}[compression]
        self.optimizer = None
        self.passes = 1

    def wrap_optimizer(self, optimizer, model: nn.Module, grad_accum_steps: int):
        if self.dist.world_size == 1:
            return optimizer
        self.passes = grad_accum_steps
        self.optimizer = self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), compression=self.compression,
            backward_passes_per_step=grad_accum_steps, op=self.hvd.Average)
        return self.optimizer

    def broadcast_state(self, model: nn.Module, optimizer) -> None:
        if self.dist.world_size == 1:
            return
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # Horovod initialises an empty state with an optimizer step on zero gradients, which weight
        # decay turns into a real update: broadcast only a state that exists (after a resume)
        if optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def local_backward(self, wrapped: nn.Module):
        """A backward Horovod must not count: hold its allreduce back, then forget the pass."""
        opt = self.optimizer
        if opt is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def uncounted():
            for p in opt._allreduce_delay:
                opt._allreduce_delay[p] += 1  # one more pass before this gradient would be sent
            try:
                yield
            finally:
                opt._handles.clear()
                for p in opt._allreduce_delay:
                    opt._allreduce_delay[p] = self.passes
        return uncounted()

    def finish_gradients(self) -> None:
        if self.optimizer is not None:
            self.optimizer.synchronize()

    def step_context(self):
        if self.optimizer is None:
            return contextlib.nullcontext()
        return self.optimizer.skip_synchronize()
