"""Inference latency and throughput against the batch size: PyTorch eager, torch.compile and onnxruntime.

    ddtrain-bench inference [<run_dir | model.pt>] [--batch-sizes 1,2,4,...] [--runtimes eager,compile,onnxruntime]
                            [--iters 20] [--warmup 3] [--rounds 2] [--threads N] [--out DIR] [<overrides>]

The training side of the trade-off is ddtrain-sweep (larger batches: more samples/s, later accuracy);
this is the serving side: a larger batch raises samples/s and the latency of every request in it.
For each batch size and runtime: warm-up calls (torch.compile compiles here: one static graph per
batch size, inductor's freezing on), then timed calls on the same input; latency p50/p99 per batch
in ms, and samples/s = batch / mean latency. The runtimes take turns per batch size and the order reverses every round
(A B C, C B A), so a machine whose load drifts treats them alike; the rounds are pooled and each
round's p50 is kept for the spread. One process, all the threads it is given (--threads).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ddtrain.errors import UserError

RUNTIMES = ("eager", "compile", "onnxruntime")


def _runner(runtime: str, model, onnx_path: Path | None, threads: int):
    """A factory batch -> (callable that runs one inference, its input); compile recompiles per batch size."""
    if runtime == "eager":
        return lambda x: (lambda: model(x))
    if runtime == "compile":
        compiled = torch.compile(model, dynamic=False)  # one static graph per batch size (see measure)
        return lambda x: (lambda: compiled(x))
    from ddtrain.perf.export import ort_session

    session = ort_session(onnx_path, threads)
    name = session.get_inputs()[0].name

    def make_ort(x):
        feed = {name: x.numpy()}
        return lambda: session.run(None, feed)
    return make_ort


def time_calls(fn, warmup: int, iters: int) -> list[float]:
    """Seconds of each of `iters` calls after `warmup` untimed ones."""
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def measure(model, input_shape, batch_sizes, runtimes=RUNTIMES, warmup: int = 3, iters: int = 20, rounds: int = 2,
            threads: int | None = None, onnx_path: Path | None = None) -> list[dict]:
    """One row per (runtime, batch size): latency p50/p99 (ms), samples/s, and each round's p50."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise UserError(f"--runtimes {','.join(runtimes)}: choose from {', '.join(RUNTIMES)}")
    if not batch_sizes or any(b < 1 for b in batch_sizes) or warmup < 1 or iters < 2 or rounds < 1:
        raise UserError("--batch-sizes must be positive, --warmup >= 1, --iters >= 2, --rounds >= 1")
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    if "compile" in runtimes:  # each batch size is a recompilation: let all of them have their graph
        import torch._dynamo.config as dynamo_config

        import torch._inductor.config as inductor_config

        limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 2 * len(batch_sizes) + 8))
        # weights as constants (BatchNorm folded into convolutions, weights prepacked): PyTorch's advice for
        # inference; in a check of ResNet-18 (32x32, batch 1, one CPU thread) compiled was 2-3x slower than
        # eager without it and 2-3x faster with it
        inductor_config.freezing = True
    model = model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        if "onnxruntime" in runtimes and onnx_path is None:
            from ddtrain.perf.export import to_onnx

            onnx_path = Path(tmp) / "model.onnx"
            to_onnx(model, torch.randn(2, *input_shape), onnx_path)
        makers = {r: _runner(r, model, onnx_path, threads) for r in runtimes}
        samples: dict = {(r, b): [] for r in runtimes for b in batch_sizes}
        per_round: dict = {(r, b): [] for r in runtimes for b in batch_sizes}
        for rnd in range(rounds):
            order = list(runtimes) if rnd % 2 == 0 else list(reversed(runtimes))
            for b in batch_sizes:
                x = torch.randn(b, *input_shape, generator=torch.Generator().manual_seed(b))
                for r in order:
                    t = time_calls(makers[r](x), warmup, iters)
                    samples[(r, b)] += t
                    per_round[(r, b)].append(1000 * statistics.median(t))
    rows = []
    for (r, b), t in samples.items():
        ms = 1000 * np.asarray(t)
        rows.append({"runtime": r, "batch_size": b, "latency_ms_p50": float(np.percentile(ms, 50)),
                     "latency_ms_p99": float(np.percentile(ms, 99)), "samples_per_s": b / float(np.mean(t)),
                     "calls": len(t), "p50_per_round_ms": per_round[(r, b)]})
    return sorted(rows, key=lambda row: (row["batch_size"], RUNTIMES.index(row["runtime"])))


def table(rows: list[dict]) -> str:
    """Markdown: one line per batch size, p50/p99 latency and samples/s for each runtime."""
    runtimes = [r for r in RUNTIMES if any(row["runtime"] == r for row in rows)]
    head = "| batch | " + " | ".join(f"{r} p50 / p99 ms | {r} samples/s" for r in runtimes) + " |"
    lines = [head, "| ---: | " + " | ".join("---: | ---:" for _ in runtimes) + " |"]
    for b in sorted({row["batch_size"] for row in rows}):
        cells = []
        for r in runtimes:
            row = next(x for x in rows if x["runtime"] == r and x["batch_size"] == b)
            rate = row["samples_per_s"]
            cells.append(f"{row['latency_ms_p50']:.2f} / {row['latency_ms_p99']:.2f} | "
                         + (f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"))
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Two panels against the batch size (log2): samples/s, and p50 latency with p99 as the bar's top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in RUNTIMES:
        mine = sorted((x for x in rows if x["runtime"] == r), key=lambda x: x["batch_size"])
        if not mine:
            continue
        bs = [x["batch_size"] for x in mine]
        ax_tp.plot(bs, [x["samples_per_s"] for x in mine], "o-", label=r)
        p50 = np.array([x["latency_ms_p50"] for x in mine])
        p99 = np.array([x["latency_ms_p99"] for x in mine])
        ax_lat.errorbar(bs, p50, yerr=[np.zeros_like(p50), p99 - p50], fmt="o-", capsize=3, label=r)
    for ax, ylabel in ((ax_tp, "samples/s"), (ax_lat, "latency per batch, ms (p50, bar to p99)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inference batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_lat.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(rows: list[dict], out_dir: Path, title: str, meta: dict) -> dict[str, Path]:
    """inference.json (rows and how they were measured), inference.md (the table) and inference.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "inference.json", "md": out_dir / "inference.md", "png": out_dir / "inference.png"}
    paths["json"].write_text(json.dumps({"title": title, **meta, "rows": rows}, indent=2) + "\n")
    paths["md"].write_text(f"{title}\n\n{table(rows)}\n")
    plot(rows, paths["png"], title)
    return paths


__all__ = ["RUNTIMES", "measure", "plot", "table", "time_calls", "write"]
