"""The scaling predictor: the ring-allreduce cost model by hand, the table, the CLI, and a real 2-rank CPU check."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from ddtrain.errors import UserError
from ddtrain.cli.bench_predict import main
from ddtrain.perf.predict import gradient_bytes, predict_step_time, ring_allreduce_time, scaling_table

REPO = Path(__file__).resolve().parents[2]

# the hand-computed case: 4 devices, 100 MB of gradients, 100 GB/s per direction, 5 us per ring step
N, S, B, ALPHA = 4, 100e6, 100e9, 5e-6
# 2(n-1)/n x S/B = 1.5 x 1e-3 s = 1.5 ms; 2(n-1) x alpha = 6 x 5 us = 30 us
RING_S = 0.00153
# compute 100 ms, half the allreduce hidden behind backward: 0.1 + 0.5 x 0.00153
STEP_S = 0.100765


def test_ring_allreduce_reproduces_the_hand_computed_case():
    assert ring_allreduce_time(N, S, B, ALPHA) == pytest.approx(RING_S, rel=1e-12)
    # n = 2: each rank sends and receives S/2 twice, S/B in all, over 2 latency steps
    assert ring_allreduce_time(2, S, B, ALPHA) == pytest.approx(1e-3 + 2 * ALPHA, rel=1e-12)


def test_step_time_reproduces_the_hand_computed_case():
    assert predict_step_time(0.1, N, S, B, ALPHA, overlap=0.5) == pytest.approx(STEP_S, rel=1e-12)
    assert predict_step_time(0.1, N, S, B, ALPHA) == pytest.approx(0.1 + RING_S, rel=1e-12)  # default: none hidden
    assert predict_step_time(0.1, N, S, B, ALPHA, overlap=1.0) == 0.1  # all hidden


def test_one_device_has_no_communication():
    assert ring_allreduce_time(1, S, B, ALPHA) == 0.0
    assert predict_step_time(0.25, 1, S, B, ALPHA) == 0.25


@pytest.mark.parametrize("call", [
    lambda: ring_allreduce_time(0, S, B, ALPHA),
    lambda: ring_allreduce_time(2, S, 0.0, ALPHA),
    lambda: predict_step_time(0.1, 2, S, B, ALPHA, overlap=1.5),
    lambda: predict_step_time(0.1, 2, S, B, ALPHA, overlap=-0.1),
])
def test_bad_inputs_are_user_errors(call):
    with pytest.raises(UserError):
        call()


def test_scaling_table_rows_are_consistent():
    rows = scaling_table((64, 0.1), [1, 2, 4], [64, 128], S, B, ALPHA, overlap=0.5)
    assert [(r["gpus"], r["per_device_batch"]) for r in rows] == [(1, 64), (2, 64), (4, 64), (1, 128), (2, 128),
                                                                  (4, 128)]
    by = {(r["gpus"], r["per_device_batch"]): r for r in rows}
    four = by[(4, 64)]
    assert four["global_batch"] == 256
    assert four["compute_s"] == 0.1
    assert four["comm_s"] == pytest.approx(RING_S, rel=1e-12)
    assert four["step_s"] == pytest.approx(STEP_S, rel=1e-12)
    assert four["samples_per_s"] == pytest.approx(256 / STEP_S, rel=1e-12)
    assert four["efficiency"] == pytest.approx(0.1 / STEP_S, rel=1e-12)  # weak scaling: compute / step
    # linear in the batch: twice the batch, twice the compute, the same communication
    assert by[(4, 128)]["compute_s"] == pytest.approx(0.2, rel=1e-12)
    assert by[(4, 128)]["step_s"] == pytest.approx(0.2 + 0.5 * RING_S, rel=1e-12)
    for r in rows:
        assert r["step_s"] == pytest.approx(r["compute_s"] + 0.5 * r["comm_s"], rel=1e-12)
        assert r["samples_per_s"] == pytest.approx(r["global_batch"] / r["step_s"], rel=1e-12)
        assert 0 < r["efficiency"] <= 1
    assert by[(1, 64)]["efficiency"] == 1.0 and by[(1, 64)]["comm_s"] == 0.0
    # more devices, lower efficiency; a bigger batch hides the same communication better
    assert by[(2, 64)]["efficiency"] > by[(4, 64)]["efficiency"] < by[(4, 128)]["efficiency"]


def test_scaling_table_takes_a_compute_function_and_needs_no_one_device_row():
    rows = scaling_table(lambda batch: 0.01 + batch * 1e-3, [8], [32], 1e6, 1e9, 0.0)
    (row,) = rows
    compute = 0.01 + 32e-3
    comm = 2 * 7 / 8 * 1e-3
    assert row["compute_s"] == compute and row["comm_s"] == pytest.approx(comm, rel=1e-12)
    assert row["efficiency"] == pytest.approx(compute / (compute + comm), rel=1e-12)


def test_gradient_bytes_counts_trainable_parameters_at_their_element_size():
    model = nn.Sequential(nn.Linear(10, 5), nn.Linear(5, 3))  # 55 + 18 parameters
    assert gradient_bytes(model) == 73 * 4
    model[1].weight.requires_grad_(False)  # frozen: no gradient to average
    assert gradient_bytes(model) == (73 - 15) * 4
    assert gradient_bytes(nn.Linear(10, 5).to(torch.bfloat16)) == 55 * 2


def test_cli_measured_step_time_with_a_named_interconnect(tmp_path, capsys):
    from ddtrain.hardware import INTERCONNECTS

    out = tmp_path / "rows.json"
    assert main(["--step-time-ms", "100", "--batch", "64", "--grad-bytes", "100e6", "--interconnect", "nvlink4",
                 "--gpus", "1", "4", "--batches", "64", "128", "--overlap", "0.5", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "efficiency" in text and "NVLink 4" in text
    data = json.loads(out.read_text())
    ic = INTERCONNECTS["nvlink4"]
    assert data["bandwidth"] == ic.bandwidth and data["latency"] == ic.latency
    expected = scaling_table((64, 0.1), [1, 4], [64, 128], 100e6, ic.bandwidth, ic.latency, 0.5)
    assert data["rows"] == json.loads(json.dumps(expected))  # JSON round-trips floats exactly


def test_cli_bandwidth_flags_reproduce_the_hand_computed_case(tmp_path):
    out = tmp_path / "rows.json"
    main(["--step-time-ms", "100", "--grad-bytes", "100e6", "--bandwidth", "100", "--latency-us", "5",
          "--gpus", "4", "--batches", "64", "--overlap", "0.5", "--json", str(out)])
    (row,) = json.loads(out.read_text())["rows"]
    assert row["step_s"] == pytest.approx(STEP_S, rel=1e-12)


def test_cli_estimates_compute_from_flops_and_says_so(tmp_path, capsys):
    out = tmp_path / "rows.json"
    main(["--model", "mlp", "--input-shape", "784", "--device", "H100 SXM5", "--interconnect", "pcie4",
          "--gpus", "1", "2", "--batches", "32", "--json", str(out)])
    text = capsys.readouterr().out
    assert "ASSUMED MFU of 0.4" in text
    data = json.loads(out.read_text())
    assert data["grad_bytes"] == (784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10) * 4  # default mlp widths
    assert data["rows"][0]["compute_s"] > 0 and data["rows"][1]["comm_s"] > 0


@pytest.mark.parametrize("argv", [
    ["--grad-bytes", "1e6", "--interconnect", "nvlink4"],  # no compute source
    ["--step-time-ms", "10", "--grad-bytes", "1e6"],  # no interconnect
    ["--step-time-ms", "10", "--grad-bytes", "1e6", "--interconnect", "nvlink9"],  # unknown interconnect
    ["--step-time-ms", "10", "--grad-bytes", "1e6", "--bandwidth", "10"],  # bandwidth without latency
    ["--step-time-ms", "10", "--interconnect", "nvlink4"],  # no gradient size
])
def test_cli_rejects_incomplete_input(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def _validation_module():
    spec = importlib.util.spec_from_file_location("predict_validation", REPO / "benchmarks" / "predict_validation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_rank_cpu_prediction_is_within_25_percent_of_the_measurement(tmp_path):
    """MLP 784-1024-1024-10 (7.5 MB of gradients), per-rank batch 64, 2 gloo ranks: predicted vs measured step time."""
    pv = _validation_module()
    row = pv.validate("mlp", 2, tmp_path, steps=100, warmup=20, rounds=2, alone=False)
    report = pv.format_rows([row]) + f"\nload average {os.getloadavg()[0]:.2f}"
    print(report)
    assert row["measured_ms"] >= 10, report  # long enough steps to time steadily
    assert abs(row["error_pct"]) <= 25, report
