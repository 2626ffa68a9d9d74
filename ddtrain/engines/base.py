"""The interface every engine implements."""

from __future__ import annotations

import contextlib

from torch import nn


class Engine:
    """How gradients are averaged: wrap the model, skip the exchange on micro-steps, finish before the step."""

    name = "none"

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in the training step (the model itself with one rank)."""
        return model

    def no_sync(self, wrapped: nn.Module):
        """Context for an accumulation micro-step whose gradients must not be exchanged yet."""
        return contextlib.nullcontext()

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
        """Add each step's local (pre-averaging) squared gradient norm into `squared_norm`; False if unsupported."""
        return False

    def finish_gradients(self) -> None:
        """Block until every parameter holds the averaged gradient (called once per optimizer step)."""

    @staticmethod
    def unwrap(wrapped: nn.Module) -> nn.Module:
        """The user's model inside whatever wrappers were added (torch.compile, then the engine's)."""
        wrapped = getattr(wrapped, "_orig_mod", wrapped)
        return getattr(wrapped, "module", wrapped)
