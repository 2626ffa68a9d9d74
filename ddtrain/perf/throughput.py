"""The throughput benchmark: ddtrain's steady-state samples/s beside a minimal hand-written DDP loop.

It follows Horovod's synthetic benchmark: warm up, then time `iters` intervals of `batches-per-iter`
steps each and report mean ± spread of samples/s. Beside it runs the loop a careful user writes by
hand on the same model, data, batch and precision; their ratio is ddtrain's overhead.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from ddtrain.errors import UserError

# keys the benchmark sets itself: measurement cadence, and nothing that is not training
FORCED = {
    "logging.progress": "false", "logging.tensorboard": "false", "checkpoint.every_steps": "0",
    "checkpoint.resume": "never", "dataset.val_fraction": "0",
}


def hand_loop(cfg, d, warmup: int, iters: int, batches_per_iter: int) -> dict:
    """The minimal loop a user writes: shuffled in-memory batches, forward, loss, backward, SGD step."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ddtrain.data import load_splits
    from ddtrain.models import build_model
    from ddtrain.runtime.loss import build_loss

    tc = cfg.train
    device = d.device
    data = load_splits(cfg.dataset, device)
    x, y = data.train_x, data.train_y
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, tuple(data.input_shape), data.num_classes).to(device)
    loss_fn = build_loss(cfg.get("loss"))
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if d.active:
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    bucket_cap_mb=cfg.dist.bucket_cap_mb, gradient_as_bucket_view=True)
    if tc.compile:
        model = torch.compile(model)
    kernels = {"fused": True} if device.type == "cuda" else {"foreach": True}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **kernels)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")
    b = tc.global_batch_size // d.world_size
    perm = torch.randperm(len(x), device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        d.barrier()

    rates = []
    step = 0
    for interval in range(-1, iters):
        n = warmup if interval < 0 else batches_per_iter
        sync()
        t0 = time.perf_counter()
        for _ in range(n):
            start = (step * b) % (len(x) - b + 1)
            idx = perm[start:start + b]
            xb, yb = x[idx], y[idx]
            if tc.channels_last and xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model(xb), yb)  # the configured loss (cross-entropy by default), in fp32
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            step += 1
        sync()
        if interval >= 0:
            rates.append(n * tc.global_batch_size / (time.perf_counter() - t0))
    return {"samples_per_s": statistics.mean(rates), "samples_per_s_std": statistics.pstdev(rates),
            "intervals": len(rates)}


def with_forced(overrides: list[str], forced: dict) -> list[str]:
    """The user's overrides with the benchmark's own keys replaced by its values."""
    keys = set(forced)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in keys] + [
        f"{k}={v}" for k, v in forced.items()]


def bench_overrides(overrides: list[str], warmup: int, iters: int, batches_per_iter: int) -> list[str]:
    """The ddtrain-train overrides of a throughput run: only the steady-state window is timed, nothing else runs."""
    return with_forced(overrides, {**FORCED, "train.max_steps": str(warmup + iters * batches_per_iter),
                                   "train.throughput_warmup_steps": str(warmup),
                                   "train.log_every": str(batches_per_iter), "train.eval_every": str(10**9)})


def measure(cfg, session, warmup: int, iters: int, batches_per_iter: int, repeats: int, out_dir: Path) -> dict:
    """Alternate the hand loop and ddtrain `repeats` times in one job; returns the JSON-able result."""
    from ddtrain.models import model_name
    from ddtrain.runtime.run import run

    if cfg.dist.engine != "ddp":
        raise UserError("ddtrain-bench throughput compares with a hand-written DDP loop: use dist.engine=ddp")
    d = session.engine
    rows = []
    for r in range(repeats):  # alternate, so drift on a shared machine hits both alike
        hand = hand_loop(cfg, d, warmup, iters, batches_per_iter)
        session.log_to(out_dir / f"ddtrain-{r}")
        ours = run(cfg, session, out_dir / f"ddtrain-{r}")
        rows.append({"ddtrain": ours["samples_per_s"], "ddtrain_std": ours["samples_per_s_std"],
                     "hand": hand["samples_per_s"], "hand_std": hand["samples_per_s_std"],
                     "ratio": ours["samples_per_s"] / hand["samples_per_s"], "summary": ours})
    s = rows[-1]["summary"]
    fps, peak = s.get("flops_per_sample"), s.get("peak_flops_per_device")

    def mfu(rate):
        return fps * rate / d.world_size / peak if fps and peak else None

    med = {k: statistics.median(r[k] for r in rows) for k in ("ddtrain", "hand", "ratio")}
    for r in rows:
        r["ddtrain_mfu"], r["hand_mfu"] = mfu(r["ddtrain"]), mfu(r["hand"])
    return {
        "model": model_name(cfg.model), "dataset": cfg.dataset.name, "shape": list(cfg.dataset.shape),
        "global_batch_size": cfg.train.global_batch_size, "world_size": d.world_size,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "device": s["device"], "gpu": s.get("gpu"), "flops_per_sample": fps,
        "ddtrain_samples_per_s": med["ddtrain"], "hand_samples_per_s": med["hand"], "ratio": med["ratio"],
        "ddtrain_mfu": mfu(med["ddtrain"]), "hand_mfu": mfu(med["hand"]),
        "repeats": [{k: v for k, v in r.items() if k != "summary"} for r in rows],
    }


def format_report(result: dict) -> str:
    """The table printed by ddtrain-bench throughput."""
    def pct(v):
        return f"{100 * v:5.1f}%" if v is not None else "  n/a"
    lines = [f"\nthroughput: {result['model']} on {result['dataset']} {result['shape']}, global batch "
             f"{result['global_batch_size']}, {result['world_size']} rank(s), {result['precision']}, "
             f"channels_last={result['channels_last']}, compile={result['compile']}, device {result['device']} "
             f"({result.get('gpu') or 'no peak known'})",
             f"  {'':22s} {'samples/s':>12s} {'± std':>10s} {'MFU':>7s}"]
    for i, r in enumerate(result["repeats"]):
        lines.append(f"  ddtrain        (run {i}) {r['ddtrain']:12,.1f} {r['ddtrain_std'] or 0:10,.1f} "
                     f"{pct(r['ddtrain_mfu'])}")
        lines.append(f"  hand-written   (run {i}) {r['hand']:12,.1f} {r['hand_std']:10,.1f} {pct(r['hand_mfu'])}")
    lines.append(f"  ratio ddtrain / hand-written loop: {result['ratio']:.3f} (median of {len(result['repeats'])})")
    return "\n".join(lines)
