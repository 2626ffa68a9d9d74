"""The README's figure tables: one formatter per recorded result, loaded JSON in, markdown out.

Every function here is pure (no files, no clock), so tests feed it small fabricated results. The
labels (model, engine and library names as the README spells them) live here; every number comes
from the result. benchmarks/figures.py maps each README block to a results file and a formatter.

A `*_quotes` function returns phrases that the README's hand-written prose quotes from the same
result (e.g. "critical batch of **98**"); figures.py checks that each still appears, so prose
cannot keep a number that a new recording changed.
"""

from __future__ import annotations

import statistics
import textwrap

# README labels; the JSON files hold the short names
CORE_MODELS = {"mlp": "MLP 784-1024-1024-10", "lenet5": "LeNet-5"}  # the Core benchmark models
SHORT_MODELS = {"mlp": "MLP", "lenet5": "LeNet-5", "resnet50": "ResNet-50"}
MNIST1D_MODELS = {"cnn1d": "cnn1d (default)", "mlp": "mlp (100-100)"}
ENGINES = {"ddp": "ddp (gloo)", "horovod": "horovod (MPI)", "mpi": "mpi"}
LIBRARIES = {"gloo": "gloo", "nccl": "nccl", "mpi": "mpi (mpi4py)", "horovod": "horovod (MPI)"}
# Horovod's small-message time is its background thread's cycle (HOROVOD_CYCLE_TIME, 1 ms by default)
LIBRARY_NOTES = {"horovod": " (its 1 ms cycle time)"}


# --- helpers -------------------------------------------------------------------------------------------------

def markdown_table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A markdown table; align has one letter per column, l or r."""
    rule = {"l": "---", "r": "---:"}

    def line(cells):
        return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"

    return "\n".join([line(header), line(rule[a] for a in align), *map(line, rows)])


def paragraph(text: str) -> str:
    """A sentence under a table, wrapped like the README's prose."""
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)


def _mean(values) -> float | None:
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _same(values, what: str):
    """The one value all rows share (the table header states it once)."""
    distinct = {v if not isinstance(v, list) else tuple(v) for v in values}
    if len(distinct) != 1:
        raise ValueError(f"rows disagree on {what}: {sorted(map(str, distinct))}")
    return next(iter(values))


# --- MNIST-1D accuracy (benchmarks/mnist1d_accuracy.py) -------------------------------------------------------

def mnist1d_accuracy(rows: list[dict]) -> str:
    """Test accuracy per model and rank count: mean (min) over seeds, each seed, the published figure."""
    seeds = ", ".join(str(s) for s in _same([r["seeds"] for r in rows], "seeds"))
    header = ["model", "ranks", f"test accuracy, mean (min) over seeds {seeds}", "per seed",
              "published (Greydanus 2020)"]
    body = [[MNIST1D_MODELS.get(r["model"], r["model"]), str(r["ranks"]),
             f"**{_pct(r['mean'])}** ({_pct(r['min'])})", ", ".join(f"{100 * a:.1f}" for a in r["test_accuracy"]),
             _pct(r["published"], 0)] for r in rows]
    return markdown_table(header, "lllll", body)


def mnist1d_accuracy_quotes(rows: list[dict]) -> list[str]:
    """The seeds named in the sentence before the table."""
    return [f"seeds {', '.join(str(s) for s in rows[0]['seeds'])}, measured with"]


# --- framework overhead (benchmarks/overhead.py) --------------------------------------------------------------

def overhead(result: dict) -> str:
    """ddtrain against the hand-written loop per case: throughput ratio, and CPU time per step when recorded.

    Files recorded before overhead.py measured CPU time have no cpu_* fields; their table has no CPU columns.
    """
    rows = result["rows"]
    with_cpu = all("cpu_ratio" in r for r in rows)
    with_cost = all("cost_ratio" in r for r in rows)
    repeats = _same([r["repeats"] for r in rows], "repeats")
    header = ["case", "ranks", "ddtrain samples/s", "hand-written samples/s",
              f"ratio (median of {repeats} ABBA pairs)", "spread of pairs"]
    align = "lrrrrl"
    if with_cpu:
        header += ["ddtrain CPU ms/step", "hand-written CPU ms/step", "CPU-time ratio (hand / ddtrain)",
                   "spread of pairs"]
        align += "rrrl"
    if with_cost:
        header += ["ddtrain's extra ms/step (tiny model)", "per-step-cost ratio"]
        align += "rr"
    body = []
    for r in rows:
        cells = [f"{CORE_MODELS.get(r['case'], r['case'])}, batch {r['global_batch_size']}", str(r["world_size"]),
                 f"{r['ddtrain_samples_per_s']:,.0f}", f"{r['hand_samples_per_s']:,.0f}", f"**{r['ratio']:.3f}**",
                 f"{r['ratio_min']:.3f}–{r['ratio_max']:.3f}"]
        if with_cpu:
            cells += [f"{r['ddtrain_cpu_ms_per_step']:.2f}", f"{r['hand_cpu_ms_per_step']:.2f}",
                      f"**{r['cpu_ratio']:.3f}**", f"{r['cpu_ratio_min']:.3f}–{r['cpu_ratio_max']:.3f}"]
        if with_cost:
            cells += [f"{r['extra_ms_per_step']:.3f} ({r['extra_ms_min']:.3f}–{r['extra_ms_max']:.3f})",
                      f"**{r['cost_ratio']:.4f}**"]
        body.append(cells)
    loads = [p["load_average"] for r in rows for p in r.get("pairs", []) if "load_average" in p]
    loads = loads or [result["load_average_at_start"]]
    worst = f"worst median ratio {result['worst_ratio']:.3f}"
    if with_cpu:
        worst += f", worst median CPU-time ratio {result['worst_cpu_ratio']:.3f}"
    if with_cost:
        worst += f", worst per-step-cost ratio {result['worst_cost_ratio']:.4f}"
    caption = (f"Measured on the {result['cpu_count']}-core CPU machine with load average "
               f"{min(loads):.1f}–{max(loads):.1f} from other work; {worst} (target ≥ {result['target']}).")
    return markdown_table(header, align, body) + "\n\n" + paragraph(caption)


# --- engines side by side (benchmarks/engines.py) -------------------------------------------------------------

def _mpi_step_ratios(result: dict) -> dict[tuple[str, str], float]:
    """{(model, engine): the mpi engine's step time / that engine's} for the engines other than mpi."""
    return {(model, e): r["summary"]["mpi"]["step_time_ms"] / r["summary"][e]["step_time_ms"]
            for model, r in result["models"].items() for e in ENGINES if e != "mpi"}


def engines(result: dict) -> str:
    """Each engine's median samples/s and step time per model, and the mpi engine's step time against each."""
    header = [f"Core benchmark model (global batch {result['global_batch_size']})", "engine",
              f"samples/s, median of {result['repeats']}", "step time (ms)", "mpi engine's step time / this one"]
    ratios = _mpi_step_ratios(result)
    body = [[CORE_MODELS.get(model, model), ENGINES[e], f"{r['summary'][e]['samples_per_s']:,.0f}",
             f"{r['summary'][e]['step_time_ms']:.2f}", "1" if e == "mpi" else f"**{ratios[model, e]:.3f}**"]
            for model, r in result["models"].items() for e in ENGINES]
    return markdown_table(header, "llrrr", body)


def engines_quotes(result: dict) -> list[str]:
    """How much faster the mpi engine is, as the prose after the table says it."""
    ratios = _mpi_step_ratios(result).values()
    return [f"it is {round(100 * (1 - max(ratios)))}–{round(100 * (1 - min(ratios)))}% faster here"]


# --- allreduce busbw and sync/no-sync step times (benchmarks/comm.py) ------------------------------------------

def _libraries(allreduce: dict) -> dict:
    return allreduce.get("libraries", allreduce.get("engines", {}))  # "engines" in files recorded before 0.2


def allreduce_table(ar: dict) -> str:
    """busbw at the reference size per library, against memcpy, and the small-message time."""
    memcpy = ", ".join(f"{m['bytes_per_s'] / 1e9:.2f} GB/s" for m in ar["memcpy"].values())
    header = [f"allreduce, {ar['world_size']} ranks, float32", f"busbw at {ar['ref_bytes'] / 2**20:g} MiB",
              f"fraction of memcpy ({memcpy})", "small messages (≤ 1 KiB)"]
    body = []
    for name, lib in _libraries(ar).items():
        label = LIBRARIES.get(name, name)
        if lib["status"] != "ok":
            body.append([label, f"skipped: {lib['reason']}", "", ""])
            continue
        small = statistics.median(r["time_us"] for r in lib["rows"] if r["bytes"] <= 1024)
        body.append([label, f"{lib['ref_busbw_GBps']:.2f} GB/s", f"{lib['busbw_fraction_of_memcpy']:.3f}",
                     f"{small:,.1f} µs{LIBRARY_NOTES.get(name, '')}"])
    return markdown_table(header, "lrrr", body)


def overlap_table(ov: dict) -> str:
    """Step time with and without gradient synchronisation per engine and model, and the allreduce alone."""
    header = [f"step time, batch {ov['batch_per_rank']} per rank", "with sync (ms)", "without (ms)",
              "sync costs (ms)", "allreduce alone (ms)"]
    body = []
    for engine, e in ov["engines"].items():
        if e["status"] != "ok":
            body.append([engine, f"skipped: {e['reason']}", "", "", ""])
            continue
        for model, m in e["models"].items():
            body.append([f"{engine}, {SHORT_MODELS.get(model, model)}", f"{m['t_sync_ms']:.2f}",
                         f"{m['t_nosync_ms']:.2f}", f"{m['not_hidden_ms']:.2f}", f"{m['t_comm_alone_ms']:.2f}"])
    caption = (f"(`ddtrain-bench overlap`: medians of {ov['repeats']} ABBA pairs of {ov['steps']}-step blocks; "
               f"\"without\" runs the same step inside no_sync.)")
    return markdown_table(header, "lrrrr", body) + "\n\n" + paragraph(caption)


def comm(result: dict) -> str:
    """Both tables of a comm.py result (also what `comm.py --tables` prints)."""
    return allreduce_table(result["allreduce"]) + "\n\n" + overlap_table(result["overlap"])


def comm_quotes(result: dict) -> list[str]:
    """The mpi engine's MLP sync cost against its allreduce alone, and the MLP's gradient size."""
    mlp = result["overlap"]["engines"]["mpi"]["models"]["mlp"]
    return [f"{mlp['not_hidden_ms']:.1f} ms against {mlp['t_comm_alone_ms']:.1f} ms for its allreduce alone",
            f"{mlp['grad_bytes'] / 1e6:.1f} MB of gradients"]


# --- batch-size sweep (ddtrain-sweep's sweep.json) -------------------------------------------------------------

def _by_batch(rows: list[dict]) -> dict[int, list[dict]]:
    groups: dict = {}
    for r in rows:
        groups.setdefault(r["batch_size"], []).append(r)
    return dict(sorted(groups.items()))


def _reached(group: list[dict]) -> list[dict]:
    return [r for r in group if r.get("status") == "ok" and r.get("steps_to_target") is not None]


def sweep(rows: list[dict]) -> str:
    """One row per batch size, means over seeds, the sweet spot marked as ddtrain-sweep's report.md marks it."""
    from ddtrain.sweep.report import sweet_spot  # the report's own rule, not a copy of it

    spot = sweet_spot(rows)
    header = ["batch", "lr", "samples/s", "steps to target", "time to target", "best val acc", "test acc",
              "B_simple"]
    body = []
    for bs, group in _by_batch(rows).items():
        reached = _reached(group)
        partial = "" if len(reached) in (0, len(group)) else f" ({len(reached)}/{len(group)} seeds)"
        if reached:
            steps = f"{_mean(r['steps_to_target'] for r in reached):.0f}{partial}"
            time = f"{_mean(r['time_to_target_s'] for r in reached):.1f} s{partial}"
        else:  # "not reached", or why the point has no figures (oom, diverged)
            statuses = sorted({str(r.get("status")) for r in group})
            steps, time = ("not reached" if statuses == ["target_not_reached"] else "/".join(statuses)), ""
        samples = _mean(r.get("samples_per_s") for r in group)
        noise = _mean(r.get("noise_scale") for r in group)
        body.append([f"**{bs}** (sweet spot)" if spot and bs == spot["batch_size"] else str(bs),
                     "/".join(f"{lr:g}" for lr in sorted({r["lr"] for r in group})),
                     "—" if samples is None else f"{samples:,.0f}", steps, time,
                     _pct(_mean(r.get("best_val_accuracy") for r in group)),
                     _pct(_mean(r.get("test_accuracy") for r in group)), "—" if noise is None else f"{noise:.0f}"])
    return markdown_table(header, "rrrrrrrr", body)


def sweep_quotes(rows: list[dict]) -> list[str]:
    """The prose after the sweep table: steps to target up to the sweet spot and just past it, the accuracy
    there, the range of B_simple, the predicted and measured critical batch and their ratio."""
    from ddtrain.sweep.report import measured_knee, predicted_knee, sweet_spot

    groups = _by_batch(rows)
    spot = sweet_spot(rows)["batch_size"]
    steps = {bs: _mean(r["steps_to_target"] for r in _reached(g)) for bs, g in groups.items() if _reached(g)}
    after = min(bs for bs in steps if bs > spot)
    noise = [_mean(r["noise_scale"] for r in groups[bs]) for bs in steps]
    pred, meas = predicted_knee(rows), measured_knee(rows)
    return [f"({' → '.join(f'{s:.0f}' for bs, s in steps.items() if bs <= spot)})",
            f"({steps[after]:.0f} at {after})",
            f"{100 * _mean(r['best_val_accuracy'] for r in groups[after]):.0f}% at {after}",
            f"{min(noise):.0f}–{max(noise):.0f}",
            f"critical batch of **{pred:.0f}**", f"knee fitted to steps to target is **{meas:.0f}**",
            f"a ratio of {meas / pred:.1f}"]


# --- the GPU check (launch/gpu-check.sh) -----------------------------------------------------------------------

def gpu_check(result: dict) -> str:
    """ddtrain against the hand-written loop on one GPU, eager and compiled, with MFU."""
    runs = result["throughput"]
    first = runs[0]
    shape = "×".join(str(d) for d in first["shape"])
    setting = (f"{SHORT_MODELS.get(first['model'], first['model'])}, {first['dataset']} {shape}, batch "
               f"{first['global_batch_size']}, {first['precision']}")
    setting += ", channels_last" if first["channels_last"] else ""
    unit = "img/s" if len(first["shape"]) == 3 else "samples/s"
    mfu = "MFU"
    if first.get("ddtrain_mfu"):  # the peak the MFU was taken against: achieved FLOP/s / MFU
        peak = first["ddtrain_samples_per_s"] * first["flops_per_sample"] / first["ddtrain_mfu"]
        mfu = f"MFU (of {peak / 1e12:.0f} TFLOP/s {first['precision']})"
    body = [["torch.compile" if t["compile"] else "eager", f"{t['ddtrain_samples_per_s']:,.0f} {unit}",
             f"{t['hand_samples_per_s']:,.0f} {unit}", f"{t['ratio']:.3f}",
             _pct(t.get("ddtrain_mfu"), 1)] for t in runs]
    return markdown_table([setting, "ddtrain", "hand-written loop", "ratio", mfu], "lrrrr", body)


def gpu_check_quotes(result: dict) -> list[str]:
    """The prose around the GPU table: versions and date, FLOPs per image, the CUDA tests, the sweep's points,
    and the eager/compiled ratios quoted in the overhead section."""
    tests = result["cuda_tests"]
    passed = tests["tests"] - tests["failures"] - tests["errors"] - tests["skipped"]
    ratio = {t["compile"]: t["ratio"] for t in result["throughput"]}
    quotes = [f"one {result['gpu']}", f"torch {result['torch']}, {result['date']}",
              f"{result['throughput'][0]['flops_per_sample'] / 1e9:.1f} GFLOP per image",
              f"passed ({passed} of {tests['tests']})", f"({ratio[False]:.3f} eager, {ratio[True]:.3f} compiled)"]
    for r in result["sweep"]:
        if r["status"] == "oom":
            quotes.append(f"batch {r['batch_size']} as `oom`")
        else:
            quotes += [f"batch {r['batch_size']} at {r['samples_per_s']:,.0f} img/s",
                       f"micro-batches of {r['per_rank_batch_size']}"]
    return quotes



def image_folder_gpu(result: dict) -> str:
    """gpu-check.sh step 4: training from a JPEG folder against synthetic data of the same shape, same run."""
    f = result["image_folder"]
    setting = (f"{SHORT_MODELS.get(f['model'], f['model'])}, batch {f['global_batch_size']}, {f['precision']}"
               + (", channels_last" if f["channels_last"] else "") + f", one {result['gpu']}")
    body = [["synthetic 3×224×224 tensors (dataset=synthetic)", f"{f['synthetic_samples_per_s']:,.0f} img/s", "1"],
            [f"{f['jpegs']:,} generated JPEGs, random-resized-crop 224 + flip, {f['workers']} DataLoader workers "
             "(dataset=image_folder)", f"{f['jpeg_samples_per_s']:,.0f} img/s", f"**{f['jpeg_over_synthetic']:.2f}**"]]
    return markdown_table([setting, "training throughput", "of synthetic"], "lrr", body)


def image_folder_gpu_quotes(result: dict) -> list[str]:
    """The prose after the JPEG-folder table: the ratio it quotes."""
    return [f"{result['image_folder']['jpeg_over_synthetic']:.2f} of the synthetic figure"]

# --- inference batch size (benchmarks/inference.py, ddtrain-bench inference) ----------------------------------

INFERENCE_RUNTIMES = ("eager", "compile", "onnxruntime")


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.1f}"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def inference(result: dict) -> str:
    """Latency p50 / p99 and samples/s per batch size, one column pair per runtime."""
    rows = {(r["runtime"], r["batch_size"]): r for r in result["rows"]}
    runtimes = [rt for rt in INFERENCE_RUNTIMES if any(k[0] == rt for k in rows)]
    header = ["batch"] + [h for rt in runtimes for h in (f"{rt} p50 / p99 ms", f"{rt} samples/s")]
    body = [[str(b)] + [c for rt in runtimes for c in (
        f"{_ms(rows[rt, b]['latency_ms_p50'])} / {_ms(rows[rt, b]['latency_ms_p99'])}",
        _rate(rows[rt, b]["samples_per_s"]))] for b in sorted({k[1] for k in rows})]
    return markdown_table(header, "r" * len(header), body)


def _speedups(result: dict, runtime: str) -> list[float]:
    """Eager's p50 over the runtime's, per batch size and round (the rounds ran in reversed order)."""
    p50 = {(r["runtime"], r["batch_size"]): r["p50_per_round_ms"] for r in result["rows"]}
    return [e / o for (rt, b), eager in p50.items() if rt == "eager"
            for e, o in zip(eager, p50[runtime, b])]


def inference_quotes(result: dict) -> list[str]:
    """The prose after the inference table: load, round spread, speed-ups over eager."""
    def span(xs):
        return f"{min(xs):.1f}–{max(xs):.1f}×", f"(median {statistics.median(xs):.1f}×)"
    spread = max(max(r["p50_per_round_ms"]) / min(r["p50_per_round_ms"]) for r in result["rows"])
    loads = [result["load_average_before"][0], result["load_average_after"][0]]
    ort = {r["batch_size"]: r for r in result["rows"] if r["runtime"] == "onnxruntime"}
    (ort_range, ort_median), (compile_range, compile_median) = (span(_speedups(result, rt))
                                                                 for rt in ("onnxruntime", "compile"))
    return [f"load average {min(loads):.0f}–{max(loads):.0f} on {result['cores']} cores",
            f"differ by up to {spread:.1f}×", f"its p50 is {ort_range} faster than eager {ort_median}",
            f"compiled (with freezing) {compile_range} {compile_median}",
            f"{ort[min(ort)]['latency_ms_p50']:.0f} ms at batch {min(ort)} to "
            f"{ort[max(ort)]['latency_ms_p50'] / 1000:.1f} s at {max(ort)}"]


# --- data from disk (benchmarks/disk_data.py) ------------------------------------------------------------------

LOADER_PAIRS = {"ddtrain_vs_tv-float": "normalised floats (torchvision: ToTensor + Normalize)",
                "ddtrain-uint8_vs_tv-uint8": "uint8 pixels (torchvision: PILToTensor; ddtrain's GPU path)"}


def disk_data(result: dict) -> str:
    """Training from image files against the same pixels in memory, and ddtrain's loader against torchvision's."""
    t = result["train_lenet5_2_ranks"]
    body = [[f"LeNet-5 training, 2 ranks, batch {t['global_batch']}: image folder ({t['workers']} worker per rank) "
             "/ the same pixels in memory (dataset=mnist)",
             f"{t['median']['disk']:,.0f} / {t['median']['memory']:,.0f} samples/s",
             f"**{t['ratio_median']:.2f}**", f"{t['ratio_min']:.2f}–{t['ratio_max']:.2f}", "≥ 0.8"]]
    loads = [t["load_avg_at_start"]]
    for key in sorted(k for k in result if k.startswith("loader_")):
        lo = result[key]
        loads.append(lo["load_avg_at_start"])
        for pair, label in LOADER_PAIRS.items():
            if pair in lo:
                p = lo[pair]
                ours, theirs = pair.split("_vs_")
                body.append([f"loader alone, {lo['workers']} workers, batch {lo['batch']}, {label}: ddtrain / "
                             f"torchvision {lo['torchvision'][0]} ImageFolder",
                             f"{p['median'][ours]:,.0f} / {p['median'][theirs]:,.0f} images/s",
                             f"**{p['ratio_median']:.2f}**", f"{p['ratio_min']:.2f}–{p['ratio_max']:.2f}", "≥ 1"])
    repeats = sorted({t["repeats"], *(result[k]["repeats"] for k in result if k.startswith("loader_"))})
    table = markdown_table(["what (20,000 28x28 grayscale PNGs)", "medians", "ratio (median of ABBA pairs)",
                            "spread of pairs", "target"], "lrrll", body)
    return table + "\n\n" + paragraph(
        f"{' or '.join(map(str, repeats))} ABBA pairs each, {result['train_lenet5_2_ranks']['date']}, on the shared "
        f"{t['cpus']}-core development machine with other engineers' jobs running (load average "
        f"{min(loads):.1f}–{max(loads):.1f} at the starts).")
