"""The start-up every entry point shares: detect the launcher, validate, connect, agree on the run directory.

    session = Session.start(cfg.dist, run_dir, check=lambda world_size: validate(cfg, world_size))
    summary = run(cfg, session)
    session.close()

The sequence, once per job: launcher detection (a pure function of the environment), the caller's
validation for that world size (before any process group exists, so bad input fails the same way
on every rank), device choice, the engine's start-up, rank 0's run directory broadcast to all (Hydra
resolves ${now:} per process), rank-prefixed logging into it, and the failure bookkeeping (every
rank's host, where checkpoints go) that fail-fast messages need.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ddtrain.distributed import engines, failure, rendezvous
from ddtrain.distributed.env import DistEnv, detect

log = logging.getLogger("ddtrain")


def setup_logging(run_dir: Path, rank: int, world_size: int, level: str = "INFO") -> None:
    """Rank-prefixed lines to <run_dir>/train.log (every rank) and the console (rank 0; warnings from the others)."""
    logger = logging.getLogger("ddtrain")
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    run_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(run_dir / "train.log")  # appends (O_APPEND): ranks share one file
    to_file.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s"))
    to_console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    to_console.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    to_console.setLevel(level if rank == 0 else logging.WARNING)
    logger.addHandler(to_file)
    logger.addHandler(to_console)


class Session:
    """A started job: the launcher's facts, the engine connecting the ranks, and the agreed run directory."""

    def __init__(self, env: DistEnv, engine, log_level: str = "INFO"):
        self.env = env
        self.engine = engine
        self.log_level = log_level
        self.run_dir: Path | None = None

    @classmethod
    def start(cls, dist_cfg, run_dir: str | Path | None = None, *, check=None, log_level: str = "INFO",
              checkpoints: str | None = None, note: str = "") -> "Session":
        """Run the start-up sequence (module docstring); without run_dir no directory, logging or failure files.

        check(world_size) validates the caller's config; dist_cfg holds engine, backend, timeout_s,
        bucket_cap_mb and compression (the `dist` config section); checkpoints names the run
        directory's sub-folder of checkpoints (None: this job writes none) and note what a failure
        message says when there is no checkpoint.
        """
        env = detect(os.environ)
        if check is not None:
            check(env.world_size)
        engines.check_installed(dist_cfg.engine)
        device = rendezvous.place(env)
        session = cls(env, engines.start(dist_cfg.engine, env, device, dist_cfg), log_level)
        if run_dir is not None:
            session.enter(run_dir, checkpoints, note)
        return session

    def enter(self, run_dir: str | Path, checkpoints: str | None = None, note: str = "") -> Path:
        """Agree on rank 0's run directory, log into it, and record what failure messages need."""
        # Hydra resolves ${now:} per process: rank 0's run directory is everyone's
        self.run_dir = Path(self.engine.broadcast_object(str(Path(run_dir).resolve())))
        self.log_to(self.run_dir)
        failure.attach(self.engine, self.run_dir, self.run_dir / checkpoints if checkpoints else None,
                       note.replace("{run_dir}", str(self.run_dir)))
        log.info("run directory %s; %d rank(s) via %s; device %s; backend %s", self.run_dir, self.engine.world_size,
                 self.env.launcher, self.engine.device, self.engine.library)
        if getattr(self.engine, "network_note", ""):
            log.info(self.engine.network_note)  # which address and interface each rank chose (train.log: all)
        return self.run_dir

    def log_to(self, directory: Path) -> None:
        """Send this rank's log lines to <directory>/train.log (a sweep logs each point into its own directory)."""
        setup_logging(Path(directory), self.engine.rank, self.engine.world_size, self.log_level)

    def close(self) -> None:
        """After a normal end on every rank: wait for all, then release the engine's library."""
        self.engine.barrier()
        self.engine.shutdown()
