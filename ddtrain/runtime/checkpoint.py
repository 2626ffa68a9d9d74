"""Atomic checkpoints: rank 0 writes (temporary file, fsync, rename), every rank can resume.

A checkpoint holds whatever the trainer hands over as state dicts, the step (which is also the
position in the data stream) and every rank's RNG state, so a resumed run continues exactly.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch

from ddtrain.errors import UserError
from ddtrain.fileio import atomic_open, checkpoint_name, list_checkpoints

log = logging.getLogger("ddtrain")


def rng_state(device: torch.device) -> dict:
    """This process's random number generator states, as tensors and plain lists (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore what rng_state returned."""
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def load(path: Path, device: torch.device) -> dict:
    """Load a checkpoint safely (weights_only=True) onto `device`."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint.resume: no checkpoint at {path}; pass an existing file, auto or never") from None
    except Exception as exc:  # truncated or not a checkpoint
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); "
                        "pass another checkpoint or checkpoint.resume=never") from None


class Checkpointer:
    """Saves the run's state every checkpoint.every_steps steps (and at the end) into <run_dir>/checkpoints, keeps K."""

    def __init__(self, directory: Path, dist, every_steps: int = 0, keep_last: int = 2):
        self.directory = directory
        self.dist = dist  # the engine: rank, device and collectives
        self.every_steps = every_steps
        self.keep_last = keep_last

    def due(self, done: int, last: bool) -> bool:
        """Save here? Every every_steps steps and after the last one (never with every_steps 0)."""
        return self.every_steps > 0 and (done % self.every_steps == 0 or last)

    def save(self, step: int, state: dict) -> Path:
        """Called on every rank: gathers each rank's RNG state, then rank 0 writes atomically."""
        rngs = self.dist.all_gather_object(rng_state(self.dist.device))
        path = self.directory / checkpoint_name(step)
        if self.dist.is_main:
            with atomic_open(path, "wb") as f:  # readers see the old set of files or the complete new one
                torch.save({**state, "step": step, "rng": rngs, "world_size": self.dist.world_size}, f)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            for old in list_checkpoints(self.directory)[:-self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def find_resume(self, resume: str) -> Path | None:
        """The checkpoint to resume from: the newest complete one (auto), none (never), or a path.

        Rank 0 decides and broadcasts, so every rank loads the same file.
        """
        if resume == "never":
            return None
        if resume != "auto":
            return Path(resume).expanduser()
        choice = None
        if self.dist.is_main:
            found = list_checkpoints(self.directory)
            choice = str(found[-1]) if found else None
        choice = self.dist.broadcast_object(choice)
        return Path(choice) if choice else None

    def resume_state(self, resume: str, global_batch_size: int) -> tuple[dict | None, Path | None]:
        """(the checkpoint to resume from, its path), or (None, None) for a fresh start; checks the batch size."""
        path = self.find_resume(resume)
        if path is None:
            return None, None
        state = load(path, self.dist.device)
        if state.get("global_batch_size") != global_batch_size:
            raise UserError(f"checkpoint {path} was written with train.global_batch_size="
                            f"{state.get('global_batch_size')}; resume with the same value or checkpoint.resume=never")
        return state, path

    def restore_rng(self, checkpoint: dict) -> None:
        """Put back this rank's RNG state when the checkpoint came from the same world size."""
        rngs = checkpoint.get("rng") or []
        if checkpoint.get("world_size") == self.dist.world_size and len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.dist.device)
        else:
            log.warning("checkpoint was written by %s rank(s), this run has %d: RNG streams (dropout) restart",
                        checkpoint.get("world_size"), self.dist.world_size)
