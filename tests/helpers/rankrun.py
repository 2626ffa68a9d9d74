"""env:// ranks of ddtrain-train started by hand, each watched on its own (exit code, time, output file).

Used by the fail-fast tests, where ranks end differently and at different times: conftest's `launch`
only reports the worst exit code. Output goes to files (never pipes that could fill up and block).
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import BIN, FAST, base_env, free_port


@dataclass
class Rank:
    """One started rank."""

    rank: int
    proc: subprocess.Popen
    out: Path
    started: float
    ended: float | None = None

    def wait(self, timeout: float) -> int:
        """Its exit code (SIGKILLed and failed when it does not end in time)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"rank {self.rank} still running after {timeout} s:\n{self.output()}") from None
        if self.ended is None:
            self.ended = time.monotonic()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (SIGTERM would only ask for a preemption checkpoint)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""

    def error_lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if "ddtrain: error:" in line]


def start_ranks(overrides: list[str], run_dir: Path, cache: Path, world: int = 2, master_addr: str = "127.0.0.1",
                wrap=None, env_per_rank=None, extra_env=None) -> list[Rank]:
    """Start `world` ranks of ddtrain-train; wrap(rank, argv) -> argv runs one elsewhere (e.g. in a namespace)."""
    port = free_port()
    args = [*FAST, f"dataset.cache_dir={cache}", f"hydra.run.dir={run_dir}", *overrides]
    ranks = []
    for rank in range(world):
        env = dict(base_env(), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR=master_addr, MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        env.update(extra_env or {})
        env.update((env_per_rank or {}).get(rank, {}))
        argv = [str(BIN / "ddtrain-train"), *args]
        if wrap is not None:
            argv = wrap(rank, argv)
        out = run_dir.parent / f"{run_dir.name}.rank{rank}.out"
        with open(out, "w") as f:
            proc = subprocess.Popen(argv, env=env, cwd=run_dir.parent, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        ranks.append(Rank(rank, proc, out, time.monotonic()))
    return ranks


def kill_all(ranks: list[Rank]) -> None:
    """Cleanup: SIGKILL whatever is still running."""
    for r in ranks:
        r.kill()


def finish(ranks: list[Rank], timeout: float = 180) -> list[int]:
    """Wait for every rank and return their exit codes; SIGKILL whatever is still running in the end."""
    try:
        return [r.wait(timeout) for r in ranks]
    finally:
        kill_all(ranks)


def run_ranks(overrides: list[str], run_dir: Path, cache: Path, timeout: float = 240) -> list[Rank]:
    """Start 2 ranks, assert both exit 0 (else fail with their output), and return them (for their output)."""
    ranks = start_ranks(overrides, run_dir, cache)
    assert finish(ranks, timeout) == [0, 0], ranks[0].output() + ranks[1].output()
    return ranks


def wait_for(path: Path, ranks: list[Rank], timeout: float = 120) -> None:
    """Wait until `path` exists (e.g. a checkpoint), failing early when a rank ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for r in ranks:
            if r.proc.poll() is not None:
                raise AssertionError(f"rank {r.rank} ended (rc {r.proc.returncode}) before {path} appeared:\n"
                                     f"{r.output()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)

