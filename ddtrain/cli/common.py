"""What every console script shares: checking arguments before Hydra, and the one exit path.

Library code raises; only the console scripts print an error line and exit, here:
exit_path() turns any exception into one line on stderr and its exit status (1 this rank's own
error, 2 bad input, 3 a peer failed or could not be reached, 75 preempted; see
ddtrain.distributed.failure.explain), and end() leaves a multi-rank run after a normal end.
DDTRAIN_TRACEBACK=1 (or Hydra's HYDRA_FULL_ERROR=1) also prints the traceback: the one switch.

Leaving is always: flush, logging.shutdown(), os._exit(code). No destroy_process_group, no atexit
hooks, no C++ destructors of a broken process group (which can abort with "terminate called
without an active exception" and hide the real exit code). Checkpoints are atomic, so none is
left half-written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import traceback

from ddtrain.distributed import failure
from ddtrain.errors import EXIT_OK

log = logging.getLogger("ddtrain")


def want_traceback() -> bool:
    """The traceback switch: DDTRAIN_TRACEBACK=1 (HYDRA_FULL_ERROR=1 means the same)."""
    return os.environ.get("DDTRAIN_TRACEBACK") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


def exit_now(code: int) -> None:
    """Flush stdout, stderr and the log files, then end the process at once (no finalization).

    After a normal end (code 0) MPI is finalized first when mpi4py initialized it: Open MPI's
    launcher counts a process that leaves without MPI_Finalize as failed.
    """
    from ddtrain.cli.jobs import remove_scratch

    remove_scratch()
    mpi = sys.modules.get("mpi4py.MPI")
    if code == EXIT_OK and mpi is not None:
        with contextlib.suppress(Exception):
            if mpi.Is_initialized() and not mpi.Is_finalized():
                mpi.Finalize()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(Exception):
        logging.shutdown()
    os._exit(code)


def leave(line: str | None, code: int, exc: BaseException | None = None) -> None:
    """Print `ddtrain: error: <line>` (also into train.log, with the traceback) and exit with `code`."""
    if line is not None:
        text = f"ddtrain: error: {failure.prefixed(line, code)}"
        failure.log_to_file(text, exc)
        if exc is not None and want_traceback():
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(text, file=sys.stderr, flush=True)
    said = line if line is not None else (str(exc) if exc is not None else None)  # a preemption says it in the log
    failure.note(said, code)
    failure.tell_torchrun(said)
    exit_now(code)


@contextlib.contextmanager
def exit_path():
    """Around a console script's work: any failure becomes one line and an immediate non-zero exit."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - every other failure must end this rank now
        # already leaving: a launcher's SIGTERM (torchrun and mpirun stop the survivors of a dead rank) must not
        # cut short the line and the note saying why (at most PEER_REPORT_WAIT_S more)
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        line, code = failure.explain(exc)
        leave(line, code, exc)


def end() -> None:
    """After a normal end of every job: a multi-rank run leaves at once (the engine is shut down, every file written).

    Skips interpreter finalization, where gloo's worker threads can still hold tensors whose
    destruction needs the GIL and aborts the process (SIGABRT, exit 134) now and then.
    """
    from ddtrain.distributed.env import detect

    if detect(os.environ).world_size > 1:
        exit_now(EXIT_OK)


def prepare_argv(config_name: str, extra_check=None) -> None:
    """Check every job's overrides once per rank (ddtrain.cli.jobs), then keep Hydra's output files to rank 0."""
    from ddtrain.cli import jobs
    from ddtrain.distributed.env import detect

    args = sys.argv[1:]
    with exit_path():
        env = detect(os.environ)
        if any(a in ("--help", "-h") for a in args):  # ours, not Hydra's: only the keys that apply
            from ddtrain.cli.help import help_text

            text = help_text(f"ddtrain-{config_name}", config_name, [a for a in args if not a.startswith("-")])
            if env.rank == 0:
                print(text, flush=True)
            exit_now(EXIT_OK)
        if not any(a.startswith("-") and a not in jobs.MULTIRUN for a in args):  # --cfg, --info: Hydra's
            jobs.preflight(config_name, args, env.world_size, extra_check)
        else:
            jobs.refuse_unsupported(args, env.world_size)
    sys.argv = [sys.argv[0], *jobs.rank_argv(args, env.rank)]


def run_jobs(hydra_entry) -> None:
    """Run Hydra (every job of -m, or the one run), then close the session and leave (a multi-rank run at once)."""
    from ddtrain.cli import jobs

    hydra_entry()
    with exit_path():
        jobs.close()
    end()
