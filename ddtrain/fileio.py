"""Atomic file writes (readers see the old file or the complete new one, never a half-written one) and checkpoint names."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_CHECKPOINT = re.compile(r"^step_(\d{8})\.pt$")


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """Write to a temporary file beside `path`; on success fsync it and rename it over `path`, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_name(step: int) -> str:
    """The file name of the checkpoint after `step` optimizer steps."""
    return f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints in a directory, oldest first (temporary files are never listed)."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found)]
