"""Atomic checkpoints: rank 0 writes (temporary file, fsync, rename), every rank can resume.

A checkpoint holds whatever the trainer hands over as state dicts, the step (which is also the
position in the data stream), every rank's RNG state, so a resumed run continues exactly, and a
SHA-256 checksum of all that, verified on load. checkpoint.resume=auto takes the newest checkpoint
that reads back and verifies, skipping (with a warning) one that does not: a copy cut short, a full
disk on a file system without atomic rename, bit rot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
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


def checksum(state) -> str:
    """SHA-256 over a checkpoint's contents in order: every tensor's dtype, shape and bytes, every other value."""
    h = hashlib.sha256()

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(obj, dict):
            h.update(f"D{len(obj)}".encode())
            for key, value in obj.items():
                feed(key)
                feed(value)
        elif isinstance(obj, (list, tuple)):
            h.update(f"L{len(obj)}".encode())
            for value in obj:
                feed(value)
        else:
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    feed(state)
    return h.hexdigest()


class Unreadable(Exception):
    """A checkpoint that cannot be loaded or whose checksum differs (the message says which and why)."""


def read(path: Path, device: torch.device) -> dict:
    """Load a checkpoint safely (weights_only=True) onto `device` and verify its checksum; raises Unreadable."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise Unreadable(f"no such file on host {socket.gethostname()}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint, unreadable
        first = str(exc).strip().split("\n")[0][:200]
        raise Unreadable(f"cut short or not a checkpoint: {type(exc).__name__}: {first}") from None
    if not isinstance(state, dict):
        raise Unreadable("not a ddtrain checkpoint")
    stored = state.pop("checksum", None)  # checkpoints written before 0.3 have none
    if stored is not None and checksum(state) != stored:
        raise Unreadable("checksum mismatch: the file changed after it was written (bit rot, a bad copy)")
    return state


def load(path: Path, device: torch.device) -> dict:
    """read() for a checkpoint the user named: UserError saying what to do when it cannot be read."""
    try:
        return read(path, device)
    except Unreadable as exc:
        if not Path(path).exists():
            raise UserError(f"checkpoint.resume: no checkpoint at {path}; pass an existing file, auto or never") \
                from None
        raise UserError(f"checkpoint {path} cannot be read ({exc}); pass another checkpoint or "
                        "checkpoint.resume=never") from None


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
            payload = {**state, "step": step, "rng": rngs, "world_size": self.dist.world_size}
            payload["checksum"] = checksum(payload)  # verified on load: a file changed later is not resumed
            with atomic_open(path, "wb") as f:  # readers see the old set of files or the complete new one
                torch.save(payload, f)
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            for old in list_checkpoints(self.directory)[:-self.keep_last]:
                old.unlink(missing_ok=True)
        return path

    def newest_readable(self) -> tuple[Path | None, dict | None]:
        """The newest checkpoint that loads and verifies, and its state; a warning names each one skipped."""
        found = list_checkpoints(self.directory)
        skipped = []
        for path in reversed(found):
            try:
                return path, read(path, self.dist.device)
            except Unreadable as exc:
                skipped.append(f"{path.name}: {exc}")
                log.warning("checkpoint %s cannot be read (%s): skipped, trying the one before it", path, exc)
        if skipped:
            raise UserError(f"no readable checkpoint in {self.directory} ({'; '.join(skipped)}): move them away, or "
                            "start over with checkpoint.resume=never")
        return None, None

    def find_resume(self, resume: str) -> Path | None:
        """The checkpoint to resume from: the newest readable one (auto), none (never), or a path."""
        return self._choose(resume)[0]

    def _choose(self, resume: str) -> tuple[Path | None, dict | None]:
        """(path, state read by rank 0 or None); rank 0 decides and broadcasts, so every rank loads the same file."""
        if resume == "never":
            return None, None
        if resume != "auto":
            return Path(resume).expanduser(), None
        path, state, problem = None, None, None
        if self.dist.is_main:
            try:
                path, state = self.newest_readable()
            except UserError as exc:
                problem = str(exc)
        choice, problem = self.dist.broadcast_object((str(path) if path else None, problem))
        if problem:  # raised on every rank alike
            raise UserError(problem)
        return (Path(choice) if choice else None), state

    def resume_state(self, resume: str, global_batch_size: int) -> tuple[dict | None, Path | None]:
        """(the checkpoint to resume from, its path), or (None, None) for a fresh start; checks the batch size.

        Every rank must read the file rank 0 chose: a rank that cannot (no shared file system) makes
        every rank stop with the same line.
        """
        path, state = self._choose(resume)
        if path is None:
            return None, None
        problem = None
        if state is None:
            try:
                state = read(path, self.dist.device) if resume == "auto" else load(path, self.dist.device)
            except (Unreadable, UserError) as exc:
                problem = str(exc)
        problems = self.dist.all_gather_object(problem)  # distributed: every rank learns who cannot read it
        failed = [(rank, text) for rank, text in enumerate(problems) if text]
        if failed:
            ranks = ", ".join(str(rank) for rank, _ in failed)
            if resume != "auto" and len(failed) == self.dist.world_size:
                raise UserError(failed[0][1])
            raise UserError(f"rank(s) {ranks} of {self.dist.world_size} cannot read the checkpoint {path} that rank 0 "
                            f"resumes from ({failed[0][1]}): every rank must see rank 0's run directory (put "
                            "hydra.run.dir on a shared file system), or start over with checkpoint.resume=never")
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
