"""The interface every engine implements: connect the ranks, the few collectives, gradient averaging.

One engine object per job (dist.engine: ddp, mpi or horovod) owns everything that is distributed:
start-up of its library, the collectives the rest of ddtrain needs (metrics, evaluation, checkpoints,
the run directory) and how gradients are averaged. With one process nothing is connected: every
method then works locally, so the rest of ddtrain has a single code path.

Per optimizer step the trainer calls: backward of each micro-step (all but the last inside
no_sync), finish_gradients(), unscale/clip, then the optimizer step inside step_context().
wrap() starts the gradient averaging of one model; a sweep wraps a fresh model per point.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ddtrain.distributed.env import DistEnv


class Engine:
    """One process's engine; the base class is what every engine does with a single process."""

    name = "none"

    def __init__(self, env: DistEnv, device: torch.device):
        self.env = env
        self.device = device
        self.library = "none"
        """What carries the bytes: nccl, gloo, mpi, horovod/<ops>; none with one process (summary's 'backend')."""

    # ---- place in the job ----------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that writes shared files."""
        return self.env.rank == 0

    @property
    def active(self) -> bool:
        """True when ranks are connected (more than one rank)."""
        return self.env.world_size > 1

    # ---- start-up and shutdown -----------------------------------------------------------------
    def start(self, timeout_s: float) -> None:
        """Connect the ranks (nothing to do with one process)."""

    def shutdown(self) -> None:
        """Release the library after a run that ended normally on every rank."""

    # ---- collectives (local with one process) --------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor, name: str | None = None) -> torch.Tensor:
        """Sum a tensor over ranks, in place; returns it. `name` labels the collective (Horovod matches by it)."""
        return tensor

    def broadcast_object(self, obj, src: int = 0):
        """Rank src's picklable object, on every rank."""
        return obj

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable object, in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait until every rank gets here."""

    # ---- gradient averaging --------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """Start averaging this model's gradients; returns the module to call in the training step."""
        return model

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        """model.sync_batchnorm: BatchNorm over the global batch; with one process every batch already is."""
        return model

    def wrap_optimizer(self, optimizer, model: nn.Module, grad_accum_steps: int):
        """The optimizer the trainer steps (engines that hook the optimizer, like Horovod, wrap it)."""
        return optimizer

    def broadcast_state(self, model: nn.Module, optimizer) -> None:
        """Make every rank start from rank 0's parameters and optimizer state (after any resume)."""

    def no_sync(self, wrapped: nn.Module):
        """Context for an accumulation micro-step whose gradients must not be exchanged yet."""
        return contextlib.nullcontext()

    def local_backward(self, wrapped: nn.Module):
        """Context for a backward whose gradients are thrown away unexchanged (the sweep's memory probe)."""
        return self.no_sync(wrapped)

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm: torch.Tensor) -> bool:
        """Add each step's local (pre-averaging) squared gradient norm into `squared_norm`; False if unsupported."""
        return False

    def finish_gradients(self) -> None:
        """Block until every parameter holds the averaged gradient (called once per optimizer step)."""

    def step_context(self):
        """Context around the optimizer step (Horovod: do not exchange again what finish_gradients did)."""
        return contextlib.nullcontext()

    @staticmethod
    def unwrap(wrapped: nn.Module) -> nn.Module:
        """The user's model inside whatever wrappers were added (torch.compile, then the engine's)."""
        wrapped = getattr(wrapped, "_orig_mod", wrapped)
        return getattr(wrapped, "module", wrapped)
