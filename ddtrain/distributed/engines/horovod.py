"""Horovod engine: hvd.DistributedOptimizer averages gradients with fused, negotiated allreduces.

Horovod starts on mpi4py's COMM_WORLD under an MPI launcher (else with its own Gloo or MPI
controller, e.g. under `horovodrun --gloo`), and its collectives serve the rest of ddtrain too, so
such a job needs no torch rendezvous. Horovod hooks every parameter; after backward_passes_per_step
(= train.grad_accum_steps) backward passes a gradient is queued for allreduce, and the background
thread fuses queued tensors up to HOROVOD_FUSION_THRESHOLD (set from dist.bucket_cap_mb at start).
finish_gradients() is optimizer.synchronize(); the step then runs inside skip_synchronize(),
Horovod's documented pattern for clipping and AMP between the two.
"""

from __future__ import annotations

import contextlib
import os

from torch import nn

from ddtrain.distributed import rendezvous
from ddtrain.distributed.engines.base import Engine
from ddtrain.errors import UserError


class HorovodEngine(Engine):
    """Horovod's global process set; gradients averaged by its DistributedOptimizer, state broadcast from rank 0."""

    name = "horovod"

    def __init__(self, env, device, bucket_cap_mb: float = 25.0, compression: str = "none"):
        super().__init__(env, device)
        self.bucket_cap_mb = bucket_cap_mb
        self.compression_name = compression
        self.hvd = None
        self.optimizer = None
        self.passes = 1
        self._count = 0

    # ---- start-up and collectives --------------------------------------------------------------
    def start(self, timeout_s: float) -> None:
        if not self.active:
            return
        import horovod.torch as hvd

        self.hvd = hvd
        # Horovod reads its settings from the environment at init; the config is the source of truth
        os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(self.bucket_cap_mb * 1024 * 1024))
        os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(int(timeout_s)))
        if not hvd.is_initialized():
            if self.env.is_mpi and hvd.mpi_built():
                hvd.init(comm=rendezvous.mpi_world(self.env, "dist.engine=horovod under mpirun"))
            else:
                hvd.init()
        if hvd.size() != self.world_size:
            raise UserError(f"Horovod reports {hvd.size()} rank(s) but the launcher ({self.env.launcher}) says "
                            f"{self.world_size}: start Horovod jobs with horovodrun or mpirun")
        controller = "mpi" if hvd.mpi_enabled() else "gloo"
        self.library = f"horovod/{'nccl' if self.device.type == 'cuda' and hvd.nccl_built() else controller}"

    def shutdown(self) -> None:
        if self.hvd is not None:
            self.hvd.shutdown()

    def _name(self, kind: str) -> str:
        # Horovod matches collectives across ranks by name; every rank issues them in the same order
        self._count += 1
        return f"ddtrain.{kind}.{self._count}"

    def all_reduce_sum(self, tensor, name=None):
        if self.active:
            self.hvd.allreduce_(tensor, op=self.hvd.Sum, name=name or self._name("sum"))
        return tensor

    def broadcast_object(self, obj, src=0):
        return self.hvd.broadcast_object(obj, root_rank=src, name=self._name("bcast")) if self.active else obj

    def all_gather_object(self, obj):
        return self.hvd.allgather_object(obj, name=self._name("gather")) if self.active else [obj]

    def barrier(self):
        if self.active:
            self.hvd.barrier()

    # ---- gradient averaging --------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        self.optimizer, self.passes = None, 1  # a new model: its optimizer is wrapped next
        return model

    def wrap_optimizer(self, optimizer, model: nn.Module, grad_accum_steps: int):
        if not self.active:
            return optimizer
        compression = {"none": self.hvd.Compression.none, "fp16": self.hvd.Compression.fp16}[self.compression_name]
        self.passes = grad_accum_steps
        self.optimizer = self.hvd.DistributedOptimizer(
            optimizer, named_parameters=model.named_parameters(), compression=compression,
            backward_passes_per_step=grad_accum_steps, op=self.hvd.Average)
        return self.optimizer

    def broadcast_state(self, model: nn.Module, optimizer) -> None:
        if not self.active:
            return
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        # Horovod initialises an empty state with an optimizer step on zero gradients, which weight
        # decay turns into a real update: broadcast only a state that exists (after a resume)
        if optimizer.state_dict()["state"]:
            self.hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    def local_backward(self, wrapped: nn.Module):
        """A backward Horovod must not count: hold its allreduce back, then forget the pass.

        Horovod 0.28 has no public way to run a backward pass that its DistributedOptimizer does
        not count (its hooks fire on every gradient and `backward_passes_per_step` is fixed at
        construction), so this adjusts the optimizer's per-parameter countdown `_allreduce_delay`
        and drops the pending `_handles`, the state its own `synchronize()` resets.
        """
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
