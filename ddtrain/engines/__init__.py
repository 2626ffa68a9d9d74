"""Engines: the one place that knows how gradients are averaged across ranks.

An engine wraps the model once, says how to skip the exchange on accumulation micro-steps,
and makes sure the averaged gradients are complete before the optimizer step.
"""

from __future__ import annotations

from ddtrain.engines.base import Engine
from ddtrain.errors import UserError


def build_engine(name: str, dist, bucket_cap_mb: float) -> Engine:
    """The engine named by dist.engine for this process group."""
    if name == "ddp":
        from ddtrain.engines.ddp import DDPEngine
        return DDPEngine(dist, bucket_cap_mb)
    raise UserError(f"dist.engine={name} is not supported; choose ddp")


__all__ = ["Engine", "build_engine"]
