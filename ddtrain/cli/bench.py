"""ddtrain-bench: measure what the framework costs and what the hardware gives.

    ddtrain-bench throughput [--warmup 10] [--iters 10] [--batches-per-iter 10] [--repeats 1] [--json F] <overrides>
    ddtrain-bench predict ...            the scaling predictor (see ddtrain-bench predict --help)
    ddtrain-bench allreduce ...          allreduce time/bandwidth per size and library (under mpirun/torchrun)
    ddtrain-bench overlap ...            step time with and without gradient sync per engine and model

`throughput` runs ddtrain and a minimal hand-written DDP loop side by side on the same model, data,
batch and precision (ddtrain.perf.throughput). It runs as one process or under any launcher.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ddtrain.cli import common


def throughput_main(argv: list[str]) -> dict:
    """ddtrain-bench throughput: ddtrain's steady-state samples/s and the hand-written loop's, side by side."""
    from ddtrain.compose import compose
    from ddtrain.config import validate
    from ddtrain.distributed.session import Session
    from ddtrain.perf import throughput

    parser = argparse.ArgumentParser(prog="ddtrain-bench throughput", description=throughput.__doc__.split("\n\n")[1])
    parser.add_argument("--warmup", type=int, default=10, help="steps before timing starts (compilation, autotuning)")
    parser.add_argument("--iters", type=int, default=10, help="timed intervals")
    parser.add_argument("--batches-per-iter", type=int, default=10, help="steps per timed interval")
    parser.add_argument("--repeats", type=int, default=1, help="alternate hand loop and ddtrain this many times")
    parser.add_argument("--json", type=Path, help="write the results here (rank 0)")
    parser.add_argument("--out-dir", type=Path, help="run directories (default outputs/bench/<time>)")
    opts, overrides = parser.parse_known_args(argv)
    with common.exit_path():
        cfg = compose("train", throughput.bench_overrides(overrides, opts.warmup, opts.iters, opts.batches_per_iter))
        out_dir = opts.out_dir or Path("outputs/bench") / time.strftime("%Y-%m-%d_%H-%M-%S")
        session = Session.start(cfg.dist, out_dir, check=lambda world_size: validate(cfg, world_size),
                                log_level=cfg.logging.level)
        result = throughput.measure(cfg, session, opts.warmup, opts.iters, opts.batches_per_iter, opts.repeats,
                                    session.run_dir)
        if session.engine.is_main:
            print(throughput.format_report(result), flush=True)
            if opts.json:
                opts.json.parent.mkdir(parents=True, exist_ok=True)
                opts.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        session.close()
    return result


def main(argv: list[str] | None = None) -> None:
    """Console script ddtrain-bench."""
    from ddtrain.cli import bench_comm, bench_predict

    argv = sys.argv[1:] if argv is None else argv
    commands = {"throughput": throughput_main, "allreduce": bench_comm.allreduce_main,
                "overlap": bench_comm.overlap_main, "predict": bench_predict.main}
    if not argv or argv[0] not in commands:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])
    common.end()  # a multi-rank benchmark leaves without interpreter finalization, as training does


if __name__ == "__main__":
    main()
