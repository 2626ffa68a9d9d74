"""ddtrain-bench allreduce and ddtrain-bench overlap: the communication benchmarks' console faces."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ddtrain.cli import common
from ddtrain.config import ENGINES
from ddtrain.errors import EXIT_FAILED, UserError
from ddtrain.perf import allreduce, overlap


def _write_json(path: Path | None, result: dict, is_main: bool) -> None:
    if is_main and path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


def _start(command: str, backend: str, timeout_s: float):
    """The bench job's session: at least 2 ranks and the ddp engine over `backend`."""
    from ddtrain.distributed.session import Session

    allreduce.launched_env(command)
    return Session.start(argparse.Namespace(engine="ddp", backend=backend, timeout_s=timeout_s,
                                            bucket_cap_mb=25.0, compression="none"))


def allreduce_parser() -> argparse.ArgumentParser:
    """Options of ddtrain-bench allreduce."""
    libs = ",".join(allreduce.LIBRARIES)
    p = argparse.ArgumentParser(prog="ddtrain-bench allreduce", description=allreduce.__doc__.split("\n\n")[3],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--min-bytes", default="4", help="smallest message (K/M/G suffixes allowed)")
    p.add_argument("--max-bytes", default="256M", help="largest message")
    p.add_argument("--factor", type=float, default=2.0, help="each size is this times the previous")
    p.add_argument("--iters", type=int, default=20, help="timed allreduces per size")
    p.add_argument("--warmup", type=int, default=5, help="untimed allreduces per size before timing")
    p.add_argument("--libraries", "--engines", dest="libraries", default=libs,
                   help=f"comma-separated subset of {libs} (--engines: the name before 0.2)")
    p.add_argument("--dtype", default="float32", choices=["float32"], help="element type")
    p.add_argument("--memcpy-bytes", default="64M", help="size of the local copy_ that gives the ceiling")
    p.add_argument("--memcpy-repeats", type=int, default=5, help="copies; the best counts")
    p.add_argument("--ref-bytes", default="64M", help="size whose busbw is compared with memcpy")
    p.add_argument("--timeout-s", type=float, default=300.0, help="process-group timeout")
    p.add_argument("--json", type=Path, help="write the results here (rank 0)")
    return p


def allreduce_main(argv: list[str]) -> dict:
    """ddtrain-bench allreduce (see ddtrain.perf.allreduce)."""
    opts = allreduce_parser().parse_args(argv)
    with common.exit_path():
        allreduce.parse_libraries(opts.libraries)
        allreduce.message_sizes(allreduce.parse_bytes(opts.min_bytes), allreduce.parse_bytes(opts.max_bytes),
                                opts.factor)
        allreduce.parse_bytes(opts.memcpy_bytes), allreduce.parse_bytes(opts.ref_bytes)
        if opts.iters < 1 or opts.warmup < 0 or opts.memcpy_repeats < 1:
            raise UserError("--iters and --memcpy-repeats must be at least 1, --warmup at least 0")
        # gloo: the job's own group does CPU bookkeeping, also with GPUs; nccl gets a group of its own
        session = _start("allreduce", "gloo", opts.timeout_s)
        result = allreduce.run(opts, session.engine, emit=lambda text: print(text, flush=True))
        _write_json(opts.json, result, session.engine.is_main)
        session.close()
    wrong = [n for n, e in result["libraries"].items() if e["status"] == "ok" and not e["all_correct"]]
    if wrong:
        common.leave(f"allreduce gave wrong sums with library(ies) {', '.join(wrong)}", EXIT_FAILED)
    return result


def overlap_parser() -> argparse.ArgumentParser:
    """Options of ddtrain-bench overlap."""
    p = argparse.ArgumentParser(prog="ddtrain-bench overlap", description=overlap.__doc__.split("\n\n")[2],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ",".join(ENGINES))
    p.add_argument("--models", default=",".join(overlap.MODELS), help="comma-separated configs/model names")
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=20, help="steps per timed block")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each kind first")
    p.add_argument("--repeats", type=int, default=4, help="ABBA pairs of blocks (even: drift cancels)")
    p.add_argument("--comm-iters", type=int, default=50, help="allreduces timed for the exchange alone")
    p.add_argument("--timeout-s", type=float, default=300.0, help="process-group timeout")
    p.add_argument("--json", type=Path, help="write the results here (rank 0)")
    return p


def overlap_main(argv: list[str]) -> dict:
    """ddtrain-bench overlap (see ddtrain.perf.overlap)."""
    opts, overrides = overlap_parser().parse_known_args(argv)
    with common.exit_path():
        overlap.engine_names(opts.engines)
        if min(opts.batch, opts.steps, opts.repeats, opts.comm_iters) < 1 or opts.warmup < 0:
            raise UserError("--batch, --steps, --repeats and --comm-iters must be at least 1, --warmup at least 0")
        session = _start("overlap", "auto", opts.timeout_s)  # the ddp engine over nccl with GPUs, else gloo
        result = overlap.run(opts, overrides, session.engine)
        if session.engine.is_main:
            print(overlap.format_report(result), flush=True)
        _write_json(opts.json, result, session.engine.is_main)
        session.close()
    return result
