"""torch DistributedDataParallel over a torch.distributed process group (NCCL on GPUs, Gloo on CPUs).

Gradients are averaged by DDP's reducer in buckets while backward runs. dist.compression picks a
DDP communication hook: fp16 or bf16 (gradients cast for the allreduce, then back), or PowerSGD
(rank-2 low-rank approximation with error feedback after 10 plain steps; its results differ from
an uncompressed run by design). The collectives the rest of ddtrain needs use the same group.
"""

from __future__ import annotations

import copy
import os
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd
from torch.nn.parallel import DistributedDataParallel

from ddtrain.distributed import failure, network, rendezvous
from ddtrain.distributed.engines.base import Engine
from ddtrain.errors import Unreachable, UserError

POWERSGD_RANK = 2
POWERSGD_START_ITER = 10


def pick_backend(requested: str, device: torch.device) -> str:
    """The process group's library: nccl for CUDA devices, gloo for CPU, unless dist.backend names one."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise UserError("dist.backend=nccl needs CUDA GPUs and none is visible; use dist.backend=gloo (or auto)")
    return requested


def _compression_hook(compression: str):
    """(state, hook) for DDP's register_comm_hook; (None, allreduce_hook) for none."""
    if compression == "fp16":
        return None, default_hooks.fp16_compress_hook
    if compression == "bf16":
        return None, default_hooks.bf16_compress_hook
    if compression == "powersgd":
        state = powersgd.PowerSGDState(process_group=None, matrix_approximation_rank=POWERSGD_RANK,
                                       start_powerSGD_iter=POWERSGD_START_ITER)
        return state, powersgd.powerSGD_hook
    return None, default_hooks.allreduce_hook


class DDPEngine(Engine):
    """A torch process group; gradients averaged by DDP's reducer while backward runs; no_sync on micro-steps."""

    name = "ddp"

    def __init__(self, env, device, backend: str = "auto", bucket_cap_mb: float = 25.0, compression: str = "none",
                 interface: str = ""):
        super().__init__(env, device)
        self.interface = interface  # dist.interface: "" lets ddtrain.distributed.network choose
        self.network_note = ""  # which address and interface were chosen, logged once the run directory is known
        self.requested_backend = backend
        self.bucket_cap_mb = bucket_cap_mb
        self.compression = compression
        self.group = None  # None: the default process group

    # ---- start-up and collectives --------------------------------------------------------------
    def start(self, timeout_s: float) -> None:
        backend = pick_backend(self.requested_backend, self.device)  # checked with one process too
        if not self.active:
            return
        if self.env.master_addr is None or self.env.master_port is None:
            if self.env.launcher == "horovodrun":
                raise UserError("started by horovodrun: use dist.engine=horovod, or export MASTER_ADDR and "
                                "MASTER_PORT to every rank for the ddp engine")
            master = rendezvous.mpi_master(self.env, self.interface, backend)
        else:
            master = rendezvous.env_master(self.env)
        store, choice, self.network_note = rendezvous.connect(self.env, master, timeout_s, self.interface, backend)
        device = network.gloo_device(choice, os.environ, self.interface)
        if device:  # gloo binds where its hostname resolves unless told: often loopback (127.0.1.1)
            os.environ["GLOO_SOCKET_IFNAME"] = device
        if self.interface and backend == "nccl":
            os.environ["NCCL_SOCKET_IFNAME"] = f"={choice.interface.name}"  # NCCL: exactly this name
        self.network_note += f"; GLOO_SOCKET_IFNAME={os.environ.get('GLOO_SOCKET_IFNAME')}"
        try:
            tdist.init_process_group(backend, store=tdist.PrefixStore("default_pg", store), rank=self.rank,
                                     world_size=self.world_size, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, OSError) as exc:  # e.g. gloo's connectFullMesh over an interface the peers miss
            raise Unreachable(f"the process group did not connect over {choice.interface} ({choice.reason}): "
                              f"{failure.one_line(exc)}; {rendezvous.HOW_TO_SET}") from exc
        self.library = backend

    def over(self, library: str) -> "DDPEngine":
        """The same ranks over another torch library (e.g. nccl beside a gloo job): a new group, same collectives."""
        if library == self.library or not self.active:
            return self
        other = copy.copy(self)
        other.library, other.group = library, tdist.new_group(backend=library)
        return other

    def shutdown(self) -> None:
        if tdist.is_initialized() and self.group is None:
            tdist.destroy_process_group()

    def all_reduce_sum(self, tensor, name=None):
        if self.active:
            tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM, group=self.group)
        return tensor

    def broadcast_object(self, obj, src=0):
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=src, group=self.group)
        return box[0]

    def all_gather_object(self, obj):
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        tdist.all_gather_object(out, obj, group=self.group)
        return out

    def barrier(self):
        if self.active:
            tdist.barrier(group=self.group)

    # ---- gradient averaging --------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model  # one process: nothing to average
        if self.compression == "bf16" and self.library != "nccl":
            raise UserError(f"dist.compression=bf16 needs NCCL (CUDA GPUs); this run uses {self.library}: "
                            "use dist.compression=fp16 or none")
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # gradient_as_bucket_view: gradients live in the allreduce buckets, saving a copy per step
        wrapped = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.bucket_cap_mb,
                                          gradient_as_bucket_view=True)
        if self.compression != "none":
            state, hook = _compression_hook(self.compression)
            wrapped.register_comm_hook(state, hook)
        return wrapped

    def sync_batchnorm(self, model: nn.Module) -> nn.Module:
        if not self.active:
            return model
        import logging

        from ddtrain.distributed import syncbn

        layers = syncbn.count(model)
        logging.getLogger("ddtrain").log(logging.INFO if layers else logging.WARNING,
                                         "model.sync_batchnorm: %d BatchNorm layer(s) normalise over all %d ranks' "
                                         "batches", layers, self.world_size)
        # torch's SyncBatchNorm on GPUs; on CPUs (gloo) ddtrain's, through autograd-aware all-reduces
        return syncbn.convert(model, cuda=self.device.type == "cuda")

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
        inner = getattr(wrapped, "_orig_mod", wrapped)
        if not isinstance(inner, DistributedDataParallel) or self.compression != "none":
            return False  # one comm hook per model: the compression hook already holds the slot

        def hook(state, bucket):
            # the bucket still holds this rank's own gradients; the allreduce below averages them
            squared_norm.add_(bucket.buffer().double().pow(2).sum())
            return default_hooks.allreduce_hook(state, bucket)

        inner.register_comm_hook(None, hook)
        return True

    def no_sync(self, wrapped: nn.Module):
        inner = getattr(wrapped, "_orig_mod", wrapped)  # torch.compile wraps the DDP module
        if isinstance(inner, DistributedDataParallel):
            return inner.no_sync()
        return super().no_sync(wrapped)
