"""ddtrain-bench predict: the predicted scaling table of data-parallel training on 1..N devices.

The cost model and its assumptions are in ddtrain.perf.predict.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from ddtrain.errors import UserError
from ddtrain.perf.predict import ComputeModel, format_table, gradient_bytes, scaling_table
from ddtrain.perf import predict as model_doc

def _ints(text: str) -> list[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v.strip()]


def _build(args):
    from ddtrain.config import ModelConfig
    from ddtrain.models import build_model

    shape = _ints(args.input_shape)
    return build_model(ModelConfig(name=args.model), shape, args.num_classes), shape


def main(argv: Sequence[str] | None = None) -> int:
    """ddtrain-bench predict: print (and optionally write as JSON) the predicted scaling table."""
    p = argparse.ArgumentParser(prog="ddtrain-bench predict", description=model_doc.__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="ring allreduce: t = 2(n-1)/n x S/B + 2(n-1) x alpha; "
                                       "step = compute + (1 - overlap) x t")
    src = p.add_argument_group("compute time (--step-time-ms wins when both are given)")
    src.add_argument("--step-time-ms", type=float, help="measured single-device step time at --batch")
    src.add_argument("--model", help="model name (ddtrain.models): compute time from its FLOPs at --mfu of the "
                                     "--device peak; also gives --grad-bytes")
    p.add_argument("--batch", type=int, default=None,
                   help="per-device batch of --step-time-ms (default: the first of --batches)")
    p.add_argument("--input-shape", default="3,32,32", help="--model: sample shape, e.g. 3,224,224 (default 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10, help="--model: classes (default 10)")
    p.add_argument("--device", help="--model: GPU name for the peak FLOP/s, e.g. 'H100 SXM5' (ddtrain.hardware)")
    p.add_argument("--precision", default="bf16",
                   help="--model: use the peak FLOP/s of fp32 | tf32 | bf16 | fp16 (default bf16)")
    p.add_argument("--mfu", type=float, default=0.4, help="--model: assumed model FLOP utilisation (default 0.4)")
    p.add_argument("--grad-bytes", type=float, help="gradient bytes allreduced per step (default: from --model, fp32)")
    link = p.add_argument_group("interconnect (one of)")
    link.add_argument("--interconnect", help="key of ddtrain.hardware.INTERCONNECTS, e.g. nvlink4, pcie4, ib-hdr")
    link.add_argument("--bandwidth", type=float, help="GB/s per direction (1 GB = 1e9 bytes); needs --latency-us")
    p.add_argument("--latency-us", type=float,
                   help="per-step latency alpha in microseconds (overrides --interconnect's)")
    p.add_argument("--overlap", type=float, default=0.0,
                   help="fraction of the allreduce hidden behind backward, 0..1 (default 0: none hidden, "
                        "conservative); use the overlap benchmark's figure when you have it")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts (default 1 2 4 8)")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256],
                   help="per-device batch sizes (default 32 64 128 256)")
    p.add_argument("--json", help="also write the rows and assumptions to this JSON file")
    a = p.parse_args(argv)
    try:
        return _run(p, a)
    except UserError as exc:
        p.error(str(exc))  # exits with status 2


def _run(p: argparse.ArgumentParser, a) -> int:
    from ddtrain import hardware

    notes = []
    if a.step_time_ms is None and a.model is None:
        p.error("give --step-time-ms (measured) or --model with --device (estimated from FLOPs)")
    if a.interconnect is None and a.bandwidth is None:
        p.error("give --interconnect or --bandwidth with --latency-us")
    if a.interconnect is not None:
        ic = hardware.lookup_interconnect(a.interconnect)
        bandwidth = ic.bandwidth if a.bandwidth is None else a.bandwidth * 1e9
        latency = ic.latency if a.latency_us is None else a.latency_us * 1e-6
        notes.append(f"interconnect {ic.name}")
    else:
        if a.latency_us is None:
            p.error("--bandwidth needs --latency-us")
        bandwidth, latency = a.bandwidth * 1e9, a.latency_us * 1e-6
    notes.append(f"link {bandwidth / 1e9:g} GB/s per direction, alpha {latency * 1e6:g} us per ring step")

    model = shape = None
    if a.model is not None:
        model, shape = _build(a)
    grad_bytes = a.grad_bytes if a.grad_bytes is not None else (gradient_bytes(model) if model is not None else None)
    if grad_bytes is None:
        p.error("give --grad-bytes (or --model to derive it)")
    notes.append(f"gradient {grad_bytes / 1e6:.2f} MB" + (" (fp32, from the model)" if a.grad_bytes is None else ""))

    if a.step_time_ms is not None:
        compute: ComputeModel = (a.batch or a.batches[0], a.step_time_ms / 1e3)
        notes.append(f"compute: measured {a.step_time_ms:g} ms at batch {compute[0]}, scaled linearly in the batch")
    else:
        if a.device is None:
            p.error("--model needs --device (a GPU of ddtrain.hardware) for its peak FLOP/s")
        spec = hardware.lookup_gpu(a.device) or hardware.GPUS.get(a.device)
        peak = hardware.peak_flops(spec, a.precision)
        if not peak:
            p.error(f"no {a.precision} peak for device {a.device!r}; known: {', '.join(hardware.GPUS)}")
        if not 0 < a.mfu <= 1:
            p.error(f"--mfu={a.mfu} must be in (0, 1]")
        from ddtrain.models.flops import flops_per_sample

        fps = flops_per_sample(model, shape, a.num_classes)
        compute = lambda batch: fps * batch / (peak * a.mfu)  # noqa: E731
        notes.append(f"compute: ESTIMATED from {fps / 1e9:.3g} GFLOP/sample (fwd+bwd) at an ASSUMED MFU of "
                     f"{a.mfu:g} x {spec.name} {a.precision} peak {peak / 1e12:g} TFLOP/s")
    notes.append(f"overlap {a.overlap:g} (fraction of the allreduce hidden behind backward"
                 + ("; 0 = none: conservative)" if a.overlap == 0 else ")"))

    rows = scaling_table(compute, a.gpus, a.batches, grad_bytes, bandwidth, latency, a.overlap)
    print("\n".join(f"# {n}" for n in notes))
    print(format_table(rows))
    if a.json:
        out = {"bandwidth": bandwidth, "latency": latency, "grad_bytes": grad_bytes, "overlap": a.overlap,
               "notes": notes, "rows": rows}
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"written {a.json}")
    return 0


