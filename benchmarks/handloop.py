"""A minimal hand-written data-parallel training loop: the baseline ddtrain is measured against.

Written the way a careful user writes it by hand. Same model (ddtrain.models.build_model), same
synthetic tensors (ddtrain.data.load_splits), same thread count, same optimizer, but none of
ddtrain's machinery: no meters, no step timer, no progress bar, no scheduler, no logging.

    python benchmarks/handloop.py --model mlp --out hand.json              # one process
    torchrun --nproc-per-node 2 benchmarks/handloop.py --model mlp --out hand.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from ddtrain.config import DatasetConfig, ModelConfig
from ddtrain.data import load_splits
from ddtrain.models import build_model


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "lenet5"])
    p.add_argument("--hidden-sizes", type=ints, default=[1024, 1024], help="mlp widths, e.g. 1024,1024")
    p.add_argument("--shape", type=ints, default=None, help="sample shape, e.g. 784 or 1,28,28")
    p.add_argument("--num-samples", type=int, default=8192)
    p.add_argument("--num-test-samples", type=int, default=256)
    p.add_argument("--global-batch-size", type=int, default=128)
    p.add_argument("--warmup-steps", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gather", default="index_select", choices=["index_select", "getitem"],
                   help="x.index_select(0, idx) (default, as ddtrain) or x[idx] (slower on CPU)")
    p.add_argument("--bucket-view", action="store_true", help="DDP(gradient_as_bucket_view=True), as ddtrain")
    p.add_argument("--out", required=True, help="JSON file written by rank 0")
    a = p.parse_args()
    shape = a.shape or ([784] if a.model == "mlp" else [1, 28, 28])

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if "OMP_NUM_THREADS" not in os.environ:  # the same rule as ddtrain.distributed.rendezvous.limit_cpu_threads
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    if world > 1:  # torchrun exported MASTER_ADDR / MASTER_PORT: env:// rendezvous
        dist.init_process_group("gloo", rank=rank, world_size=world)

    splits = load_splits(DatasetConfig(name="synthetic", shape=shape, num_samples=a.num_samples,
                                       num_test_samples=a.num_test_samples, val_fraction=0.0), "cpu")
    x, y = splits.train_x, splits.train_y
    torch.manual_seed(a.seed)
    model = build_model(ModelConfig(name=a.model, hidden_sizes=a.hidden_sizes), splits.input_shape,
                        splits.num_classes)
    net = DDP(model, gradient_as_bucket_view=a.bucket_view) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9)

    b = a.global_batch_size // world
    gen = torch.Generator().manual_seed(a.seed)  # same order on every rank; each takes its slice
    perm, pos = torch.randperm(len(x), generator=gen), 0

    def step() -> torch.Tensor:
        nonlocal perm, pos
        if pos + a.global_batch_size > len(x):
            perm, pos = torch.randperm(len(x), generator=gen), 0
        idx = perm[pos + rank * b: pos + (rank + 1) * b]
        pos += a.global_batch_size
        if a.gather == "index_select":
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        else:
            xb, yb = x[idx], y[idx]
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync() -> None:
        if world > 1:
            dist.barrier()

    for _ in range(a.warmup_steps):
        step()
    sync()
    times = []
    cpu_start = time.process_time()  # this process's CPU time, all threads (as ddtrain's cpu_ms_per_step)
    start = last = time.perf_counter()
    for _ in range(a.steps):
        loss = step().detach()
        now = time.perf_counter()
        times.append(now - last)
        last = now
    sync()
    elapsed = time.perf_counter() - start
    cpu_ms_per_step = 1000 * (time.process_time() - cpu_start) / a.steps

    if rank == 0:
        result = {"samples_per_s": a.steps * a.global_batch_size / elapsed,
                  "step_time_ms_median": 1000 * statistics.median(times), "elapsed_s": elapsed,
                  "cpu_ms_per_step": cpu_ms_per_step,
                  "steps": a.steps, "warmup_steps": a.warmup_steps, "world_size": world,
                  "global_batch_size": a.global_batch_size, "per_rank_batch_size": b,
                  "threads": torch.get_num_threads(), "final_loss": loss.item(), "model": a.model,
                  "gather": a.gather, "bucket_view": a.bucket_view,
                  "torch_version": torch.__version__}
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
