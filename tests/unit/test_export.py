"""ONNX export checked with onnxruntime (ddtrain-export) and the inference batch-size benchmark."""

from __future__ import annotations

import json
import subprocess

import onnx
import pytest
import torch
from omegaconf import OmegaConf

from conftest import BIN, base_env
from ddtrain.config import DatasetConfig, ModelConfig
from ddtrain.errors import UserError
from ddtrain.models import build_model
from ddtrain.models.weights import save_model_file
from ddtrain.perf import export, inference

SHAPES = {"mlp": [40], "cnn1d": [40], "lenet5": [1, 28, 28], "resnet18": [3, 32, 32]}


def model_pt(tmp_path, name: str, classes: int = 10):
    """A model.pt as a run leaves it, with non-trivial BatchNorm statistics (eval mode uses them)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), SHAPES[name], classes)
    with torch.no_grad():  # ResNets start with zero residual gammas: make every branch count
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
    dataset = OmegaConf.to_container(OmegaConf.structured(DatasetConfig(
        name="synthetic", shape=SHAPES[name], num_classes=classes, num_samples=128, num_test_samples=80)))
    meta = {"model": OmegaConf.to_container(OmegaConf.structured(ModelConfig(name=name))),
            "input_shape": SHAPES[name], "num_classes": classes, "dataset": dataset, "step": 0}
    return save_model_file(tmp_path / "model.pt", model, meta), model.eval()


@pytest.mark.parametrize("name", list(SHAPES))
def test_onnx_equals_pytorch_with_a_dynamic_batch(tmp_path, name):
    path, model = model_pt(tmp_path, name)
    result = export.export(tmp_path, "onnx", batch=64, atol=1e-4)  # the run directory holding model.pt
    assert result["inputs"] == "64 test samples of synthetic"  # real inputs, not random ones
    assert result["exporter"] == "dynamo"
    assert set(result["max_abs_diff"]) == {64, 1} and max(result["max_abs_diff"].values()) <= 1e-4
    onnx_file = tmp_path / "model.onnx"
    dims = onnx.load(str(onnx_file)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == SHAPES[name]  # symbolic batch axis
    session = export.ort_session(onnx_file)
    for batch in (1, 64, 5):  # any batch, not only the ones checked
        x = torch.randn(batch, *SHAPES[name])
        assert export.max_difference(session, model, x) <= 1e-4
    assert "max abs difference" in export.report(result)


def test_export_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(UserError, match="no such run directory or model.pt"):
        export.export(tmp_path / "nothing")
    with pytest.raises(UserError, match="holds no model.pt"):
        export.export(tmp_path)
    model_pt(tmp_path, "mlp")
    with pytest.raises(UserError, match="--format tensorrt is not supported"):
        export.export(tmp_path, "tensorrt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not a ddtrain model.pt"):
        export.export(tmp_path / "plain.pt")


@pytest.mark.slow
def test_ddtrain_export_command(tmp_path):
    model_pt(tmp_path, "lenet5")
    p = subprocess.run([str(BIN / "ddtrain-export"), str(tmp_path / "model.pt"), "--format", "onnx", "--batch", "16",
                        "-o", str(tmp_path / "out" / "lenet.onnx")], env=base_env(), text=True, capture_output=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"wrote {tmp_path / 'out' / 'lenet.onnx'}" in p.stdout
    assert "on 16 test samples of synthetic: max abs difference" in p.stdout
    bad = subprocess.run([str(BIN / "ddtrain-export"), str(tmp_path / "missing")], env=base_env(), text=True,
                         capture_output=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"ddtrain: error: {tmp_path / 'missing'}: no such run directory or model.pt"]


@pytest.mark.slow
def test_inference_benchmark_writes_table_json_and_plot(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="mlp", hidden_sizes=[32]), (40,), 10)
    rows = inference.measure(model, (40,), [1, 8], warmup=1, iters=3, rounds=2, threads=1)
    assert {(r["runtime"], r["batch_size"]) for r in rows} == {(r, b) for r in inference.RUNTIMES for b in (1, 8)}
    for r in rows:
        assert r["calls"] == 6 and len(r["p50_per_round_ms"]) == 2
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p99"]
        assert r["samples_per_s"] > 0
    paths = inference.write(rows, tmp_path / "bench", "mlp", {"threads": 1})
    assert json.loads(paths["json"].read_text())["rows"] == rows
    assert "| 8 |" in paths["md"].read_text() and paths["png"].stat().st_size > 10_000
