"""ddtrain-bench: synthetic throughput against a minimal hand-written loop, and the scaling predictor.

    ddtrain-bench throughput [--warmup 10] [--iters 10] [--batches-per-iter 10] [--repeats 1] [--json F] <overrides>
    ddtrain-bench predict ...            (see ddtrain-bench predict --help)
    ddtrain-bench allreduce ...          allreduce time/bandwidth per size and engine (under mpirun/torchrun)
    ddtrain-bench overlap ...            step time with and without gradient sync per engine and model

`throughput` follows Horovod's synthetic benchmark: warm up, then time `iters` intervals of
`batches-per-iter` steps each and report mean ± spread of samples/s. Beside it runs the loop a
careful user writes by hand on the same model, data, batch and precision; their ratio is
ddtrain's overhead. It runs as one process or under any launcher, like ddtrain-train.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from ddtrain import cli

# keys the benchmark sets itself: measurement cadence, and nothing that is not training
FORCED = {
    "logging.progress": "false", "logging.tensorboard": "false", "checkpoint.every_steps": "0",
    "checkpoint.resume": "never", "dataset.val_fraction": "0",
}


def hand_loop(cfg, d, warmup: int, iters: int, batches_per_iter: int) -> dict:
    """The minimal loop a user writes: shuffled in-memory batches, forward, loss, backward, SGD step."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from ddtrain.data import load_splits
    from ddtrain.models import build_model

    tc = cfg.train
    device = d.device
    data = load_splits(cfg.dataset, device)
    x, y = data.train_x, data.train_y
    torch.manual_seed(tc.seed)
    model = build_model(cfg.model, tuple(data.input_shape), data.num_classes).to(device)
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
                loss = F.cross_entropy(model(xb).float(), yb)
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


def _with_forced(overrides: list[str], forced: dict) -> list[str]:
    keys = set(forced)
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+") not in keys] + [
        f"{k}={v}" for k, v in forced.items()]


def throughput(argv: list[str]) -> dict:
    """ddtrain-bench throughput: ddtrain's steady-state samples/s and the hand-written loop's, side by side."""
    from ddtrain import dist as ddist
    from ddtrain.config import register_configs, validate
    from ddtrain.env import detect
    from ddtrain.train import run

    parser = argparse.ArgumentParser(prog="ddtrain-bench throughput", description=__doc__.split("\n\n")[1])
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing starts (compilation, autotuning)")
    parser.add_argument("--iters", type=int, default=10, help="timed intervals")
    parser.add_argument("--batches-per-iter", type=int, default=10, help="steps per timed interval")
    parser.add_argument("--repeats", type=int, default=1, help="alternate hand loop and ddtrain this many times")
    parser.add_argument("--json", type=Path, help="write the results here (rank 0)")
    parser.add_argument("--out-dir", type=Path, help="run directories (default outputs/bench/<time>)")
    opts, overrides = parser.parse_known_args(argv)
    register_configs()
    forced = {**FORCED, "train.max_steps": str(opts.warmup + opts.iters * opts.batches_per_iter),
              "train.throughput_warmup_steps": str(opts.warmup), "train.log_every": str(opts.batches_per_iter),
              "train.eval_every": str(10**9)}
    with cli.user_errors():
        env = detect(os.environ)
        cfg = cli.compose("train", _with_forced(overrides, forced))
        validate(cfg, env.world_size)
        d = ddist.init(env, cfg.dist.backend, cfg.dist.timeout_s)
        out_dir = opts.out_dir or Path("outputs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
        rows = []
        for r in range(opts.repeats):  # alternate, so drift on a shared machine hits both alike
            hand = hand_loop(cfg, d, opts.warmup, opts.iters, opts.batches_per_iter)
            ours = run(cfg, str(out_dir / f"ddtrain-{r}"), d)
            rows.append({"ddtrain": ours["samples_per_s"], "ddtrain_std": ours["samples_per_s_std"],
                         "hand": hand["samples_per_s"], "hand_std": hand["samples_per_s_std"],
                         "ratio": ours["samples_per_s"] / hand["samples_per_s"], "summary": ours})
    result = _report(cfg, rows, d)
    if d.is_main and opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    d.barrier()
    ddist.shutdown(d)
    return result


def _report(cfg, rows: list[dict], d) -> dict:
    s = rows[-1]["summary"]
    fps, peak = s.get("flops_per_sample"), s.get("peak_flops_per_device")

    def mfu(rate):
        return fps * rate / d.world_size / peak if fps and peak else None

    med = {k: statistics.median(r[k] for r in rows) for k in ("ddtrain", "hand", "ratio")}
    result = {
        "model": cfg.model.name, "dataset": cfg.dataset.name, "shape": list(cfg.dataset.shape),
        "global_batch_size": cfg.train.global_batch_size, "world_size": d.world_size,
        "precision": cfg.train.precision, "channels_last": cfg.train.channels_last, "compile": cfg.train.compile,
        "device": s["device"], "gpu": s.get("gpu"), "flops_per_sample": fps,
        "ddtrain_samples_per_s": med["ddtrain"], "hand_samples_per_s": med["hand"], "ratio": med["ratio"],
        "ddtrain_mfu": mfu(med["ddtrain"]), "hand_mfu": mfu(med["hand"]),
        "repeats": [{k: v for k, v in r.items() if k != "summary"} for r in rows],
    }
    if d.is_main:
        def pct(v):
            return f"{100 * v:5.1f}%" if v is not None else "  n/a"
        print(f"\nthroughput: {cfg.model.name} on {cfg.dataset.name} {list(cfg.dataset.shape)}, global batch "
              f"{cfg.train.global_batch_size}, {d.world_size} rank(s), {cfg.train.precision}, "
              f"channels_last={cfg.train.channels_last}, compile={cfg.train.compile}, device {s['device']} "
              f"({s.get('gpu') or 'no peak known'})")
        print(f"  {'':22s} {'samples/s':>12s} {'± std':>10s} {'MFU':>7s}")
        for r_i, r in enumerate(rows):
            print(f"  ddtrain        (run {r_i}) {r['ddtrain']:12,.1f} {r['ddtrain_std'] or 0:10,.1f} {pct(mfu(r['ddtrain']))}")
            print(f"  hand-written   (run {r_i}) {r['hand']:12,.1f} {r['hand_std']:10,.1f} {pct(mfu(r['hand']))}")
        print(f"  ratio ddtrain / hand-written loop: {med['ratio']:.3f} (median of {len(rows)})", flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    """Console script ddtrain-bench."""
    argv = sys.argv[1:] if argv is None else argv
    from ddtrain import commbench, overlapbench
    commands = {"throughput": throughput, "allreduce": commbench.main, "overlap": overlapbench.main}
    try:
        from ddtrain import predict
        commands["predict"] = predict.main
    except ImportError:
        pass
    if not argv or argv[0] not in commands:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
