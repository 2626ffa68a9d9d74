"""Engines: the one place that knows how gradients are averaged across ranks.

An engine wraps the model (and, for Horovod, the optimizer) once, says how to skip the exchange
on accumulation micro-steps, and makes sure the averaged gradients are complete before the
optimizer step. The same config trains the same model on every engine.
"""

from __future__ import annotations

from ddtrain.engines.base import Engine
from ddtrain.errors import UserError


def build_engine(name: str, dist, bucket_cap_mb: float, compression: str = "none") -> Engine:
    """The engine named by dist.engine for this job (dist must come from ddtrain.dist.init with that engine)."""
    if name == "ddp":
        from ddtrain.engines.ddp import DDPEngine
        return DDPEngine(dist, bucket_cap_mb, compression)
    if name == "mpi":
        from ddtrain.engines.mpi import MPIEngine
        return MPIEngine(dist, bucket_cap_mb)
    if name == "horovod":
        from ddtrain.engines.horovod import HorovodEngine
        return HorovodEngine(dist, compression)
    raise UserError(f"dist.engine={name} is not supported; choose ddp, horovod or mpi")


__all__ = ["Engine", "build_engine"]
