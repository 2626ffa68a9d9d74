"""Export a trained model for inference: ONNX with a dynamic batch axis, checked against PyTorch with onnxruntime.

    ddtrain-export <run_dir | model.pt> --format onnx      # writes model.onnx beside model.pt

The model is rebuilt from model.pt (weights and model config), exported by torch.onnx's dynamo
exporter (it needs onnxscript; the TorchScript exporter is the fall-back for models torch.export
cannot trace), then run by onnxruntime on a batch of real inputs (the first test samples of the
run's dataset; random inputs of the right shape only when that dataset cannot be loaded here) and
on one sample, and compared with PyTorch: the largest absolute difference must be within atol.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ddtrain.errors import UserError
from ddtrain.models.weights import MODEL_FILE, load_model_file

log = logging.getLogger("ddtrain")
FORMATS = ("onnx",)
INSTALL = "pip install 'ddtrain[export]' (onnx, onnxruntime, onnxscript)"


class ExportCheckFailed(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


def need(*packages: str) -> None:
    """UserError with the install line when a package of the export extra is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: {INSTALL}")


def model_file_of(source: str | Path) -> Path:
    """The model.pt a run directory holds, or the file itself."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / MODEL_FILE).is_file():
            raise UserError(f"{path} holds no {MODEL_FILE}: train with checkpoint.save_model=true (the default), "
                            f"or pass the model.pt itself")
        return path / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path}: no such run directory or model.pt")
    return path


def real_inputs(content: dict, batch: int) -> tuple[torch.Tensor, str]:
    """Up to `batch` test samples of the run's dataset, and what they are; random ones if it cannot be loaded."""
    shape = tuple(int(d) for d in content["input_shape"])
    try:
        from omegaconf import OmegaConf

        from ddtrain.data.datasets import load_splits

        splits = load_splits(OmegaConf.create(content["dataset"]), "cpu")
        x = splits.test_x[:batch] if len(splits.test_x) else splits.train_x[:batch]
        if len(x) >= 2:
            return x.float() if x.is_floating_point() else x, f"{len(x)} test samples of {splits.name}"
    except Exception as exc:  # the dataset's files are not on this machine: still check, and say so
        log.warning("dataset not loadable here (%s: %s): checking on random inputs", type(exc).__name__, exc)
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0)), f"{batch} random inputs"


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None = None) -> str:
    """Write model as ONNX with a dynamic batch axis ("batch"); returns which exporter did it."""
    need("onnx", "onnxscript")
    path.parent.mkdir(parents=True, exist_ok=True)
    large = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > 1.8e9  # ONNX's 2 GB protobuf limit
    common = dict(input_names=["input"], output_names=["output"], opset_version=opset, external_data=large)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed. Skipping ..."
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporters' deprecation and progress chatter
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), **common)
            return "dynamo"
        except Exception as exc:  # data-dependent control flow and the like: the TorchScript exporter may cope
            log.warning("torch.export could not trace the model (%s): trying the TorchScript exporter",
                        str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **common)
            return "torchscript"
        except Exception as exc:
            raise UserError(f"the model cannot be exported to ONNX: {type(exc).__name__}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session for the file (threads: intra-op threads; None: onnxruntime's choice)."""
    need("onnxruntime")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # idle pool threads would otherwise spin on the cores PyTorch's threads need next (the benchmark's turns)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_difference(session, model: nn.Module, x: torch.Tensor) -> float:
    """Largest |onnxruntime - PyTorch| over the outputs for input batch x."""
    with torch.no_grad():
        expected = model(x)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    if got.shape != tuple(expected.shape):
        raise ExportCheckFailed(f"onnxruntime gave outputs shaped {got.shape}, PyTorch {tuple(expected.shape)}")
    return float(np.abs(got.astype(np.float64) - expected.double().numpy()).max())


def export(source: str | Path, fmt: str = "onnx", output: str | Path | None = None, batch: int = 64,
           atol: float = 1e-4, opset: int | None = None) -> dict:
    """Export the model of a run directory or model.pt and check it; returns what was done (raises on failure)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not supported; choose one of: {', '.join(FORMATS)}")
    if batch < 2:
        raise UserError(f"--batch {batch}: use at least 2 (batch 1 is checked too)")
    need("onnx", "onnxscript", "onnxruntime")
    model_path = model_file_of(source)
    model, content = load_model_file(model_path, "model_file")
    out = Path(output) if output else model_path.with_suffix(".onnx")
    x, what = real_inputs(content, batch)
    exporter = to_onnx(model, x[:2], out, opset)
    session = ort_session(out)
    diffs = {len(x): max_difference(session, model, x), 1: max_difference(session, model, x[:1])}
    import onnxruntime

    result = {"onnx": str(out), "bytes": out.stat().st_size, "exporter": exporter, "inputs": what,
              "max_abs_diff": diffs, "atol": atol, "onnxruntime_version": onnxruntime.__version__,
              "model_file": str(model_path)}
    worst = max(diffs.values())
    if not worst <= atol:
        raise ExportCheckFailed(f"onnxruntime's outputs differ from PyTorch's by {worst:.3g} > --atol {atol:g} "
                                f"({out}; batches {sorted(diffs)})")
    return result


def report(result: dict) -> str:
    """What ddtrain-export prints."""
    diffs = ", ".join(f"{d:.2e} (batch {b})" for b, d in sorted(result["max_abs_diff"].items(), reverse=True))
    size = f"{result['bytes'] / 1e6:.1f} MB" if result["bytes"] >= 1e5 else f"{result['bytes'] / 1e3:.1f} kB"
    return (f"wrote {result['onnx']} ({size}, dynamic batch axis, {result['exporter']} exporter)\n"
            f"checked with onnxruntime {result['onnxruntime_version']} on {result['inputs']}: "
            f"max abs difference {diffs}; tolerance {result['atol']:g}")


__all__ = ["ExportCheckFailed", "export", "ort_session", "report", "to_onnx"]
