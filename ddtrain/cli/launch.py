"""ddtrain-launch: build the launcher command line users forget half of, print it, run it.

    ddtrain-launch -n N [--nodes M] [--hostfile F] [--via auto|mpirun|srun|torchrun|horovodrun] [--dry-run]
                   [--max-restarts K] -- ddtrain-train|ddtrain-sweep <overrides>

It only builds and runs a command of an external launcher (one process per device or CPU slot);
the exit code is the launcher's. With --max-restarts the job starts again by itself after a lost
rank or a preemption and resumes in the same run directory (ddtrain.cli.restart).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
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
    max_restarts: int = 0  # torchrun restarts by itself (--max-restarts); the others through ddtrain-launch


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
        if req.max_restarts:
            cmd.append(f"--max-restarts={req.max_restarts}")
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
    parser.add_argument("--max-restarts", type=int, default=0, metavar="K",
                        help="start the job again, at most K times, after a lost rank (exit 3) or a preemption (75); "
                             "it resumes from the newest checkpoint of the same run directory")
    opts = parser.parse_args(argv[:cut])
    program = argv[cut + 1:]
    if not program:
        parser.error("nothing to launch after --")
    if opts.ranks < 1 or opts.nodes < 1 or opts.ranks % opts.nodes:
        parser.error(f"-n {opts.ranks} ranks do not spread evenly over --nodes {opts.nodes}")
    if opts.max_restarts < 0:
        parser.error(f"--max-restarts {opts.max_restarts} must not be negative")
    return opts, program


def main(argv: list[str] | None = None) -> int:
    """Console script ddtrain-launch: returns the launcher's exit code (0 for --dry-run)."""
    opts, program = parse(sys.argv[1:] if argv is None else argv)
    req = LaunchRequest(ranks=opts.ranks, program=program, nodes=opts.nodes, hostfile=opts.hostfile, via=opts.via,
                        environ=dict(os.environ), cpus=os.cpu_count() or 1, is_root=os.geteuid() == 0,
                        available=tuple(n for n in ("mpirun", "srun", "torchrun") if shutil.which(n)),
                        max_restarts=opts.max_restarts)
    run_dir = None
    if opts.max_restarts:
        from ddtrain.cli import restart
        from ddtrain.errors import EXIT_USER, UserError

        try:  # one run directory for every attempt, and bad input found once, before any
            req.program, run_dir = restart.pin_directories(program, opts.ranks, choose_launcher(req))
        except UserError as exc:
            print(f"ddtrain-launch: error: {exc}", file=sys.stderr)
            return EXIT_USER
        if choose_launcher(req) != "torchrun":  # torchrun says TORCHELASTIC_RESTART_COUNT itself
            req.environ["DDTRAIN_ATTEMPT"] = "0"  # forwarded to every rank (-x DDTRAIN_*): which attempt this is
    cmd, extra_env = build_command(req)
    shown = " ".join(f"{k}={v}" for k, v in extra_env.items())
    print(f"ddtrain-launch: {shown + ' ' if shown else ''}{shlex.join(cmd)}", flush=True)
    if opts.dry_run:
        return 0
    if shutil.which(cmd[0]) is None:
        print(f"ddtrain-launch: error: {cmd[0]} is not on PATH; install it or choose another --via", file=sys.stderr)
        return 127
    if not opts.max_restarts or choose_launcher(req) == "torchrun":  # torchrun restarts by itself
        return subprocess.call(cmd, env={**os.environ, **extra_env, **_attempt(req, 0)})
    return _with_restarts(req, cmd, extra_env, run_dir)


def _attempt(req: LaunchRequest, attempt: int) -> dict:
    return {"DDTRAIN_ATTEMPT": str(attempt)} if "DDTRAIN_ATTEMPT" in req.environ else {}


def _with_restarts(req: LaunchRequest, cmd: list[str], extra_env: dict, run_dir) -> int:
    """Run the launcher; after exit 3, 75 or a rank killed by a signal run it again (resuming), up to max_restarts."""
    import signal

    from ddtrain.cli import restart

    stopping: list[int] = []  # signals ddtrain-launch itself got: the job is being ended, not restarted
    child: list[subprocess.Popen] = []

    def forward(signum, frame):
        stopping.append(signum)
        if child and child[-1].poll() is None:
            child[-1].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for attempt in range(req.max_restarts + 1):
            child.append(subprocess.Popen(cmd, env={**os.environ, **extra_env, **_attempt(req, attempt)}))
            code = child[-1].wait()
            if code == 0 or stopping or not restart.restartable(code) or attempt == req.max_restarts:
                if code and not stopping and attempt < req.max_restarts:
                    line = f"ddtrain-launch: exit status {code} ({restart.describe(code)}): not restarted"
                    print(line, file=sys.stderr, flush=True)
                    restart.note(run_dir, line)
                return code
            line = (f"ddtrain-launch: attempt {attempt + 1} ended with exit status {code} ({restart.describe(code)}); "
                    f"restarting "
                    f"({attempt + 1} of {req.max_restarts}), resuming from the newest checkpoint in {run_dir}")
            print(line, file=sys.stderr, flush=True)
            restart.note(run_dir, line)
            if attempt == 0:
                req.program = restart.resumed(req.program)
                cmd, extra_env = build_command(req)
            time.sleep(restart.RESTART_PAUSE_S)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


if __name__ == "__main__":
    sys.exit(main())
