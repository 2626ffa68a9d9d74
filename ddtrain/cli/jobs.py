"""The Hydra jobs of one launched process: a single run, or every job of a multirun (-m), in order, on every rank.

    mpirun -np 2 ddtrain-train -m train.lr=0.1,0.2      # two trainings, one after the other, both on 2 ranks

Under mpirun, srun or torchrun every rank runs Hydra, and Hydra's basic launcher runs the same jobs in
the same order on every rank, in this process. Rank 0's Hydra makes the directories (the run directory,
or the multirun directory with one sub-directory per job; ${now:} resolved by rank 0 alone); the other
ranks' Hydra writes into a scratch directory removed at the end, and every job runs in rank 0's
directory, which the session broadcasts. The first job starts the session (the process group) and the
next ones reuse it, so the dist section must be the same for every job; it is closed after the last.
Every job is composed and validated before any of them starts, so a bad job fails as one line on every
rank before any training.
"""

from __future__ import annotations

import shutil
import tempfile

from ddtrain.errors import UserError

MULTIRUN = ("-m", "--multirun")
SPAWNING = ("hydra/launcher=", "hydra/sweeper=")  # plugins that start jobs elsewhere than in this process
LOGGING = ("hydra/job_logging=", "hydra.job_logging.", "hydra/hydra_logging=", "hydra.hydra_logging.",
           "hydra.verbose=")
scratch: list[str] = []  # directories removed when the process leaves (ddtrain.cli.common.exit_now)
_session = None


def is_multirun(args: list[str]) -> bool:
    """True for `-m` / `--multirun`."""
    return any(a in MULTIRUN for a in args)


def job_overrides(args: list[str]) -> list[list[str]]:
    """The overrides of each job, in the order Hydra runs them (one job without -m; sweeps like a=1,2 expanded)."""
    plain = [a for a in args if not a.startswith("-")]
    if not is_multirun(args):
        return [plain]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ddtrain.compose import describe_error

    try:
        parsed = OverridesParser.create().parse_overrides(plain)
    except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors
        raise UserError(describe_error(exc, plain)) from exc
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def refuse_unsupported(args: list[str], world_size: int) -> None:
    """One line for what ddtrain cannot honour: Hydra's logging settings, job-spawning plugins across ranks."""
    for a in args:
        if a.startswith(LOGGING):
            raise UserError(f"{a}: ddtrain configures its own logging (rank-prefixed lines on the console, every "
                            "rank's lines in <run_dir>/train.log), so Hydra's logging settings would be ignored; "
                            "choose the level with logging.level=DEBUG (or WARNING)")
        if a.startswith(SPAWNING) and world_size > 1 and is_multirun(args):
            raise UserError(f"{a}: under a launcher ddtrain runs the jobs of -m one after the other on every rank "
                            "(Hydra's basic launcher); for batch sizes use ddtrain-sweep, else start one job per "
                            "configuration")


def preflight(config_name: str, args: list[str], world_size: int, extra_check=None) -> int:
    """Compose and validate every job for this world size before any starts; returns the number of jobs."""
    from omegaconf import OmegaConf

    from ddtrain.compose import compose
    from ddtrain.distributed.engines import check_installed
    from ddtrain.validation import validate

    refuse_unsupported(args, world_size)
    jobs = job_overrides(args)
    first = None
    for overrides in jobs:
        cfg = compose(config_name, overrides)
        validate(cfg, world_size)
        check_installed(cfg.dist.engine)
        if extra_check is not None:
            extra_check(cfg, world_size)
        dist = OmegaConf.to_container(cfg.dist)
        first = dist if first is None else first
        if dist != first:
            changed = sorted(k for k in dist if dist[k] != first[k])
            raise UserError(f"-m: dist.{changed[0]} differs between jobs ({first[changed[0]]} and "
                            f"{dist[changed[0]]}), but the jobs of one multirun share one process group; "
                            "start one job per dist setting")
    return len(jobs)


def rank_argv(args: list[str], rank: int) -> list[str]:
    """The arguments Hydra gets on this rank: the others keep their Hydra files out of rank 0's directories.

    -m moves to the front: Hydra's parser takes no flag after the overrides have started.
    """
    args = [a for a in args if a in MULTIRUN] + [a for a in args if a not in MULTIRUN]
    if rank == 0:
        return args
    # only rank 0 lets Hydra make the run directories (${now:} differs per process); rank 0's
    # directory is broadcast to the others once the process group exists
    keep = [a for a in args if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "hydra.sweep.subdir="))]
    extra = ["hydra.output_subdir=null", "hydra.run.dir=."]
    if is_multirun(args):  # Hydra writes multirun.yaml into the sweep directory: a scratch one here
        where = tempfile.mkdtemp(prefix=f"ddtrain-rank{rank}-multirun-")
        scratch.append(where)
        extra += [f"hydra.sweep.dir={where}", "hydra.sweep.subdir=."]
    return [*keep, *extra]


def session(cfg, run_dir, check, **enter):
    """This job's session: started by the first job, reused by the next (same process group, new run directory)."""
    global _session
    from omegaconf import OmegaConf

    from ddtrain.distributed.session import Session

    if _session is None:
        _session = Session.start(cfg.dist, run_dir, check=check, log_level=cfg.logging.level, **enter)
        _session.dist = OmegaConf.to_container(cfg.dist)
        return _session
    if OmegaConf.to_container(cfg.dist) != _session.dist:  # preflight says so first; this guards fit()-like use
        raise UserError("-m: the dist section differs between jobs, but they share one process group")
    check(_session.env.world_size)
    _session.log_level = cfg.logging.level
    _session.enter(run_dir, **enter)
    return _session


def close() -> None:
    """After the last job ended on every rank: wait for all, release the engine."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def remove_scratch() -> None:
    """Remove this rank's scratch directories (called on the way out)."""
    for where in scratch:
        shutil.rmtree(where, ignore_errors=True)
    scratch.clear()


__all__ = ["close", "is_multirun", "job_overrides", "preflight", "rank_argv", "remove_scratch", "session"]
