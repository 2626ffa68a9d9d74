"""ddtrain-launch --max-restarts N: a job that starts again by itself after a lost rank or a preemption.

The run directory is resolved once, before the first attempt (Hydra would resolve ${now:} again in
every attempt and start a new directory), and passed as hydra.run.dir (hydra.sweep.dir with -m), so
every attempt resumes from the newest checkpoint of the same directory (checkpoint.resume=auto).

- mpirun, srun, horovodrun: ddtrain-launch runs the launcher again when it ended with exit status 3 (a
  rank lost or unreachable), 75 (preempted) or a rank's death by a signal (mpirun: 128 + signal), at
  most N times; never after 1 (a rank's own error) or 2 (bad input), which would only fail again, nor
  when ddtrain-launch itself got SIGINT/SIGTERM (the allocation ends; launch/slurm.sbatch requeues).
- torchrun: its own --max-restarts N (torch elastic restarts the worker group on any worker failure).

Each restart is noted in <run_dir>/failures.log, beside the lines of the ranks that stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from ddtrain.errors import EXIT_PEER, EXIT_PREEMPTED, UserError

PROGRAMS = {"ddtrain-train": "train", "ddtrain-sweep": "sweep"}
RESTART_PAUSE_S = 1.0  # lets the ports and the ranks' processes go before the next attempt


def restartable(code: int) -> bool:
    """True for what a new attempt can get past: a lost or unreachable rank, a preemption, a rank killed."""
    return code in (EXIT_PEER, EXIT_PREEMPTED) or code > 128 or code < 0


def describe(code: int) -> str:
    """What an exit status of the launcher says happened (mpirun reports a rank killed by signal S as 128 + S)."""
    import signal

    if code == EXIT_PEER:
        return "a rank was lost or could not be reached"
    if code == EXIT_PREEMPTED:
        return "preempted"
    if code > 128 or code < 0:
        number = code - 128 if code > 128 else -code
        try:
            return f"a rank was killed by {signal.Signals(number).name}"
        except ValueError:
            return f"a rank was killed by signal {number}"
    return "a rank's own error or bad input"


def _config_name(program: list[str]) -> str | None:
    return PROGRAMS.get(Path(program[0]).name)


def pin_directories(program: list[str], ranks: int, via: str) -> tuple[list[str], Path | None]:
    """The program with its run directory fixed for every attempt, and that directory (None: not a ddtrain program).

    Checks the whole configuration for `ranks` ranks first, so bad input fails once, before any attempt.
    """
    from omegaconf import OmegaConf

    config_name = _config_name(program)
    if config_name is None:
        return program, None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ddtrain.cli import jobs
    from ddtrain.config import config_dir, register_configs

    args = program[1:]
    jobs.preflight(config_name, args, ranks)
    _check_resume(args, via)
    multirun = jobs.is_multirun(args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in args if a.startswith(key + "=")]
    if given:
        return program, Path(given[-1]).resolve()
    register_configs()
    hydra_overrides = [a for a in args if a.startswith("hydra.")]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=f"ddtrain-{config_name}"):
            cfg = compose(config_name, overrides=hydra_overrides, return_hydra_config=True)
            where = Path(str(OmegaConf.select(cfg, key))).resolve()
    finally:
        GlobalHydra.instance().clear()
    return [*program, f"{key}={where}"], where


def _check_resume(args: list[str], via: str) -> None:
    resume = [a.split("=", 1)[1] for a in args if a.startswith("checkpoint.resume=")]
    if resume and resume[-1] == "never":
        raise UserError("--max-restarts with checkpoint.resume=never: every restart would start over; drop "
                        "checkpoint.resume=never (auto resumes from the newest checkpoint of the run directory)")
    if resume and resume[-1] != "auto" and via == "torchrun":
        raise UserError(f"--max-restarts under torchrun gives every attempt the same arguments, so each would "
                        f"resume from checkpoint.resume={resume[-1]} again: copy it into <run_dir>/checkpoints/ "
                        "and use checkpoint.resume=auto")


def note(run_dir: Path | None, line: str) -> None:
    """Append a line to <run_dir>/failures.log (where the ranks note why they stopped)."""
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "failures.log", "a") as f:
        f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")


def resumed(program: list[str]) -> list[str]:
    """The program of a restart: it resumes from the newest checkpoint of the run directory."""
    return [*program, "checkpoint.resume=auto"] if _config_name(program) else program
