"""ddtrain-bench: measure what the framework costs and what the hardware gives.

    ddtrain-bench throughput [--warmup 10] [--iters 10] [--batches-per-iter 10] [--repeats 1] [--json F] <overrides>
    ddtrain-bench predict ...            the scaling predictor (see ddtrain-bench predict --help)
    ddtrain-bench allreduce ...          allreduce time/bandwidth per size and library (under mpirun/torchrun)
    ddtrain-bench overlap ...            step time with and without gradient sync per engine and model
    ddtrain-bench inference [<run_dir | model.pt>] [--batch-sizes 1,2,4] [<overrides>]   inference latency and
                                         samples/s per batch size: PyTorch eager, torch.compile, onnxruntime

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
from ddtrain.errors import UserError


def throughput_main(argv: list[str]) -> dict:
    """ddtrain-bench throughput: ddtrain's steady-state samples/s and the hand-written loop's, side by side."""
    from ddtrain.compose import compose
    from ddtrain.distributed.session import Session
    from ddtrain.perf import throughput
    from ddtrain.validation import validate

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


def inference_main(argv: list[str]) -> list[dict]:
    """ddtrain-bench inference: latency p50/p99 and samples/s per batch size for eager, compile and onnxruntime."""
    from ddtrain.perf import inference

    parser = argparse.ArgumentParser(prog="ddtrain-bench inference", description=inference.__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64", help="comma-separated inference batch sizes")
    parser.add_argument("--runtimes", default=",".join(inference.RUNTIMES), help="comma-separated, of: "
                        + ", ".join(inference.RUNTIMES))
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per batch size and runtime (compiles)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per batch size, runtime and round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, runtime order reversed every other one")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/bench-inference/<time>)")
    opts, rest = parser.parse_known_args(argv)
    with common.exit_path():
        model, shape, what = inference_model(rest)
        rows = inference.measure(model, shape, [int(b) for b in opts.batch_sizes.split(",") if b],
                                 [r for r in opts.runtimes.split(",") if r], opts.warmup, opts.iters, opts.rounds,
                                 opts.threads)
        import torch

        out = opts.out or Path("outputs/bench-inference") / time.strftime("%Y-%m-%d_%H-%M-%S")
        title = f"{what}, input {list(shape)}, CPU, {torch.get_num_threads()} thread(s)"
        meta = {"model": what, "input_shape": list(shape), "threads": torch.get_num_threads(),
                "torch_version": str(torch.__version__), "warmup": opts.warmup, "iters": opts.iters,
                "rounds": opts.rounds}
        paths = inference.write(rows, out, title, meta)
        print(f"{title}\n\n{inference.table(rows)}\n\nwritten: {', '.join(str(p) for p in paths.values())}",
              flush=True)
    return rows


def inference_model(args: list[str]):
    """(model in eval mode, sample shape, name) from a run directory / model.pt, or built from Hydra overrides."""
    import torch

    if args and not args[0].startswith("-") and "=" not in args[0]:
        from ddtrain.models.weights import load_model_file
        from ddtrain.perf.export import model_file_of

        model, content = load_model_file(model_file_of(args[0]), "model_file")
        if args[1:]:
            raise UserError(f"ddtrain-bench inference {args[0]}: no overrides after a model file ({args[1:]})")
        return model, tuple(content["input_shape"]), content["model"].get("_target_") or content["model"]["name"]
    from ddtrain.compose import compose
    from ddtrain.data.datasets import load_splits
    from ddtrain.models import build_model, model_name

    cfg = compose("train", args)
    if cfg.dataset.name == "synthetic":  # no data to make: its shape and classes are in the config
        shape, classes = tuple(int(d) for d in cfg.dataset.shape), int(cfg.dataset.num_classes)
    else:
        splits = load_splits(cfg.dataset, "cpu")
        shape, classes = tuple(splits.input_shape), splits.num_classes
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.model, shape, classes).eval(), shape, model_name(cfg.model)


def main(argv: list[str] | None = None) -> None:
    """Console script ddtrain-bench."""
    from ddtrain.cli import bench_comm, bench_predict

    argv = sys.argv[1:] if argv is None else argv
    commands = {"throughput": throughput_main, "allreduce": bench_comm.allreduce_main,
                "overlap": bench_comm.overlap_main, "predict": bench_predict.main, "inference": inference_main}
    if not argv or argv[0] not in commands:
        print(__doc__)
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    commands[argv[0]](argv[1:])
    common.end()  # a multi-rank benchmark leaves without interpreter finalization, as training does


if __name__ == "__main__":
    main()
