"""The few collectives ddtrain needs outside the gradient exchange, over whichever library the engine uses.

Metrics, evaluation, checkpoints and the run directory need an allreduce of small tensors, an
object broadcast, an object all-gather and a barrier. The ddp engine gets them from
torch.distributed; the mpi engine from mpi4py (no torch process group at all, for sites where
PyTorch has no MPI backend); the horovod engine from Horovod (so `horovodrun --gloo` needs no
MPI and no torch rendezvous).
"""

from __future__ import annotations

import torch


class Collectives:
    """Interface: sum a tensor in place, broadcast or gather a picklable object, barrier."""

    name = "none"

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks, in place; returns it."""
        raise NotImplementedError

    def broadcast_object(self, obj, src: int = 0):
        """Rank src's picklable object, on every rank."""
        raise NotImplementedError

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable object, in rank order."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Release the library's resources after a run that ended normally on every rank."""


class TorchCollectives(Collectives):
    """torch.distributed's default process group (gloo or nccl)."""

    name = "torch"

    def __init__(self):
        import torch.distributed as tdist
        self.tdist = tdist

    def all_reduce_sum(self, tensor):
        self.tdist.all_reduce(tensor, op=self.tdist.ReduceOp.SUM)
        return tensor

    def broadcast_object(self, obj, src=0):
        box = [obj]
        self.tdist.broadcast_object_list(box, src=src)
        return box[0]

    def all_gather_object(self, obj):
        out = [None] * self.tdist.get_world_size()
        self.tdist.all_gather_object(out, obj)
        return out

    def barrier(self):
        self.tdist.barrier()

    def shutdown(self):
        if self.tdist.is_initialized():
            self.tdist.destroy_process_group()


class MpiCollectives(Collectives):
    """mpi4py's COMM_WORLD. Tensors go through DLPack: CPU tensors directly, CUDA ones via host copies."""

    name = "mpi"

    def __init__(self, comm):
        self.comm = comm

    def all_reduce_sum(self, tensor):
        from mpi4py import MPI
        if tensor.device.type == "cpu":
            self.comm.Allreduce(MPI.IN_PLACE, tensor.contiguous() if not tensor.is_contiguous() else tensor)
            return tensor
        host = tensor.detach().cpu()  # small metric tensors: a host round trip is cheaper than a CUDA-aware path
        self.comm.Allreduce(MPI.IN_PLACE, host)
        tensor.copy_(host)
        return tensor

    def broadcast_object(self, obj, src=0):
        return self.comm.bcast(obj, root=src)

    def all_gather_object(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()


class HorovodCollectives(Collectives):
    """horovod.torch's global process set (MPI or Gloo controller, whichever horovodrun/mpirun gave)."""

    name = "horovod"

    def __init__(self, hvd):
        self.hvd = hvd
        self._count = 0

    def _name(self, kind: str) -> str:
        # Horovod matches collectives across ranks by name; every rank issues them in the same order
        self._count += 1
        return f"ddtrain.{kind}.{self._count}"

    def all_reduce_sum(self, tensor):
        out = self.hvd.allreduce(tensor, op=self.hvd.Sum, name=self._name("sum"))
        tensor.copy_(out)
        return tensor

    def broadcast_object(self, obj, src=0):
        return self.hvd.broadcast_object(obj, root_rank=src, name=self._name("bcast"))

    def all_gather_object(self, obj):
        return self.hvd.allgather_object(obj, name=self._name("gather"))

    def barrier(self):
        self.hvd.barrier()

    def shutdown(self):
        self.hvd.shutdown()
