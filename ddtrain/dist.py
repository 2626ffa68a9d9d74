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

from ddtrain.env import DistEnv
from ddtrain.errors import UserError

log = logging.getLogger("ddtrain")


@dataclass
class Dist:
    """This process's place in the job: launcher facts, device and backend."""

    env: DistEnv
    device: torch.device
    backend: str  # "nccl" | "gloo" | "none" (single process)

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
        """True when a process group exists (more than one rank)."""
        return tdist.is_available() and tdist.is_initialized()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks in place (a no-op with one process)."""
        if self.active:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj, src: int = 0):
        """Rank src's picklable object, on every rank."""
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable object, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.active:
            tdist.barrier()


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


def _mpi_master(env: DistEnv) -> tuple[str, int]:
    """Under MPI, rank 0 picks its address and a free port and broadcasts them with mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise UserError("launched by mpirun but mpi4py is missing: pip install 'ddtrain[mpi]' "
                        "(or export MASTER_ADDR and MASTER_PORT to every rank)") from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != env.world_size:
        raise UserError(f"MPI reports {comm.Get_size()} rank(s) but the launcher environment says "
                        f"{env.world_size}: check that mpi4py uses the MPI library of this mpirun")
    choice = None
    if comm.Get_rank() == 0:
        addr = os.environ.get("MASTER_ADDR") or _own_address()
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        choice = (addr, port)
    return comm.bcast(choice, root=0)


def init(env: DistEnv, backend: str = "auto", timeout_s: float = 300.0) -> Dist:
    """Pick the device, limit CPU threads, and create the process group when there is more than one rank."""
    device = pick_device(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        limit_cpu_threads(env)
    chosen = pick_backend(backend, device)
    if env.world_size == 1:
        return Dist(env, device, "none")
    addr, port = env.master_addr, env.master_port
    if addr is None or port is None:
        addr, port = _mpi_master(env)
    tdist.init_process_group(chosen, init_method=f"tcp://{addr}:{port}", rank=env.rank,
                             world_size=env.world_size, timeout=timedelta(seconds=timeout_s))
    return Dist(env, device, chosen)


def shutdown(dist: Dist) -> None:
    """Destroy the process group after a run that ended normally on every rank."""
    if dist.active:
        tdist.destroy_process_group()
