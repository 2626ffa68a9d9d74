"""ddtrain-export: a trained model for inference, checked against PyTorch.

    ddtrain-export <run_dir | model.pt> --format onnx [--output F] [--batch 64] [--atol 1e-4] [--opset N]

Writes an ONNX file with a dynamic batch axis (default: model.onnx beside model.pt), runs it with
onnxruntime on a batch of the run's test samples and on one sample, and prints the largest absolute
difference from PyTorch's outputs; exit status 1 when it exceeds --atol, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from ddtrain.cli import common
from ddtrain.errors import EXIT_FAILED


def main(argv: list[str] | None = None) -> None:
    """Console script ddtrain-export."""
    parser = argparse.ArgumentParser(prog="ddtrain-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory (holding model.pt) or a model.pt")
    parser.add_argument("--format", default="onnx", help="onnx (the only one so far)")
    parser.add_argument("--output", "-o", help="where to write (default: model.onnx beside model.pt)")
    parser.add_argument("--batch", type=int, default=64, help="real inputs checked at once (batch 1 is checked too)")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest absolute difference allowed")
    parser.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    opts = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from ddtrain.perf import export

    with common.exit_path():
        try:
            result = export.export(opts.source, opts.format, opts.output, opts.batch, opts.atol, opts.opset)
        except export.ExportCheckFailed as exc:  # the file is written but wrong: say so, no checkpoint talk
            common.leave(str(exc), EXIT_FAILED)
        print(json.dumps(result, indent=2) if opts.json else f"ddtrain-export: {export.report(result)}", flush=True)


if __name__ == "__main__":
    main()
