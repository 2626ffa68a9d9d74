"""Validate the scaling predictor (ddtrain/perf/predict.py) against what this machine can measure: 2 and 4 CPU ranks on gloo.

For each model (MLP 784-1024-1024-10 and LeNet-5 on synthetic data, per-rank batch 64) and rank count n,
back to back, every process with the thread count each of the n ranks gets (threads = cores // n, at
least 1, as ddtrain.distributed.rendezvous.limit_cpu_threads gives them):

1. compute: ddtrain-train as ONE process; its step_time_ms_median ("alone"). And n such one-process runs
   started together ("co-located"): the slowest one's step_time_ms_median. With n ranks on a few cores the
   ranks share cores, caches and memory bandwidth (and whatever else the machine runs), so a rank computes
   slower than a process alone; a single CPU "device" is a share of the machine, and co-location measures
   that share instead of assuming it.
2. link: gloo's allreduce under torchrun with n ranks: the median time of a one-float allreduce gives
   alpha = t_tiny / (2(n-1)); the median time of an allreduce of the model's gradient size S gives the
   bandwidth B = 2(n-1)/n x S / (t_S - 2(n-1) alpha): the ring model fitted at two points.
3. prediction: predict_step_time(compute, n, S, B, alpha, overlap=0). overlap = 0 because while a rank
   computes backward every core is busy: gloo's copies and reductions cannot run beside it for free.
   Reported two ways: with the co-located compute time (the headline "predicted") and with the alone
   time x contention factor max(1, n x threads / cores) (ranks needing more threads than there are cores
   take turns: 4 single-threaded ranks on 2 cores compute at half speed; memory-bandwidth contention
   and other load are ignored by this factor).
4. measurement: torchrun --nproc-per-node n ddtrain-train at the same per-rank batch; its step_time_ms_median.
   Steps 1 (co-located) and 4 alternate for --rounds rounds and the medians are compared, so drifting
   load hits both alike.

Prints model, ranks, the measured inputs, predicted ms, measured ms, error % and writes the rows as JSON:
with the default models and ranks to results/predict-validation-cpu.json (where the README's recorded
figures live; none is recorded yet, so the README's table is still copied by hand), otherwise to
outputs/benchmarks/, unless --out says where. About 3-5 minutes on 2 cores. Timing on a shared machine
is only as good as its quiet: the load average is printed before and after, and figures taken under
other load are not worth comparing.

    python benchmarks/predict_validation.py
    python benchmarks/predict_validation.py --models mlp --ranks 2 --out /tmp/pv.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import default_out, written  # noqa: E402

# name -> ddtrain-train overrides (model and sample shape)
MODELS = {
    "mlp": ["model=mlp", "model.hidden_sizes=[1024,1024]", "dataset.shape=[784]"],
    "lenet5": ["model=lenet5", "dataset.shape=[1,28,28]"],
}
# long enough that co-located copies, started together, overlap for most of their timed steps (their
# start-up differs by a fraction of a second) and the per-step median ignores the edges
PER_RANK_BATCH, STEPS, WARMUP = 64, 120, 20
TEARDOWN_FAILURES: list[dict] = []  # runs that timed fine but exited non-zero after summary.json


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_threads(n: int) -> int:
    """Intra-op threads each of n ranks on this machine gets (cores // n, at least one)."""
    return max(1, cores() // n)


def contention(n: int, threads: int) -> float:
    """Compute slow-down of n ranks x threads on the cores: max(1, n x threads / cores)."""
    return max(1.0, n * threads / cores())


def _exe(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    for key in list(env):  # never inherit a launcher's identity
        if key.startswith(("OMPI_COMM_WORLD", "PMI_", "SLURM_")) or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(key)
    return env


def _torchrun(n: int) -> list[str]:
    return [_exe("torchrun"), "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port())]


def _check(proc: subprocess.CompletedProcess, cmd: list[str]) -> None:
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")


def gradient_size(model: str) -> int:
    """Gradient bytes of the case's model (fp32), built as ddtrain-train builds it."""
    from omegaconf import OmegaConf

    from ddtrain.config import ModelConfig
    from ddtrain.models import build_model
    from ddtrain.perf.predict import gradient_bytes

    kv = dict(o.split("=", 1) for o in MODELS[model])
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"name": kv["model"]})
    if "model.hidden_sizes" in kv:
        cfg.hidden_sizes = json.loads(kv["model.hidden_sizes"])
    return gradient_bytes(build_model(cfg, json.loads(kv["dataset.shape"]), 10))


def _train_cmd(model: str, world: int, workdir: Path, steps: int, warmup: int,
               per_rank_batch: int) -> tuple[list[str], Path]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"{model}-{world}-", dir=workdir))
    overrides = MODELS[model] + [
        "dataset=synthetic", "dataset.num_samples=4096", "dataset.num_test_samples=256", "dataset.val_fraction=0",
        f"train.global_batch_size={world * per_rank_batch}", f"train.base_batch_size={world * per_rank_batch}",
        f"train.max_steps={warmup + steps}", f"train.throughput_warmup_steps={warmup}",
        "train.log_every=1000000000", "logging.progress=false", "logging.tensorboard=false",
        "checkpoint.resume=never", "schedule=constant", f"hydra.run.dir={run_dir}"]
    cmd = ([] if world == 1 else _torchrun(world) + ["--no-python"]) + [_exe("ddtrain-train")] + overrides
    return cmd, run_dir


def _step_ms(run_dir: Path, world: int, per_rank_batch: int) -> float:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == world and summary["per_rank_batch_size"] == per_rank_batch, summary
    return float(summary["step_time_ms_median"])


def train_step_ms(model: str, world: int, threads: int, workdir: Path, steps: int = STEPS,
                  warmup: int = WARMUP, per_rank_batch: int = PER_RANK_BATCH) -> float:
    """step_time_ms_median of ddtrain-train with `world` ranks (one process if 1) at the per-rank batch."""
    cmd, run_dir = _train_cmd(model, world, workdir, steps, warmup, per_rank_batch)
    proc = subprocess.run(cmd, env=_env(threads), cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0 and (run_dir / "summary.json").is_file():
        # training finished and rank 0 wrote its summary; a rank died afterwards (seen: SIGABRT in gloo
        # teardown with 4 oversubscribed ranks). The timing is valid; say so rather than hide it
        crash = [ln for ln in proc.stderr.splitlines() if "exitcode" in ln or "terminate" in ln or "Signal" in ln]
        print(f"warning: {model} with {world} rank(s) exited {proc.returncode} after writing summary.json: "
              f"{'; '.join(s.strip() for s in crash[:4])}", file=sys.stderr, flush=True)
        TEARDOWN_FAILURES.append({"model": model, "world": world, "returncode": proc.returncode, "lines": crash})
    else:
        _check(proc, cmd)
    return _step_ms(run_dir, world, per_rank_batch)


def colocated_step_ms(model: str, copies: int, threads: int, workdir: Path, steps: int = STEPS,
                      warmup: int = WARMUP, per_rank_batch: int = PER_RANK_BATCH) -> list[float]:
    """step_time_ms_median of `copies` independent one-process runs started together: compute under co-location."""
    jobs = []
    for _ in range(copies):
        cmd, run_dir = _train_cmd(model, 1, workdir, steps, warmup, per_rank_batch)
        jobs.append((cmd, run_dir, subprocess.Popen(cmd, env=_env(threads), cwd=workdir, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)))
    times = []
    for cmd, run_dir, proc in jobs:
        out, err = proc.communicate()
        _check(subprocess.CompletedProcess(cmd, proc.returncode, out, err), cmd)
        times.append(_step_ms(run_dir, 1, per_rank_batch))
    return times


def measure_link(n: int, size_bytes: int, threads: int, workdir: Path) -> dict:
    """Fit gloo's ring model on n local ranks: alpha from a one-float allreduce, bandwidth from one of size_bytes."""
    out = workdir / f"link-{n}-{size_bytes}.json"
    cmd = _torchrun(n) + [str(Path(__file__).resolve()), "--allreduce-worker", str(size_bytes), str(out)]
    _check(subprocess.run(cmd, env=_env(threads), cwd=workdir, capture_output=True, text=True), cmd)
    t = json.loads(out.read_text())
    alpha = t["tiny_s"] / (2 * (n - 1))
    # guard: a large allreduce never takes less than its latency part
    bandwidth = 2 * (n - 1) / n * size_bytes / max(t["large_s"] - 2 * (n - 1) * alpha, 1e-9)
    return {"alpha_s": alpha, "bandwidth": bandwidth, **t}


def _allreduce_worker(size_bytes: int, out: str) -> None:
    # runs under torchrun: median allreduce times of a one-float tensor and of a size_bytes tensor
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    tiny, large = torch.ones(1), torch.ones(max(1, size_bytes // 4))

    def median_s(t, reps: int) -> float:
        for _ in range(3):  # warm-up: connections, allocations
            dist.all_reduce(t)
        times = []
        for _ in range(reps):
            dist.barrier()  # start together, as the ranks do after a synchronised backward
            t0 = time.perf_counter()
            dist.all_reduce(t)
            times.append(time.perf_counter() - t0)
        slowest = torch.tensor([statistics.median(times)])
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # a step waits for the slowest rank
        return slowest.item()

    result = {"tiny_s": median_s(tiny, 200), "large_s": median_s(large, 30)}
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps(result))
    dist.destroy_process_group()


def validate(model: str, n: int, workdir: Path, steps: int = STEPS, warmup: int = WARMUP, rounds: int = 2,
             alone: bool = True) -> dict:
    """Measure compute and link, predict the n-rank step time (also via the contention factor if alone), measure it."""
    from ddtrain.perf.predict import predict_step_time

    threads, size = rank_threads(n), gradient_size(model)
    alone_ms = train_step_ms(model, 1, threads, workdir, steps, warmup) if alone else float("nan")
    link = measure_link(n, size, threads, workdir)
    # co-located compute and the real n-rank run alternate, so drifting load on a shared machine hits both
    colocated, measured = [], []
    for _ in range(rounds):
        # a synchronous step waits for the slowest rank: the slowest co-located copy
        colocated.append(max(colocated_step_ms(model, n, threads, workdir, steps, warmup)))
        measured.append(train_step_ms(model, n, threads, workdir, steps, warmup))
    colocated_ms, measured_ms = statistics.median(colocated), statistics.median(measured)
    factor = contention(n, threads)
    # overlap 0: while a rank computes backward every core is busy, so gloo's work is not hidden
    comm_ms = 1e3 * predict_step_time(0.0, n, size, link["bandwidth"], link["alpha_s"])
    predicted_ms = colocated_ms + comm_ms
    predicted_factor_ms = alone_ms * factor + comm_ms
    return {"model": model, "ranks": n, "threads_per_rank": threads, "cores": cores(), "grad_bytes": size,
            "compute_alone_ms": alone_ms, "contention_factor": factor, "compute_colocated_ms": colocated_ms,
            "compute_colocated_rounds_ms": colocated, "measured_rounds_ms": measured,
            "alpha_us": 1e6 * link["alpha_s"], "bandwidth_gb_s": link["bandwidth"] / 1e9,
            "allreduce_tiny_ms": 1e3 * link["tiny_s"], "allreduce_grad_ms": 1e3 * link["large_s"], "comm_ms": comm_ms,
            "predicted_ms": predicted_ms, "predicted_factor_ms": predicted_factor_ms, "measured_ms": measured_ms,
            "error_pct": 100 * (predicted_ms - measured_ms) / measured_ms,
            "error_factor_pct": 100 * (predicted_factor_ms - measured_ms) / measured_ms,
            "load_average": os.getloadavg()[0]}


def format_rows(rows: list[dict]) -> str:
    """The validation table as plain text."""
    head = (f"{'model':7s} {'ranks':>5s} {'thr':>3s} {'alone':>6s} {'xfact':>5s} {'coloc':>6s} {'alpha us':>8s} "
            f"{'GB/s':>5s} {'comm':>6s} | {'predicted ms':>12s} {'measured ms':>11s} {'error %':>7s} | "
            f"{'factor pred':>11s} {'error %':>7s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:7s} {r['ranks']:5d} {r['threads_per_rank']:3d} {r['compute_alone_ms']:6.2f} "
                     f"{r['contention_factor']:5.2f} {r['compute_colocated_ms']:6.2f} {r['alpha_us']:8.1f} "
                     f"{r['bandwidth_gb_s']:5.2f} {r['comm_ms']:6.2f} | {r['predicted_ms']:12.2f} "
                     f"{r['measured_ms']:11.2f} {r['error_pct']:+7.1f} | {r['predicted_factor_ms']:11.2f} "
                     f"{r['error_factor_pct']:+7.1f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    """Validate for each model and rank count and print the table (or serve as the allreduce worker)."""
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--allreduce-worker":
        _allreduce_worker(int(sys.argv[2]), sys.argv[3])
        return
    p = argparse.ArgumentParser(description="predicted vs measured step time of 2 and 4 gloo CPU ranks")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of mlp,lenet5")
    p.add_argument("--ranks", default="2,4", help="comma-separated rank counts")
    p.add_argument("--rounds", type=int, default=2, help="alternating co-located / n-rank measurements (default 2)")
    p.add_argument("--out", type=Path, help="where the rows go as JSON (default: results/predict-validation-cpu.json "
                   "with the default models and ranks, else outputs/benchmarks/predict-validation-cpu.json)")
    a = p.parse_args(argv)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    print(f"{cores()} core(s), load average {load0:.2f} at start", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddtrain-predict-") as tmp:
        for model in a.models.split(","):
            for n in (int(v) for v in a.ranks.split(",")):
                rows.append(validate(model, n, Path(tmp), rounds=a.rounds))
                print(format_rows(rows[-1:]).splitlines()[-1], flush=True)
    print(format_rows(rows))
    print("alone: one process, ms/step; xfact: contention factor max(1, n x threads / cores); coloc: slowest of n "
          "co-located one-process runs; alpha, GB/s: gloo ring fit; comm: its allreduce time of the gradient;\n"
          "predicted = coloc + comm; factor pred = alone x xfact + comm; measured: n-rank ddtrain-train; all "
          "step_time_ms_median")
    if TEARDOWN_FAILURES:
        print(f"{len(TEARDOWN_FAILURES)} run(s) exited non-zero after writing summary.json (see warnings above)")
    print(f"{time.perf_counter() - t0:.0f} s; load average {load0:.2f} at start, {os.getloadavg()[0]:.2f} now")
    out = a.out or default_out("predict-validation-cpu.json",
                               recorded=(a.models, a.ranks) == (",".join(MODELS), "2,4"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cores": cores(), "load_average_at_start": load0, "rows": rows,
                               "teardown_failures": TEARDOWN_FAILURES}, indent=2) + "\n")
    print(written(out))


if __name__ == "__main__":
    main()
