"""ddtrain-bench overlap: how much of the gradient exchange each engine hides behind the backward pass.

    mpirun -np N ddtrain-bench overlap [--engines ddp,horovod,mpi] [--models lenet5,mlp] [--batch 64]
                                       [--steps 20] [--warmup 5] [--repeats 4] [--json F] [overrides]

For each engine and model (built by ddtrain.models.build_model from configs/model, on synthetic
MNIST-shaped samples [1, 28, 28], 10 classes) one training step is timed two ways: with gradient
synchronisation (forward, backward, engine.finish_gradients, SGD step) and without it (forward
and backward inside engine.local_backward, i.e. no_sync, so no allreduce happens). Blocks of
`steps` steps alternate in ABBA order (sync, no-sync, no-sync, sync, ...) to cancel drift; each
block's time is the max over ranks, and the medians over `repeats` pairs are reported. The
exchange alone is one allreduce of the model's gradient bytes with the engine's own collective
(ddtrain-bench allreduce's timing, on the same engine object), and

    hidden fraction = 1 - (t_sync - t_nosync) / t_comm_alone

is 1 when the exchange costs the step nothing and 0 when none of it overlaps with computation
(negative: syncing costs more than the allreduce alone, e.g. per-bucket overheads).
Hydra overrides after the options apply to every model (e.g. 'model.hidden_sizes=[1024,1024]').
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

from ddtrain.config import ENGINES
from ddtrain.errors import UserError
from ddtrain.perf import allreduce
from ddtrain.perf.predict import gradient_bytes

MODELS = ("lenet5", "mlp")
# the Core benchmark models (benchmarks/overhead.py): the MLP is 784-1024-1024-10
MODEL_OVERRIDES = {"mlp": ["model.hidden_sizes=[1024,1024]"]}
SAMPLE_SHAPE = (1, 28, 28)  # MNIST
NUM_CLASSES = 10


def abba_order(repeats: int) -> list[bool]:
    """Block order for `repeats` pairs: True = with sync. Pairs alternate (sync, no-sync), (no-sync, sync)."""
    order = []
    for r in range(repeats):
        order += [True, False] if r % 2 == 0 else [False, True]
    return order


def hidden_fraction(t_sync: float, t_nosync: float, t_comm: float) -> float:
    """1 - (t_sync - t_nosync) / t_comm: the share of the allreduce time the step does not pay."""
    return 1.0 - (t_sync - t_nosync) / t_comm


def engine_names(text: str) -> list[str]:
    """'ddp,mpi' -> ['ddp', 'mpi']; unknown names are a UserError."""
    return _names(text, ENGINES, "--engines")


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"{option}={text} names {', '.join(bad) or 'nothing'}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _OverlapDist:
    """The dist settings of the engines under test (bucket size from the model config, no compression)."""

    bucket_cap_mb: float
    backend: str = "auto"
    compression: str = "none"


def engine_library(name: str, d, timeout_s: float, bucket_cap_mb: float):
    """(the engine `name` in this job and its allreduce Library, None) or (None, None, why it is skipped).

    ddp is the job's own engine (its torch group); horovod and mpi are started beside it.
    """
    import torch

    from ddtrain.distributed import engines

    library = {"ddp": d.library, "horovod": "horovod", "mpi": "mpi"}[name]
    reason = allreduce.availability(library, d)
    if reason is None and name != "ddp":
        try:
            engines.check_installed(name)
        except UserError as exc:
            reason = str(exc)
    if set(d.all_gather_object(reason)) != {None}:  # skip only together
        return None, None, reason or "not available on another rank"
    if name == "ddp":
        engine = d
    else:
        engine = engines.create(name, d.env, d.device, _OverlapDist(bucket_cap_mb))
        engine.start(timeout_s)
    gpu = d.device.type == "cuda" and (library == "nccl" or (name == "horovod" and engine.hvd.nccl_built()))
    return engine, allreduce.Library(library, engine, d.device if gpu else torch.device("cpu")), None


class StepBench:
    """One model wrapped by one engine, with a fixed synthetic batch; times blocks of steps.

    The step follows the trainer's order: backward, finish_gradients, then the optimizer step inside
    the engine's step_context; a step without sync runs forward and backward inside
    engine.local_backward.
    """

    def __init__(self, engine, model_cfg, batch: int, seed: int = 0):
        import torch

        from ddtrain.models import build_model

        self.d = self.engine = engine  # the engine under test: its collectives time and compare the ranks
        torch.manual_seed(seed)
        self.model = build_model(model_cfg, SAMPLE_SHAPE, NUM_CLASSES).to(engine.device)
        self.grad_bytes = gradient_bytes(self.model)
        self.wrapped = engine.wrap(self.model)  # a fresh gradient exchange for this model
        opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.opt = engine.wrap_optimizer(opt, self.model, 1)
        engine.broadcast_state(self.model, self.opt)
        gen = torch.Generator().manual_seed(seed + engine.rank)  # each rank its own data, as in training
        self.x = torch.randn(batch, *SAMPLE_SHAPE, generator=gen).to(engine.device)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(engine.device)

    def step(self, sync: bool) -> None:
        """Forward, backward, (finish the exchange), SGD step; without sync no gradient leaves the rank."""
        import torch.nn.functional as F

        with contextlib.nullcontext() if sync else self.engine.local_backward(self.wrapped):
            loss = F.cross_entropy(self.wrapped(self.x), self.y)
            loss.backward()
        if sync:
            self.engine.finish_gradients()
        with self.engine.step_context():
            self.opt.step()
        self.opt.zero_grad()  # set_to_none (Horovod's wrapper takes no argument)

    def ranks_identical(self) -> bool:
        """True when every rank holds bit-identical parameters."""
        import hashlib

        digest = hashlib.sha256()
        for p in self.model.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
        return len(set(self.d.all_gather_object(digest.hexdigest()))) == 1

    def _device_sync(self) -> None:
        if self.d.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.d.device)

    def block(self, sync: bool, steps: int) -> float:
        """Seconds per step over `steps` steps, the max over ranks (barrier before and after)."""
        self._device_sync()
        self.d.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(sync)
        self._device_sync()
        self.d.barrier()
        return max(self.d.all_gather_object((time.perf_counter() - t0) / steps))


def measure(timer: StepBench, lib, steps: int, warmup: int, repeats: int, comm_iters: int) -> dict:
    """ABBA-ordered sync/no-sync blocks and the allreduce of the gradient bytes alone; times in ms.

    First a check that the two kinds of step differ as they should: from identical weights, a step
    with sync leaves the ranks identical, and a step without it (each rank has its own data) does not.
    """
    timer.step(True)
    identical_after_sync = timer.ranks_identical()
    timer.step(False)
    identical_after_nosync = timer.ranks_identical()
    for sync in (True, False):
        for _ in range(warmup):
            timer.step(sync)
    blocks = [{"sync": s, "ms": timer.block(s, steps) * 1e3} for s in abba_order(repeats)]
    t_sync = statistics.median(b["ms"] for b in blocks if b["sync"])
    t_nosync = statistics.median(b["ms"] for b in blocks if not b["sync"])
    comm_bytes = timer.grad_bytes // allreduce.DTYPE_BYTES * allreduce.DTYPE_BYTES
    allreduce.time_allreduce(lib, comm_bytes, 1, warmup)  # first use of this size: buffers, negotiation
    t_comm = max(timer.d.all_gather_object(allreduce.time_allreduce(lib, comm_bytes, comm_iters, 1))) * 1e3
    return {"grad_bytes": timer.grad_bytes, "t_sync_ms": t_sync, "t_nosync_ms": t_nosync,
            "not_hidden_ms": t_sync - t_nosync, "t_comm_alone_ms": t_comm,
            "hidden_fraction": hidden_fraction(t_sync, t_nosync, t_comm), "blocks": blocks,
            "identical_after_sync": identical_after_sync, "identical_after_nosync": identical_after_nosync}


def format_report(result: dict) -> str:
    """One line per engine and model."""
    lines = [f"overlap: {result['world_size']} rank(s), batch {result['batch_per_rank']} per rank, "
             f"{result['steps']} steps per block, {result['repeats']} ABBA pairs (medians), device {result['device']}",
             f"  {'engine':8s} {'model':8s} {'grad KiB':>9s} {'sync ms':>9s} {'no-sync ms':>11s} {'not hidden':>11s} "
             f"{'comm alone':>11s} {'hidden':>7s}"]
    for name, e in result["engines"].items():
        if e["status"] != "ok":
            lines.append(f"  {name:8s} skipped: {e['reason']}")
            continue
        for model, m in e["models"].items():
            lines.append(f"  {name:8s} {model:8s} {m['grad_bytes'] / 1024:9.1f} {m['t_sync_ms']:9.3f} "
                         f"{m['t_nosync_ms']:11.3f} {m['not_hidden_ms']:11.3f} {m['t_comm_alone_ms']:11.3f} "
                         f"{m['hidden_fraction']:7.2f}")
    return "\n".join(lines)


def run(opts, overrides: list[str], d) -> dict:
    """Every requested engine x model in the job of ddp engine d; returns the JSON-able result."""
    from ddtrain.compose import compose

    engines = engine_names(opts.engines)
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    cfgs = {m: compose("train", [f"model={m}", *MODEL_OVERRIDES.get(m, []), *overrides]) for m in models}
    result = {"world_size": d.world_size, "launcher": d.env.launcher, "device": str(d.device),
              "batch_per_rank": opts.batch, "steps": opts.steps, "warmup": opts.warmup, "repeats": opts.repeats,
              "comm_iters": opts.comm_iters, "sample_shape": list(SAMPLE_SHAPE), "engines": {}}
    bucket_cap_mb = cfgs[models[0]].dist.bucket_cap_mb
    for name in engines:
        engine, lib, reason = engine_library(name, d, opts.timeout_s, bucket_cap_mb)
        if engine is None:
            result["engines"][name] = {"status": "skipped", "reason": reason}
            continue
        entry = result["engines"][name] = {"status": "ok", "collective": lib.name, "backend": engine.library,
                                           "models": {}}
        for m in models:
            timer = StepBench(engine, cfgs[m].model, opts.batch)
            entry["models"][m] = measure(timer, lib, opts.steps, opts.warmup, opts.repeats, opts.comm_iters)
            del timer
        engine.barrier()
        if engine is not d:
            engine.shutdown()
    return result
