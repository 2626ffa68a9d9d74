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
(ddtrain-bench allreduce's timing), and

    hidden fraction = 1 - (t_sync - t_nosync) / t_comm_alone

is 1 when the exchange costs the step nothing and 0 when none of it overlaps with computation
(negative: syncing costs more than the allreduce alone, e.g. per-bucket overheads).
Hydra overrides after the options apply to every model (e.g. 'model.hidden_sizes=[1024,1024]').
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

from ddtrain import commbench
from ddtrain.errors import UserError

ENGINES = ("ddp", "horovod", "mpi")
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


def gradient_bytes(model) -> int:
    """Bytes of all gradients the engine exchanges (trainable parameters)."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise UserError(f"{option}={text} names {', '.join(bad) or 'nothing'}; choose from {','.join(allowed)}")
    return list(dict.fromkeys(names))


def collective_for(engine: str, d) -> tuple[str, str | None]:
    """(allreduce bench engine that carries this training engine's exchange, reason it cannot run or None)."""
    name = {"ddp": d.backend, "horovod": "horovod", "mpi": "mpi"}[engine]
    return name, commbench.availability(name, d)


def build_engine_or_reason(name: str, d, bucket_cap_mb: float):
    """(engine, None) or (None, why it is skipped): unknown engine names and missing packages are skips."""
    from ddtrain.engines import build_engine

    try:
        return build_engine(name, d, bucket_cap_mb), None
    except UserError as exc:
        return None, str(exc)
    except ImportError as exc:
        hint = f": run {commbench.INSTALL_HOROVOD}" if name == "horovod" else ""
        return None, f"{exc}{hint}"


def engine_dist(name: str, d, timeout_s: float, bucket_cap_mb: float):
    """The Dist an engine runs on: the job's torch group for ddp; for horovod/mpi, ddtrain.dist.init with that engine
    (Horovod initialised as training does it, with its fusion threshold from bucket_cap_mb; mpi: mpi4py's world)."""
    from ddtrain import dist as ddist

    if name == "ddp":
        return d
    return ddist.init(d.env, "auto", timeout_s, engine=name, bucket_cap_mb=bucket_cap_mb)


class StepTimer:
    """One model wrapped by one engine, with a fixed synthetic batch; times blocks of steps.

    The step follows the trainer's order: backward, finish_gradients, then the optimizer step inside
    the engine's step_context; a step without sync runs forward and backward inside
    engine.local_backward (engine.no_sync where an engine has no separate one).
    """

    def __init__(self, d, engine, model_cfg, batch: int, seed: int = 0):
        import torch

        from ddtrain.models import build_model

        self.d, self.engine = d, engine
        torch.manual_seed(seed)
        self.model = build_model(model_cfg, SAMPLE_SHAPE, NUM_CLASSES).to(d.device)
        self.grad_bytes = gradient_bytes(self.model)
        self.wrapped = engine.wrap(self.model)
        opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        wrap_optimizer = getattr(engine, "wrap_optimizer", None)
        self.opt = wrap_optimizer(opt, self.model, 1) if wrap_optimizer else opt
        if hasattr(engine, "broadcast_state"):
            engine.broadcast_state(self.model, self.opt)
        self.local = getattr(engine, "local_backward", engine.no_sync)
        self.step_context = getattr(engine, "step_context", contextlib.nullcontext)
        gen = torch.Generator().manual_seed(seed + d.rank)  # each rank its own data, as in training
        self.x = torch.randn(batch, *SAMPLE_SHAPE, generator=gen).to(d.device)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(d.device)

    def step(self, sync: bool) -> None:
        """Forward, backward, (finish the exchange), SGD step; without sync no gradient leaves the rank."""
        import torch.nn.functional as F

        with contextlib.nullcontext() if sync else self.local(self.wrapped):
            loss = F.cross_entropy(self.wrapped(self.x), self.y)
            loss.backward()
        if sync:
            self.engine.finish_gradients()
        with self.step_context():
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


def measure(timer: StepTimer, coll, steps: int, warmup: int, repeats: int, comm_iters: int) -> dict:
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
    comm_bytes = timer.grad_bytes // commbench.DTYPE_BYTES * commbench.DTYPE_BYTES
    commbench.time_allreduce(coll, comm_bytes, 1, warmup)  # first use of this size: buffers, negotiation
    t_comm = max(timer.d.all_gather_object(commbench.time_allreduce(coll, comm_bytes, comm_iters, 1))) * 1e3
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


def build_parser() -> argparse.ArgumentParser:
    """Options of ddtrain-bench overlap."""
    p = argparse.ArgumentParser(prog="ddtrain-bench overlap", description=__doc__.split("\n\n")[2],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated configs/model names")
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each kind first")
    p.add_argument("--repeats", type=int, default=4, help="ABBA pairs of blocks (even: drift cancels)")
    p.add_argument("--comm-iters", type=int, default=50, help="allreduces timed for the exchange alone")
    p.add_argument("--timeout-s", type=float, default=300.0, help="process-group timeout")
    p.add_argument("--json", type=Path, help="write the results here (rank 0)")
    return p


def run(opts, overrides: list[str], d) -> dict:
    """Every requested engine x model in the job d; returns the JSON-able result."""
    from ddtrain import cli
    from ddtrain import dist as ddist

    engines = _names(opts.engines, ENGINES, "--engines")
    models = [m.strip() for m in opts.models.split(",") if m.strip()]
    cfgs = {m: cli.compose("train", [f"model={m}", *MODEL_OVERRIDES.get(m, []), *overrides]) for m in models}
    result = {"world_size": d.world_size, "launcher": d.env.launcher, "device": str(d.device),
              "batch_per_rank": opts.batch, "steps": opts.steps, "warmup": opts.warmup, "repeats": opts.repeats,
              "comm_iters": opts.comm_iters, "sample_shape": list(SAMPLE_SHAPE), "engines": {}}
    bucket_cap_mb = cfgs[models[0]].dist.bucket_cap_mb
    for name in engines:
        coll_name, reason = collective_for(name, d)
        if reason is None:  # an engine that cannot be built (not written yet, package missing) is a skip
            reason = build_engine_or_reason(name, d, bucket_cap_mb)[1]
        reasons = set(d.all_gather_object(reason))  # skip only together
        if reasons != {None}:
            result["engines"][name] = {"status": "skipped", "reason": "; ".join(sorted(r for r in reasons if r))}
            continue
        ed = engine_dist(name, d, opts.timeout_s, bucket_cap_mb)
        coll = commbench.make_collective(coll_name, ed)
        entry = result["engines"][name] = {"status": "ok", "collective": coll_name, "backend": ed.backend,
                                           "models": {}}
        for m in models:
            engine = build_engine_or_reason(name, ed, bucket_cap_mb)[0]  # a fresh engine per model
            timer = StepTimer(ed, engine, cfgs[m].model, opts.batch)
            entry["models"][m] = measure(timer, coll, opts.steps, opts.warmup, opts.repeats, opts.comm_iters)
            del timer, engine
        ed.barrier()
        if ed is not d:
            ddist.shutdown(ed)
    if d.is_main:
        print(format_report(result), flush=True)
    return result


def main(argv: list[str]) -> dict:
    """ddtrain-bench overlap (see the module docstring)."""
    from ddtrain import cli
    from ddtrain import dist as ddist

    opts, overrides = build_parser().parse_known_args(argv)
    with cli.user_errors():
        _names(opts.engines, ENGINES, "--engines")
        if min(opts.batch, opts.steps, opts.repeats, opts.comm_iters) < 1 or opts.warmup < 0:
            raise UserError("--batch, --steps, --repeats and --comm-iters must be at least 1, --warmup at least 0")
        env = commbench.launched_env("overlap")
        d = ddist.init(env, "auto", opts.timeout_s)
        result = run(opts, overrides, d)
    if d.is_main and opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2) + "\n")
    d.barrier()
    ddist.shutdown(d)
    return result
