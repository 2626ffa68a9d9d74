"""mpi4py engine: bucketed, non-blocking MPI allreduce overlapped with the backward pass.

For sites where PyTorch has no MPI backend: no torch process group is involved; the collectives the
rest of ddtrain needs go through mpi4py's COMM_WORLD too (CPU tensors directly, CUDA ones via a
host copy: they are a few numbers). Parameters are
grouped into buckets of about dist.bucket_cap_mb in reverse registration order (the order in
which backward produces their gradients). A post-accumulate-grad hook copies each gradient
into its bucket's contiguous buffer; when a bucket is complete, its buffer is allreduced with
MPI Iallreduce while backward goes on (the first bucket holds at most 1 MiB, as in DDP, so the first
exchange starts early; the last one, complete only when backward ends, goes by blocking Allreduce). Buckets are started strictly in order, so every rank
issues the same sequence of collectives. Each gradient is divided by the world size on its way
into the bucket (DDP's order of operations), so the sum is the average; finish_gradients() waits
for all of them and points each parameter's .grad at its slice of the buffer (no copy back).

CUDA tensors go to MPI directly when the library is CUDA-aware (DDTRAIN_MPI_CUDA_AWARE=1, or
the MPI library says so), otherwise through pinned host buffers.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch import nn

from ddtrain import testing
from ddtrain.distributed import rendezvous
from ddtrain.distributed.engines.base import Engine

FIRST_BUCKET_BYTES = 1024 * 1024


class _Bucket:
    """Parameters whose gradients are exchanged in one allreduce."""

    def __init__(self, params: list[nn.Parameter], device: torch.device, dtype: torch.dtype, staged: bool):
        self.params = params
        self.offsets = []
        n = 0
        for p in params:
            self.offsets.append(n)
            n += p.numel()
        self.buffer = torch.zeros(n, device=device, dtype=dtype)
        self.host = torch.zeros(n, dtype=dtype, pin_memory=True) if staged else None
        self.filled = [False] * len(params)
        self.ready = 0

    def slice(self, i: int) -> torch.Tensor:
        p = self.params[i]
        return self.buffer[self.offsets[i]:self.offsets[i] + p.numel()].view_as(p)


def cuda_aware() -> bool:
    """Whether MPI can read CUDA memory: DDTRAIN_MPI_CUDA_AWARE=0/1 decides, else the library's info."""
    forced = os.environ.get("DDTRAIN_MPI_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1"
    from mpi4py import MPI
    kinds = MPI.INFO_ENV.Get("mpi_memory_alloc_kinds") or ""  # MPI 4.1+ libraries list "cuda" here
    return "cuda" in kinds


class MPIEngine(Engine):
    """mpi4py's COMM_WORLD; gradients averaged by Iallreduce on buckets, started from autograd hooks."""

    name = "mpi"

    def __init__(self, env, device, bucket_cap_mb: float = 25.0):
        super().__init__(env, device)
        self.bucket_bytes = max(1, int(bucket_cap_mb * 1024 * 1024))
        self.comm = None
        self.MPI = None
        self._reset()

    def _reset(self) -> None:
        """Forget the buckets of a previously wrapped model."""
        self.buckets: list[_Bucket] = []
        self.where: dict[nn.Parameter, tuple[int, int]] = {}
        self.syncing = True
        self.next_bucket = 0
        self.requests: list = []
        self.squared_norm = None

    # ---- start-up and collectives --------------------------------------------------------------
    def start(self, timeout_s: float) -> None:
        self.comm = rendezvous.mpi_world(self.env, "dist.engine=mpi")  # also with one rank: a bad PMI is no world of 1
        from mpi4py import MPI

        self.MPI = MPI
        if self.active:
            self.library = "mpi"

    def all_reduce_sum(self, tensor, name=None):
        if not self.active:
            return tensor
        if tensor.device.type == "cpu":
            target = tensor if tensor.is_contiguous() else tensor.contiguous()
            self.comm.Allreduce(self.MPI.IN_PLACE, target)
            if target is not tensor:
                tensor.copy_(target)
            return tensor
        host = tensor.detach().cpu()  # small metric tensors: a host round trip is cheaper than a CUDA-aware path
        self.comm.Allreduce(self.MPI.IN_PLACE, host)
        tensor.copy_(host)
        return tensor

    def broadcast_object(self, obj, src=0):
        return self.comm.bcast(obj, root=src) if self.active else obj

    def all_gather_object(self, obj):
        return self.comm.allgather(obj) if self.active else [obj]

    def barrier(self):
        if self.active:
            self.comm.Barrier()

    # ---- set-up -------------------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        self._reset()
        if not self.active:
            return model
        self._broadcast(model)
        staged = {p.device.type for p in model.parameters()} == {"cuda"} and not cuda_aware()
        params = [p for p in model.parameters() if p.requires_grad][::-1]  # the order backward produces
        group: list[nn.Parameter] = []
        size = 0
        for p in params:
            # like DDP, the first bucket is small (1 MiB) so the first exchange starts early in backward
            cap = min(FIRST_BUCKET_BYTES, self.bucket_bytes) if not self.buckets else self.bucket_bytes
            if group and (size + p.numel() * p.element_size() > cap
                          or p.dtype != group[0].dtype or p.device != group[0].device):
                self._add_bucket(group, staged)
                group, size = [], 0
            group.append(p)
            size += p.numel() * p.element_size()
        if group:
            self._add_bucket(group, staged)
        for p in params:
            p.register_post_accumulate_grad_hook(self._on_gradient)
        return model

    def _add_bucket(self, group: list[nn.Parameter], staged: bool) -> None:
        index = len(self.buckets)
        self.buckets.append(_Bucket(group, group[0].device, group[0].dtype, staged))
        for slot, p in enumerate(group):
            self.where[p] = (index, slot)

    def _broadcast(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        with torch.no_grad():
            for t in model.state_dict().values():
                if not t.is_floating_point() and t.dtype not in (torch.int64, torch.int32):
                    continue
                self._bcast_tensor(t)

    def _bcast_tensor(self, t: torch.Tensor) -> None:
        if t.device.type == "cpu" and t.is_contiguous():
            self.comm.Bcast(t.detach(), root=0)
        else:
            host = t.detach().cpu().contiguous()
            self.comm.Bcast(host, root=0)
            t.copy_(host)

    def broadcast_state(self, model: nn.Module, optimizer) -> None:
        if self.active:
            self._broadcast(model)

    # ---- per step -----------------------------------------------------------------------------
    def no_sync(self, wrapped: nn.Module):
        @contextlib.contextmanager
        def paused():
            self.syncing = False
            try:
                yield
            finally:
                self.syncing = True
        return paused()

    def watch_local_gradients(self, wrapped: nn.Module, squared_norm) -> bool:
        self.squared_norm = squared_norm
        return True

    def _on_gradient(self, p: nn.Parameter) -> None:
        """Autograd hook: p.grad is complete for this backward; copy it into its bucket."""
        if not self.syncing:
            return
        index, slot = self.where[p]
        bucket = self.buckets[index]
        # divided before the sum, as DDP does: one pass over the gradient instead of a copy and a division
        start = bucket.offsets[slot]
        torch.div(p.grad.reshape(-1), self.world_size, out=bucket.buffer[start:start + p.numel()])
        if not bucket.filled[slot]:
            bucket.filled[slot] = True
            bucket.ready += 1
        if bucket.ready == len(bucket.params):
            self._start_ready()
        elif self.requests:
            self.MPI.Request.Testall(self.requests)  # MPI progresses started collectives only inside MPI calls

    def _start_ready(self, final: bool = False) -> None:
        """Start every complete bucket whose predecessors have started (the same order on every rank).

        The last bucket waits for finish_gradients (final=True) and goes by blocking MPI_Allreduce:
        its last gradient is the last one backward produces, so nothing is left to overlap with, and
        Open MPI's blocking algorithms are much faster than its non-blocking ones on large buffers.
        """
        last = len(self.buckets) - 1
        while self.next_bucket < len(self.buckets):
            bucket = self.buckets[self.next_bucket]
            if bucket.ready < len(bucket.params) or (self.next_bucket == last and not final):
                break
            self._start(self.next_bucket, blocking=self.next_bucket == last)
            self.next_bucket += 1

    def _start(self, index: int, blocking: bool = False) -> None:
        bucket = self.buckets[index]
        if self.squared_norm is not None:
            # this rank's own gradient (the bucket holds it divided by the world size)
            self.squared_norm.add_(bucket.buffer.double().pow(2).sum() * self.world_size**2)
        target = bucket.buffer
        if bucket.buffer.device.type == "cuda":
            if bucket.host is not None:
                bucket.host.copy_(bucket.buffer, non_blocking=True)
                target = bucket.host
            torch.cuda.current_stream(bucket.buffer.device).synchronize()  # MPI must see finished data
        testing.record("start", index)
        if blocking:  # MPI matches blocking and non-blocking collectives in issue order, as every rank issues them
            self.comm.Allreduce(self.MPI.IN_PLACE, target)
        else:
            self.requests.append(self.comm.Iallreduce(self.MPI.IN_PLACE, target))

    def finish_gradients(self) -> None:
        if not self.active or not self.buckets:
            return
        # parameters that got no gradient this step count as zero (every rank must join every bucket)
        for bucket in self.buckets:
            for slot, done in enumerate(bucket.filled):
                if not done:
                    bucket.slice(slot).zero_()
                    bucket.filled[slot] = True
            bucket.ready = len(bucket.params)
        self._start_ready(final=True)
        self.MPI.Request.Waitall(self.requests)
        testing.record("waited", len(self.buckets))
        for bucket in self.buckets:
            if bucket.host is not None:
                bucket.buffer.copy_(bucket.host, non_blocking=True)
            for slot, p in enumerate(bucket.params):
                p.grad = bucket.slice(slot)  # the averaged gradient, in place in the bucket
            bucket.filled = [False] * len(bucket.params)
            bucket.ready = 0
        self.requests = []
        self.next_bucket = 0
