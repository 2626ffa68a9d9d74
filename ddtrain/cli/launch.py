"""ddtrain-launch: build the launcher command line users forget half of, print it, run it.

    ddtrain-launch -n N [--nodes M] [--hostfile F] [--via auto|mpirun|srun|torchrun|horovodrun] [--dry-run]
                   -- ddtrain-train|ddtrain-sweep <overrides>

It only builds and runs a command of an external launcher (one process per device or CPU slot);
the exit code is the launcher's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

LAUNCHERS = ("auto", "mpirun", "srun", "torchrun", "horovodrun")
FORWARDED_PREFIXES = ("NCCL_", "GLOO_", "OMP_", "MASTER_", "DDTRAIN_")


@dataclass
class LaunchRequest:
    """What the user asked for, plus the facts of this machine that change the command."""

    ranks: int
    program: list[str]
    nodes: int = 1
    hostfile: str | None = None
    via: str = "auto"
    environ: dict = field(default_factory=dict)
    cpus: int = 1
    is_root: bool = False
    available: tuple = ()  # launcher executables found on PATH


def choose_launcher(req: LaunchRequest) -> str:
    """auto: srun inside a SLURM allocation, else mpirun when present, else torchrun."""
    if req.via != "auto":
        return req.via
    if req.environ.get("SLURM_JOB_ID"):
        return "srun"
    return "mpirun" if "mpirun" in req.available else "torchrun"


def _hostfile_slots(path: str) -> int:
    total = 0
    with open(path) as f:
        for line in f:
            words = line.split("#")[0].split()
            if not words:
                continue
            slots = [w.split("=", 1)[1] for w in words[1:] if w.startswith(("slots=", "max_slots="))]
            total += int(slots[0]) if slots else 1
    return total


def _uses_mpi(program: list[str]) -> bool:
    return any(a in ("dist.engine=mpi", "dist.engine=horovod") for a in program)


def build_command(req: LaunchRequest) -> tuple[list[str], dict]:
    """The command line and the extra environment for the chosen launcher (a pure function of req)."""
    via = choose_launcher(req)
    per_node = max(1, req.ranks // max(1, req.nodes))
    forwarded = sorted(k for k in req.environ if k.startswith(FORWARDED_PREFIXES))
    env: dict = {}
    if via == "mpirun":
        cmd = ["mpirun", "-np", str(req.ranks), "--bind-to", "none", "--map-by", "slot"]
        if req.hostfile:
            cmd += ["--hostfile", req.hostfile]
        slots = _hostfile_slots(req.hostfile) if req.hostfile else req.cpus
        if req.ranks > slots:
            cmd.append("--oversubscribe")
        if req.is_root:  # Open MPI refuses root unless told twice
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        for name in forwarded:
            cmd += ["-x", name]
        return cmd + req.program, env
    if via == "srun":
        cmd = ["srun", f"--ntasks={req.ranks}", f"--nodes={req.nodes}", f"--ntasks-per-node={per_node}",
               f"--cpus-per-task={max(1, req.cpus // per_node)}", "--kill-on-bad-exit=1"]
        if _uses_mpi(req.program):
            cmd.append("--mpi=pmix")  # the MPI engines need PMIx to wire up MPI_COMM_WORLD
        return cmd + req.program, env
    if via == "torchrun":
        cmd = ["torchrun", f"--nproc-per-node={per_node}", f"--nnodes={req.nodes}"]
        if req.nodes == 1:
            cmd.append("--standalone")
        else:
            endpoint = req.environ.get("MASTER_ADDR", "localhost") + ":" + req.environ.get("MASTER_PORT", "29400")
            cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
                    f"--rdzv-id={req.environ.get('SLURM_JOB_ID', 'ddtrain')}"]
        return cmd + ["--no-python"] + req.program, env
    if via == "horovodrun":
        hosts = f"localhost:{req.ranks}" if not req.hostfile else None
        cmd = ["horovodrun", "-np", str(req.ranks), "--gloo"]
        cmd += ["-H", hosts] if hosts else ["--hostfile", req.hostfile]
        return cmd + req.program, env
    raise SystemExit(f"ddtrain-launch: error: --via {via} is not one of {', '.join(LAUNCHERS)}")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split ddtrain-launch's own options from the program after `--`."""
    if "--" not in argv:
        raise SystemExit("ddtrain-launch: error: put the program after --, e.g. ddtrain-launch -n 2 -- ddtrain-train")
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="ddtrain-launch", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--ranks", type=int, required=True, help="processes in all (one per GPU or CPU slot)")
    parser.add_argument("--nodes", type=int, default=1, help="nodes the ranks are spread over")
    parser.add_argument("--hostfile", help="Open MPI / horovodrun host file")
    parser.add_argument("--via", choices=LAUNCHERS, default="auto", help="which launcher (default: auto)")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    opts = parser.parse_args(argv[:cut])
    program = argv[cut + 1:]
    if not program:
        parser.error("nothing to launch after --")
    if opts.ranks < 1 or opts.nodes < 1 or opts.ranks % opts.nodes:
        parser.error(f"-n {opts.ranks} ranks do not spread evenly over --nodes {opts.nodes}")
    return opts, program


def main(argv: list[str] | None = None) -> int:
    """Console script ddtrain-launch: returns the launcher's exit code (0 for --dry-run)."""
    opts, program = parse(sys.argv[1:] if argv is None else argv)
    req = LaunchRequest(ranks=opts.ranks, program=program, nodes=opts.nodes, hostfile=opts.hostfile, via=opts.via,
                        environ=dict(os.environ), cpus=os.cpu_count() or 1, is_root=os.geteuid() == 0,
                        available=tuple(n for n in ("mpirun", "srun", "torchrun") if shutil.which(n)))
    cmd, extra_env = build_command(req)
    shown = " ".join(f"{k}={v}" for k, v in extra_env.items())
    print(f"ddtrain-launch: {shown + ' ' if shown else ''}{shlex.join(cmd)}", flush=True)
    if opts.dry_run:
        return 0
    if shutil.which(cmd[0]) is None:
        print(f"ddtrain-launch: error: {cmd[0]} is not on PATH; install it or choose another --via", file=sys.stderr)
        return 127
    return subprocess.call(cmd, env={**os.environ, **extra_env})


if __name__ == "__main__":
    sys.exit(main())
