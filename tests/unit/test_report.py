"""Sweep artefacts: summary numbers on hand-built rows, table round trip, sweep.png, report.md, degenerate inputs."""

from __future__ import annotations

import csv
import json

import pytest

from ddtrain.errors import UserError
from ddtrain.sweep.report import (COLUMNS, largest_within_accuracy, measured_knee, plot, predicted_knee, read_rows,
                            sweet_spot, write_report, write_table)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
S_MIN, B_CRIT = 100.0, 128.0


def model_steps(bs: float) -> float:
    return S_MIN * (1 + B_CRIT / bs)


def row(bs, seed, status="ok", **kw) -> dict:
    r = {k: None for k in COLUMNS}
    r.update(batch_size=bs, seed=seed, per_rank_batch_size=bs // 2, grad_accum_steps=1, lr=0.1 * bs / 32,
             lr_scaling="linear", samples_per_s=1000.0 * bs ** 0.5, step_time_ms_median=10.0, steps=1000,
             epochs=3.0, final_val_accuracy=0.9, final_train_loss=0.2, peak_memory_bytes=1 << 20, status=status,
             wall_s=30.0)
    r.update(kw)
    return r


# mean time to target per batch size; 64 and 128 tie, so the smaller (64) wins
TIMES = {32: 5.0, 64: 3.6, 128: 3.6, 256: 4.5, 512: 1.0}
ACC = {32: 0.950, 64: 0.952, 128: 0.948, 256: 0.944, 512: 0.930}


@pytest.fixture
def rows() -> list[dict]:
    """5 batch sizes x 2 seeds, steps exactly on the model; 512 has a seed that missed; 1024 ran out of memory."""
    out = []
    noise = iter(range(100, 200, 10))
    for bs in TIMES:
        for seed, delta in ((0, -0.1), (1, 0.1)):
            steps = model_steps(bs)
            r = row(bs, seed, steps_to_target=steps, epochs_to_target=steps * bs / 4000,
                    time_to_target_s=TIMES[bs] + delta, best_val_accuracy=ACC[bs] + delta / 50,
                    test_accuracy=ACC[bs] - 0.01 + delta / 50, noise_scale=float(next(noise)))
            if bs == 512 and seed == 1:  # the fastest batch size, but one seed never got there
                r.update(status="target_not_reached", steps_to_target=None, epochs_to_target=None,
                         time_to_target_s=None, noise_scale=1e6)
            out.append(r)
    out.append(row(1024, 0, status="oom", samples_per_s=None, step_time_ms_median=None, steps=0, epochs=None,
                   final_val_accuracy=None, final_train_loss=None, peak_memory_bytes=None, wall_s=2.0))
    return out


def test_sweet_spot_ties_go_to_the_smaller_batch_and_misses_are_ignored(rows):
    spot = sweet_spot(rows)
    assert spot["batch_size"] == 64
    assert spot["time_to_target_s"] == pytest.approx(3.6)
    assert spot["seeds"] == 2
    # without the tie partner 64, 128 is best; 512 (one seed missed) is never chosen even though it is fastest
    assert sweet_spot([r for r in rows if r["batch_size"] != 64])["batch_size"] == 128
    assert sweet_spot([r for r in rows if r["batch_size"] in (512, 1024)]) is None
    assert sweet_spot([]) is None


def test_largest_within_accuracy(rows):
    assert largest_within_accuracy(rows) == 256          # 0.944 >= 0.952 - 0.01; 512 at 0.93 is not
    assert largest_within_accuracy(rows, points=0.005) == 128
    assert largest_within_accuracy(rows, points=0.05) == 512
    assert largest_within_accuracy([row(64, 0, status="oom")]) is None


def test_measured_knee_recovers_b_crit():
    exact = [row(bs, s, steps_to_target=model_steps(bs), time_to_target_s=1.0)
             for bs in (16, 32, 64, 128, 256, 512, 1024) for s in (0, 1)]
    assert measured_knee(exact) == pytest.approx(B_CRIT, rel=0.01)
    other = [row(bs, 0, steps_to_target=5000 * (1 + 2000 / bs), time_to_target_s=1.0) for bs in (256, 1024, 4096)]
    assert measured_knee(other) == pytest.approx(2000, rel=0.01)
    # fewer than three usable batch sizes, or a curve the model cannot describe (steps rising with batch size)
    assert measured_knee(exact[:4]) is None
    rising = [row(bs, 0, steps_to_target=float(bs), time_to_target_s=1.0) for bs in (32, 64, 128)]
    assert measured_knee(rising) is None


def test_knees_on_the_sweep_rows(rows):
    # 512 is left out (a seed missed), the other four batch sizes lie exactly on the model
    assert measured_knee(rows) == pytest.approx(B_CRIT, rel=0.01)
    # the run that missed the target trained to the end: its estimate counts; the oom row has none
    trained = sorted(r["noise_scale"] for r in rows if r["status"] in ("ok", "target_not_reached"))
    assert len(trained) == 10 and predicted_knee(rows) == (trained[4] + trained[5]) / 2
    assert predicted_knee([row(64, 0, status="oom")]) is None


def test_table_round_trip(rows, tmp_path):
    write_table(rows, tmp_path)
    assert read_rows(tmp_path) == rows
    assert json.loads((tmp_path / "sweep.json").read_text()) == rows
    with open(tmp_path / "sweep.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == COLUMNS and header[:2] == ["batch_size", "seed"]
    assert len(body) == len(rows)
    oom = dict(zip(header, body[-1]))
    assert oom["status"] == "oom" and oom["best_val_accuracy"] == "" and oom["samples_per_s"] == ""
    assert oom["batch_size"] == "1024" and oom["steps"] == "0"
    # nothing but the two files: the temporary files were renamed into place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv", "sweep.json"]


def test_read_rows_absent_and_corrupt(tmp_path):
    assert read_rows(tmp_path / "nothing-here") == []
    (tmp_path / "sweep.json").write_text('[{"batch_size": 32,')
    with pytest.raises(UserError, match="sweep.json.*delete it or choose another sweep directory"):
        read_rows(tmp_path)
    (tmp_path / "sweep.json").write_text('{"batch_size": 32}')
    with pytest.raises(UserError, match="delete it"):
        read_rows(tmp_path)


def assert_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] > 100 and img.shape[1] > 100


def test_plot_writes_a_png(rows, tmp_path):
    plot(rows, tmp_path / "sweep.png", title="mlp on mnist1d")
    assert_png(tmp_path / "sweep.png")
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.png"]


def test_report_has_the_table_sweet_spot_and_findings(rows, tmp_path):
    text = write_report(rows, tmp_path, title="Batch-size sweep: mlp on mnist1d", target=0.9,
                        target_metric="val_accuracy")
    assert text == (tmp_path / "report.md").read_text()
    assert text.startswith("# Batch-size sweep: mlp on mnist1d\n")
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 6  # header + 6 batch sizes
    spot_lines = [line for line in table if "← sweet spot" in line]
    assert len(spot_lines) == 1 and spot_lines[0].startswith("| **64** | 2 |")
    assert any(line.startswith("| 512 |") and "ok/target_not_reached" in line and "(1/2)" in line for line in table)
    assert any(line.startswith("| 1024 |") and "oom" in line for line in table)
    assert "## Findings" in text
    assert "batch size 64 reaches val_accuracy ≥ 0.9 in 3.6 s" in text
    assert "Largest batch within 1 point of the best accuracy:** 256" in text
    assert "predicted 145" in text and "measured knee 128" in text and "McCandlish" in text
    assert f"**Measured / predicted:** {128 / 145:.2f}" in text
    assert "(sweep.png)" in text


@pytest.mark.parametrize("case", ["empty", "single", "all_oom", "none_reached", "all_none", "nan"])
def test_degenerate_inputs_do_not_fail(case, tmp_path):
    rows = {
        "empty": [],
        "single": [row(64, 0, steps_to_target=120.0, time_to_target_s=2.0, best_val_accuracy=0.9,
                       test_accuracy=0.89, noise_scale=80.0)],
        "all_oom": [row(bs, s, status="oom", samples_per_s=None, step_time_ms_median=None)
                    for bs in (512, 1024) for s in (0, 1)],
        "none_reached": [row(bs, 0, status="target_not_reached", best_val_accuracy=0.5) for bs in (32, 64, 128)],
        "all_none": [{"batch_size": 64, "seed": 0}, {"batch_size": 128, "seed": 0, "status": "diverged"}],
        "nan": [row(bs, 0, samples_per_s=float("nan"), steps_to_target=100.0 * 64 / bs, time_to_target_s=1.0,
                    best_val_accuracy=float("inf")) for bs in (64, 128, 256)],
    }[case]
    plot(rows, tmp_path / "sweep.png")
    assert_png(tmp_path / "sweep.png")
    text = write_report(rows, tmp_path, title="t", target=0.9, target_metric="val_accuracy")
    assert "## Findings" in text and "sweep.png" in text
    write_table(rows, tmp_path)
    assert len(read_rows(tmp_path)) == len(rows)
    if case in ("empty", "all_oom", "none_reached", "all_none"):
        assert sweet_spot(rows) is None and "Sweet spot:** none" in text
    if case == "single":
        assert sweet_spot(rows)["batch_size"] == 64 and measured_knee(rows) is None
        assert predicted_knee(rows) == 80.0
