"""Where the benchmarks write their output by default.

A run with the settings the README's figures were measured with goes to results/, the recorded
outputs that benchmarks/figures.py turns into the README's tables; a smoke test or a partial run
goes to outputs/benchmarks/ (git-ignored), so it cannot replace a recorded result by accident.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
SCRATCH = ROOT / "outputs" / "benchmarks"


def default_out(name: str, recorded: bool) -> Path:
    """results/<name> for a run with the README's settings, else outputs/benchmarks/<name>."""
    return (RESULTS if recorded else SCRATCH) / name


def written(path: Path) -> str:
    """The line a benchmark prints after writing its output; a recorded result needs the README regenerated."""
    path = Path(path).resolve()
    if path.is_relative_to(RESULTS):
        return f"written {path}: run `make figures` to regenerate the README's tables from it"
    return f"written {path}"
