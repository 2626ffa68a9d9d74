"""Engine benchmark: the same ddtrain-train run on the ddp, horovod and mpi engines, side by side.

The Core benchmark models (MLP 784-1024-1024-10 and LeNet-5 on synthetic data, global batch 128,
SGD with momentum; the settings of benchmarks/overhead.py) train on 2 ranks under mpirun with each
engine. Engines run in rotating order (repeat 0: ddp, horovod, mpi; repeat 1: mpi, horovod, ddp;
...) so drift of a shared machine hits all alike. Reported per model: each engine's median
samples/s and median step time, and the ratios of the mpi engine's step time to Horovod's and to
DDP's (target: within 10%). Every run must end with ranks holding identical parameters.

A full 2-rank run writes results/engines-cpu.json, the README's recorded figures (`make figures`
turns it into the README's table); --quick or another --ranks writes to outputs/benchmarks/ instead,
unless --out says where.

    python benchmarks/engines.py                      # 4 repeats, ~3-5 minutes on 2 idle cores
    python benchmarks/engines.py --quick              # 1 repeat, short runs: a smoke test
    python benchmarks/engines.py --repeats 6 --out /tmp/engines.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the README's table, printed by the same formatter that `make figures` uses
from figure_tables import engines as table  # noqa: E402
from overhead import GLOBAL_BATCH, MODELS, _check, ddtrain_overrides, executable  # noqa: E402
from recorded import default_out, written  # noqa: E402

ENGINES = ("ddp", "horovod", "mpi")
STEPS = {"mlp": 400, "lenet5": 500}
WARMUP = 30


def run_engine(engine: str, model: str, ranks: int, steps: int, warmup: int, workdir: Path, tag: str) -> dict:
    """One 2-rank ddtrain-train run under mpirun; its throughput figures."""
    run_dir = workdir / f"{engine}-{tag}"
    overrides = [*ddtrain_overrides(model, steps, warmup, run_dir), f"dist.engine={engine}"]
    cmd = [executable("mpirun"), "-np", str(ranks), "--oversubscribe", "--bind-to", "none",
           executable("ddtrain-train"), *overrides]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONWARNINGS="ignore")
    _check(subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True), cmd)
    s = json.loads((run_dir / "summary.json").read_text())
    if not s["ranks_identical"]:
        sys.exit(f"{engine} {model}: ranks ended with different parameters")
    return {"samples_per_s": s["samples_per_s"], "step_time_ms_median": s["step_time_ms_median"],
            "final_loss": s["final_train_loss"], "digest": s["parameter_digest"]}


def rotation(repeat: int) -> list[str]:
    """Engine order of one repeat: forwards on even repeats, backwards on odd ones."""
    return list(ENGINES) if repeat % 2 == 0 else list(reversed(ENGINES))


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Medians per engine and the mpi engine's step-time ratios to Horovod and DDP."""
    out = {e: {"samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
               "step_time_ms": statistics.median(1000 * GLOBAL_BATCH / r["samples_per_s"] for r in rs),
               "step_time_ms_median_of_steps": statistics.median(r["step_time_ms_median"] for r in rs)}
           for e, rs in runs.items()}
    out["mpi_vs_horovod"] = out["mpi"]["step_time_ms"] / out["horovod"]["step_time_ms"]
    out["mpi_vs_ddp"] = out["mpi"]["step_time_ms"] / out["ddp"]["step_time_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="1 repeat, 60 steps: a smoke test")
    p.add_argument("--out", type=Path, help="where all results go as JSON (default: results/engines-cpu.json for "
                   "a full 2-rank run, else outputs/benchmarks/engines-cpu.json)")
    opts = p.parse_args()
    repeats, scale = (1, 0.15) if opts.quick else (opts.repeats, 1.0)
    results = {"ranks": opts.ranks, "global_batch_size": GLOBAL_BATCH, "repeats": repeats,
               "load_before": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            steps, warmup = max(20, int(STEPS[model] * scale)), max(5, int(WARMUP * scale))
            runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
            for rep in range(repeats):
                for engine in rotation(rep):
                    r = run_engine(engine, model, opts.ranks, steps, warmup, Path(tmp), f"{model}-{rep}")
                    runs[engine].append(r)
                    print(f"{model:7s} repeat {rep} {engine:8s} {r['samples_per_s']:10,.0f} samples/s", flush=True)
            results["models"][model] = {"steps": steps, "warmup": warmup, "runs": runs, "summary": summarise(runs)}
    results["load_after"] = os.getloadavg()
    print(table(results))
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
    out = opts.out or default_out("engines-cpu.json", recorded=not opts.quick and opts.ranks == 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(written(out))


if __name__ == "__main__":
    main()
