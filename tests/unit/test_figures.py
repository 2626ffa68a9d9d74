"""The README's figures are what results/ gives: regenerated in memory and compared, plus the formatters on
small fabricated results. No benchmark runs."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "results"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


figures = _load("figures")
ft = figures.ft  # benchmarks/figure_tables.py, as figures.py imported it


# --- the committed README against the recorded results ----------------------------------------------------------

def test_readme_tables_are_what_results_give():
    readme = (REPO / "README.md").read_text()
    assert figures.render(readme, RESULTS) == readme, (
        "README.md's figure tables differ from results/: run `make figures` (and never edit a generated block by hand)")


def test_readme_prose_still_quotes_the_recorded_figures():
    assert figures.stale_quotes((REPO / "README.md").read_text(), RESULTS) == []


NOT_RECORDED_YET = {"results/predict-validation-cpu.json"}  # where predict_validation.py will write; none kept yet


@pytest.mark.parametrize("doc", ["README.md", "benchmarks/README.md"])
def test_every_results_path_the_docs_name_exists(doc):
    text = (REPO / doc).read_text()
    # a placeholder such as results/gpu-check-<GPU>-<date>.json names no one file
    paths = [m.group().rstrip(".") for m in re.finditer(r"results/[\w./-]*", text)
             if text[m.end():m.end() + 1] not in ("<", "*")]
    assert paths
    assert [p for p in paths if not (REPO / p).exists() and p not in NOT_RECORDED_YET] == []


def test_recorded_sweep_report_and_csv_are_what_its_rows_give(tmp_path):
    from ddtrain.sweep.report import write_report, write_table

    sweep = RESULTS / "sweep-mnist1d-cpu"
    rows = json.loads((sweep / "sweep.json").read_text())
    report = (sweep / "report.md").read_text()
    title = report.splitlines()[0].removeprefix("# ")
    metric, target = re.search(r"Target: (\w+) ≥ ([\d.]+)\.", report).groups()
    assert write_report(rows, tmp_path, title, float(target), metric) == report
    write_table(rows, tmp_path)
    assert (tmp_path / "sweep.csv").read_text() == (sweep / "sweep.csv").read_text()


def test_check_fails_on_a_hand_edited_number_or_an_unregenerated_result(tmp_path, capsys):
    readme, results = tmp_path / "README.md", tmp_path / "results"
    shutil.copytree(RESULTS, results)
    good = (REPO / "README.md").read_text()
    args = ["--readme", str(readme), "--results", str(results)]

    block = good.index("<!-- figures:overhead ")
    figure = re.search(r"\| \*\*(\d\.\d{3})\*\* \|", good[block:]).group(1)  # the first ratio in the table
    edited = f"{float(figure) + 0.1:.3f}"
    readme.write_text(good[:block] + good[block:].replace(f"| **{figure}** |", f"| **{edited}** |", 1))  # by hand
    assert figures.main([*args, "--check"]) == 1
    assert f"**{edited}**" in readme.read_text()  # --check does not write
    assert figures.main(args) == 0
    assert readme.read_text() == good

    overhead = json.loads((results / "overhead-cpu.json").read_text())
    overhead["rows"][0]["ratio"] = 0.5  # a re-recorded result, README not regenerated
    (results / "overhead-cpu.json").write_text(json.dumps(overhead))
    assert figures.main([*args, "--check"]) == 1
    assert "make figures" in capsys.readouterr().err


def test_comm_tables_mode_prints_the_readme_formatter():
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "comm.py"), "--tables",
                          str(RESULTS / "comm-cpu.json")], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ft.comm(json.loads((RESULTS / "comm-cpu.json").read_text())).strip()


# --- the block machinery, on a fabricated registry --------------------------------------------------------------

def _registry(tmp_path, value=1.5):
    (tmp_path / "speed.json").write_text(json.dumps({"x": value}))
    return {"speed": figures.Figure("speed.json", lambda r: f"| speed |\n| ---: |\n| {r['x']} |",
                                    lambda r: [f"about {r['x']} units"])}


DOC = """# Title

Prose before, about 1.5 units.

<!-- figures:speed -->
| speed |
| ---: |
| 0.1 |
<!-- /figures:speed -->

Prose after.
"""


def test_render_rewrites_only_the_block_and_is_idempotent(tmp_path):
    fig = _registry(tmp_path)
    once = figures.render(DOC, tmp_path, fig)
    assert "| 1.5 |" in once and "| 0.1 |" not in once
    assert once.startswith("# Title\n\nProse before, about 1.5 units.\n\n<!-- figures:speed generated from "
                           "results/speed.json")
    assert once.endswith("| 1.5 |\n\n<!-- /figures:speed -->\n\nProse after.\n")
    assert figures.render(once, tmp_path, fig) == once
    assert figures.stale_quotes(once, tmp_path, fig) == []
    assert figures.stale_quotes(once, tmp_path, _registry(tmp_path, 2.5)) == ["speed: about 2.5 units"]


@pytest.mark.parametrize("doc, message", [
    (DOC.replace("<!-- /figures:speed -->\n", ""), "without their closing marker"),
    (DOC.replace("figures:speed -->", "figures:sped -->"), "does not know"),
    (DOC + DOC.split("Prose after.")[0].split("units.\n")[1], "more than once"),
    ("# Title\n", "does not place"),
])
def test_render_refuses_markers_that_do_not_fit_the_registry(tmp_path, doc, message):
    with pytest.raises(figures.FiguresError, match=message):
        figures.render(doc, tmp_path, _registry(tmp_path))


def test_render_names_a_missing_results_file(tmp_path):
    fig = _registry(tmp_path)
    (tmp_path / "speed.json").unlink()
    with pytest.raises(figures.FiguresError, match="speed.json is missing"):
        figures.render(DOC, tmp_path, fig)


# --- formatters on fabricated results ---------------------------------------------------------------------------

def _overhead_row(case, world, ratio, cpu=None):
    row = {"case": case, "world_size": world, "global_batch_size": 128, "repeats": 3,
           "ddtrain_samples_per_s": 12000.4, "hand_samples_per_s": 11999.6, "ratio": ratio, "ratio_min": 0.9751,
           "ratio_max": 1.0049, "pairs": [{"load_average": 0.31}, {"load_average": 1.26}]}
    if cpu is not None:
        row.update(ddtrain_cpu_ms_per_step=10.0, hand_cpu_ms_per_step=10.0 * cpu, cpu_ratio=cpu,
                   cpu_ratio_min=0.9911, cpu_ratio_max=0.9961)
    return row


def test_overhead_table_without_cpu_time_as_recorded_before():
    result = {"target": 0.99, "worst_ratio": 0.985, "cpu_count": 2, "load_average_at_start": 0.2,
              "rows": [_overhead_row("mlp", 1, 0.985), _overhead_row("lenet5", 2, 1.004)]}
    lines = ft.overhead(result).splitlines()
    assert lines[0] == ("| case | ranks | ddtrain samples/s | hand-written samples/s | ratio (median of 3 ABBA pairs) "
                        "| spread of pairs |")
    assert lines[2] == "| MLP 784-1024-1024-10, batch 128 | 1 | 12,000 | 12,000 | **0.985** | 0.975–1.005 |"
    assert lines[3].startswith("| LeNet-5, batch 128 | 2 |")
    assert all("CPU ms" not in line for line in lines[:4])
    assert " ".join(lines[5:]).startswith("Measured on the 2-core CPU machine with load average 0.3–1.3 from other "
                                          "work; worst median ratio 0.985")


def test_overhead_table_adds_cpu_time_columns_when_recorded():
    result = {"target": 0.99, "worst_ratio": 0.985, "worst_cpu_ratio": 0.993, "cpu_count": 2,
              "load_average_at_start": 0.2,
              "rows": [_overhead_row("mlp", 1, 0.985, cpu=0.993), _overhead_row("lenet5", 1, 1.0, cpu=1.001)]}
    text = ft.overhead(result)
    header = text.splitlines()[0]
    assert header.endswith("| ddtrain CPU ms/step | hand-written CPU ms/step | CPU-time ratio (hand / ddtrain) "
                           "| spread of pairs |")
    assert text.splitlines()[2].endswith("| 10.00 | 9.93 | **0.993** | 0.991–0.996 |")
    assert "worst median CPU-time ratio 0.993 (target ≥ 0.99)" in " ".join(text.split())



def test_overhead_table_adds_the_per_step_cost_when_recorded():
    rows = [_overhead_row("mlp", 1, 0.985, cpu=0.993), _overhead_row("lenet5", 1, 1.0, cpu=1.001)]
    for row in rows:
        row.update(extra_ms_per_step=0.12, extra_ms_min=0.1, extra_ms_max=0.2,
                   cost_ratio=10.0 / (10.0 + 0.12))
    result = {"target": 0.99, "worst_ratio": 0.985, "worst_cpu_ratio": 0.993, "worst_cost_ratio": 10.0 / 10.12,
              "cpu_count": 2, "load_average_at_start": 0.2, "rows": rows}
    text = ft.overhead(result)
    assert text.splitlines()[0].endswith("| ddtrain's extra ms/step (tiny model) | per-step-cost ratio |")
    assert text.splitlines()[2].endswith("| 0.120 (0.100–0.200) | **0.9881** |")
    assert "worst per-step-cost ratio 0.9881 (target ≥ 0.99)" in " ".join(text.split())

def _engines_result():
    def summary(ddp, horovod, mpi):
        return {"summary": {e: {"samples_per_s": 128e3 / ms, "step_time_ms": ms}
                            for e, ms in (("ddp", ddp), ("horovod", horovod), ("mpi", mpi))}}
    return {"global_batch_size": 128, "repeats": 4, "models": {"mlp": summary(20.0, 25.0, 15.0),
                                                               "lenet5": summary(10.0, 12.0, 9.0)}}


def test_engines_table_gives_the_mpi_step_time_against_each_engine():
    lines = ft.engines(_engines_result()).splitlines()
    assert lines[0] == ("| Core benchmark model (global batch 128) | engine | samples/s, median of 4 | step time (ms) "
                        "| mpi engine's step time / this one |")
    assert lines[2] == "| MLP 784-1024-1024-10 | ddp (gloo) | 6,400 | 20.00 | **0.750** |"
    assert lines[3] == "| MLP 784-1024-1024-10 | horovod (MPI) | 5,120 | 25.00 | **0.600** |"
    assert lines[4] == "| MLP 784-1024-1024-10 | mpi | 8,533 | 15.00 | 1 |"
    assert lines[6] == "| LeNet-5 | horovod (MPI) | 10,667 | 12.00 | **0.750** |"
    # the mpi engine's step takes 0.6 to 0.9 of the others': 10 to 40% faster
    assert ft.engines_quotes(_engines_result()) == ["it is 10–40% faster here"]


def _comm_result(key="libraries"):
    rows = [{"bytes": b, "time_us": t} for b, t in ((4, 9.0), (1024, 3.0), (2048, 7.0), (4096, 50.0))]
    return {
        "allreduce": {"world_size": 2, "ref_bytes": 64 << 20, "memcpy": {"cpu": {"bytes_per_s": 12.346e9}},
                      key: {"gloo": {"status": "ok", "ref_busbw_GBps": 1.234, "busbw_fraction_of_memcpy": 0.1,
                                     "rows": rows},
                            "nccl": {"status": "skipped", "reason": "no CUDA device visible"},
                            "horovod": {"status": "ok", "ref_busbw_GBps": 2.0, "busbw_fraction_of_memcpy": 0.162,
                                        "rows": rows}}},
        "overlap": {"batch_per_rank": 64, "repeats": 6, "steps": 50, "engines": {
            "ddp": {"status": "ok", "models": {"mlp": {"t_sync_ms": 22.5, "t_nosync_ms": 13.0, "not_hidden_ms": 9.5,
                                                       "t_comm_alone_ms": 6.25, "grad_bytes": 7454760}}},
            "horovod": {"status": "skipped", "reason": "Horovod is not installed"}}}}


def test_comm_tables_list_each_library_and_engine_with_skipped_ones_and_old_files():
    text = ft.comm(_comm_result())
    assert text == ft.comm(_comm_result(key="engines"))  # files recorded before 0.2 say "engines"
    lines = text.splitlines()
    assert lines[0] == ("| allreduce, 2 ranks, float32 | busbw at 64 MiB | fraction of memcpy (12.35 GB/s) "
                        "| small messages (≤ 1 KiB) |")
    assert lines[2] == "| gloo | 1.23 GB/s | 0.100 | 6.0 µs |"  # median over the sizes up to 1 KiB
    assert lines[3] == "| nccl | skipped: no CUDA device visible | | |"
    assert lines[4] == "| horovod (MPI) | 2.00 GB/s | 0.162 | 6.0 µs (its 1 ms cycle time) |"
    assert "| ddp, MLP | 22.50 | 13.00 | 9.50 | 6.25 |" in lines
    assert "| horovod | skipped: Horovod is not installed | | | |" in lines
    assert text.endswith("\n\n(`ddtrain-bench overlap`: medians of 6 ABBA pairs of 50-step blocks; \"without\" "
                         "runs the same step\ninside no_sync.)")


def _point(bs, seed, status="ok", steps=None, time=None, acc=0.9, lr=0.1, sps=1000.0, noise=100.0):
    return {"batch_size": bs, "seed": seed, "lr": lr, "status": status, "samples_per_s": sps,
            "steps_to_target": steps, "time_to_target_s": time, "best_val_accuracy": acc, "test_accuracy": acc,
            "noise_scale": noise}


def test_sweep_table_marks_the_sweet_spot_and_says_why_points_have_no_figures():
    rows = [_point(32, 0, steps=100, time=4.0), _point(32, 1, steps=120, time=4.2),
            _point(64, 0, steps=60, time=2.0), _point(64, 1, status="target_not_reached", acc=0.8),
            _point(128, 0, steps=40, time=1.5), _point(128, 1, steps=44, time=1.7),
            _point(256, 0, status="target_not_reached", acc=0.3),
            _point(512, 0, status="oom", acc=None, sps=None, noise=None)]
    lines = ft.sweep(rows).splitlines()
    assert lines[0] == ("| batch | lr | samples/s | steps to target | time to target | best val acc | test acc "
                        "| B_simple |")
    assert lines[2] == "| 32 | 0.1 | 1,000 | 110 | 4.1 s | 90.00% | 90.00% | 100 |"
    assert lines[3] == "| 64 | 0.1 | 1,000 | 60 (1/2 seeds) | 2.0 s (1/2 seeds) | 85.00% | 85.00% | 100 |"
    assert lines[4].startswith("| **128** (sweet spot) | 0.1 | 1,000 | 42 | 1.6 s |")
    assert lines[5] == "| 256 | 0.1 | 1,000 | not reached | | 30.00% | 30.00% | 100 |"
    assert lines[6] == "| 512 | 0.1 | — | oom | | — | — | — |"


def test_gpu_table_gives_mfu_against_the_peak_it_was_taken_from():
    run = {"model": "resnet50", "dataset": "synthetic", "shape": [3, 224, 224], "global_batch_size": 256,
           "precision": "bf16", "channels_last": True, "flops_per_sample": 24e9}
    result = {"throughput": [
        {**run, "compile": False, "ddtrain_samples_per_s": 4000.0, "hand_samples_per_s": 4010.0, "ratio": 0.9981,
         "ddtrain_mfu": 4000 * 24e9 / 989e12},
        {**run, "compile": True, "ddtrain_samples_per_s": 6000.0, "hand_samples_per_s": 5990.0, "ratio": 1.0017,
         "ddtrain_mfu": 6000 * 24e9 / 989e12}]}
    lines = ft.gpu_check(result).splitlines()
    assert lines[0] == ("| ResNet-50, synthetic 3×224×224, batch 256, bf16, channels_last | ddtrain "
                        "| hand-written loop | ratio | MFU (of 989 TFLOP/s bf16) |")
    assert lines[2] == "| eager | 4,000 img/s | 4,010 img/s | 0.998 | 9.7% |"
    assert lines[3] == "| torch.compile | 6,000 img/s | 5,990 img/s | 1.002 | 14.6% |"
    for t in result["throughput"]:  # a GPU missing from ddtrain/hardware.py: FLOP/s without MFU
        t["ddtrain_mfu"] = None
    assert ft.gpu_check(result).splitlines()[2].endswith("| 0.998 | — |")


def test_jpeg_folder_table_gives_its_ratio_to_synthetic_data():
    result = {"gpu": "NVIDIA H100 80GB HBM3", "image_folder": {
        "model": "resnet50", "global_batch_size": 256, "precision": "bf16", "channels_last": True, "jpegs": 10240,
        "workers": 14, "synthetic_samples_per_s": 4000.0, "jpeg_samples_per_s": 3000.0, "jpeg_over_synthetic": 0.75}}
    lines = ft.image_folder_gpu(result).splitlines()
    assert lines[0] == ("| ResNet-50, batch 256, bf16, channels_last, one NVIDIA H100 80GB HBM3 | training throughput "
                        "| of synthetic |")
    assert lines[3] == ("| 10,240 generated JPEGs, random-resized-crop 224 + flip, 14 DataLoader workers "
                        "(dataset=image_folder) | 3,000 img/s | **0.75** |")
    assert ft.image_folder_gpu_quotes(result) == ["0.75 of the synthetic figure"]

def test_mnist1d_table_gives_mean_min_and_each_seed():
    rows = [{"model": "cnn1d", "ranks": 2, "seeds": [0, 1], "test_accuracy": [0.946, 0.953], "mean": 0.9498,
             "min": 0.946, "published": 0.94}]
    lines = ft.mnist1d_accuracy(rows).splitlines()
    assert "over seeds 0, 1 |" in lines[0]
    assert lines[2] == "| cnn1d (default) | 2 | **94.98%** (94.60%) | 94.6, 95.3 | 94% |"
    assert ft.mnist1d_accuracy_quotes(rows) == ["seeds 0, 1, measured with"]


def test_inference_table_and_the_speedups_the_prose_quotes():
    def row(runtime, b, p50, p99, rounds):
        return {"runtime": runtime, "batch_size": b, "latency_ms_p50": p50, "latency_ms_p99": p99,
                "samples_per_s": 1000 * b / p50, "p50_per_round_ms": rounds}
    result = {"load_average_before": [9.2, 9, 9], "load_average_after": [11.4, 11, 11], "cores": 2, "rows": [
        row("eager", 1, 200.0, 250.0, [300.0, 100.0]), row("onnxruntime", 1, 100.0, 120.0, [100.0, 100.0]),
        row("eager", 32, 6400.0, 8000.0, [6400.0, 6400.0]), row("onnxruntime", 32, 1600.0, 2000.0, [3200.0, 1600.0])]}
    lines = ft.inference(result).splitlines()
    assert lines[0] == ("| batch | eager p50 / p99 ms | eager samples/s | onnxruntime p50 / p99 ms "
                        "| onnxruntime samples/s |")
    assert lines[2] == "| 1 | 200.0 / 250.0 | 5.0 | 100.0 / 120.0 | 10.0 |"
    assert lines[3] == "| 32 | 6,400 / 8,000 | 5.0 | 1,600 / 2,000 | 20.0 |"
    # eager / onnxruntime per round: 3, 1, 2, 4 -> 1.0–4.0×, median 2.5×; round p50s differ by up to 3×
    quotes = ft.inference_quotes({**result, "rows": [r for r in result["rows"]] + [
        row("compile", 1, 150.0, 160.0, [150.0, 100.0]), row("compile", 32, 3200.0, 3300.0, [3200.0, 3200.0])]})
    assert quotes[:3] == ["load average 9–11 on 2 cores", "differ by up to 3.0×",
                          "its p50 is 1.0–4.0× faster than eager (median 2.5×)"]
    assert quotes[3] == "compiled (with freezing) 1.0–2.0× (median 2.0×)"
    assert quotes[4] == "100 ms at batch 1 to 1.6 s at 32"


def test_disk_data_table_gives_each_ratio_against_its_target():
    pair = {"median": {}, "ratio_median": 1.5, "ratio_min": 1.1, "ratio_max": 2.0}
    result = {"train_lenet5_2_ranks": {"date": "2026-01-02", "cpus": 2, "load_avg_at_start": 3.0, "workers": 1,
                                       "repeats": 3, "global_batch": 128, "median": {"disk": 900.0, "memory": 1000.0},
                                       "ratio_median": 0.9, "ratio_min": 0.85, "ratio_max": 0.95},
              "loader_2_workers": {"load_avg_at_start": 5.0, "workers": 2, "batch": 128, "repeats": 6,
                                   "torchvision": ["0.29.1"],
                                   "ddtrain_vs_tv-float": {**pair, "median": {"ddtrain": 3000.0, "tv-float": 2000.0}}}}
    table = ft.disk_data(result)
    assert "| 900 / 1,000 samples/s | **0.90** | 0.85–0.95 | ≥ 0.8 |" in table
    assert "| 3,000 / 2,000 images/s | **1.50** | 1.10–2.00 | ≥ 1 |" in table
    assert "uint8" not in table  # a pair that was not recorded has no row
    assert "3 or 6 ABBA pairs" in table and "load average 3.0–5.0" in table
