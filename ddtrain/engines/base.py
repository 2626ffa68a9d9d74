"""The interface every engine implements."""

from __future__ import annotations

import contextlib

from torch import nn


class Engine:
    """How gradients are averaged: wrap the model, skip the exchange on micro-steps, finish before the step.

    The trainer's order per optimizer step: backward of each micro-step (all but the last inside
    no_sync), finish_gradients(), unscale/clip, then the optimizer step inside step_context().
    """

    name = "none"

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in the training step (the model itself with one rank)."""
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
        """Context for a backward whose gradients are thrown away unexchanged (the memory probe)."""
        return self.no_sync(wrapped)

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
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
