"""Run under `mpirun -np 2`: one backward through the mpi engine, checked from inside.

Prints one JSON line on rank 0 with
  events:  the engine's hook/start/wait events of that backward, in order
  exact:   whether every parameter's averaged gradient equals (g_rank0 + g_rank1) / 2 bit for bit,
           where g_r are the per-rank gradients of the same batch computed without the engine
  buckets: the number of buckets
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn


def main() -> None:
    from mpi4py import MPI

    from ddtrain import testing
    from ddtrain.distributed.engines.mpi import MPIEngine
    from ddtrain.distributed.env import detect

    engine = MPIEngine(detect(os.environ), torch.device("cpu"), bucket_cap_mb=0.25)  # 256 KiB buckets: several
    engine.start(timeout_s=60)
    d = engine
    comm = MPI.COMM_WORLD
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    torch.manual_seed(100 + d.rank)  # each rank its own batch
    x, y = torch.randn(16, 32), torch.randint(0, 10, (16,))

    # this rank's own gradient, without any exchange
    nn.functional.cross_entropy(model(x), y).backward()
    local = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    gathered = comm.allgather({n: g.numpy() for n, g in local.items()})

    testing.trace = []  # the engine records when each bucket starts and when all were waited for
    wrapped = engine.wrap(model)
    order = {p: n for n, p in model.named_parameters()}
    for p in model.parameters():  # recorded after the engine's own hook has run
        p.register_post_accumulate_grad_hook(lambda p: testing.trace.append(("grad", order[p], 0.0)))
    nn.functional.cross_entropy(wrapped(x), y).backward()
    testing.trace.append(("backward_end", -1, 0.0))
    engine.finish_gradients()

    exact = all(torch.equal(p.grad, (torch.from_numpy(gathered[0][n]) + torch.from_numpy(gathered[1][n])) / 2)
                for n, p in model.named_parameters())
    if d.rank == 0:
        print(json.dumps({"events": [[e[0], e[1]] for e in testing.trace], "exact": exact,
                          "buckets": len(engine.buckets)}), flush=True)


if __name__ == "__main__":
    main()
