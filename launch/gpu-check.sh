#!/usr/bin/env bash
# The prepared GPU check (under 8 minutes on one H100 or H200). Writes one JSON file of results:
#   1. the CUDA-marked tests (tests/e2e/test_cuda.py and the other cuda-marked tests: bf16/channels_last training, fp16 scaler, pinned host feed,
#      fused optimizer, NCCL process-group start-up);
#   2. ResNet-50 synthetic throughput, bf16, channels_last, batch 256, compile off and on, each against the
#      hand-written loop (ddtrain-bench throughput), with MFU from ddtrain/hardware.py;
#   3. a short batch-size sweep whose largest batch runs out of memory and is recorded as such;
#   4. ResNet-50 trained from a folder of generated JPEGs (dataset=image_folder: DataLoader workers decode,
#      random-resized-crop to 224 and flip; bf16, channels_last) in images/s, against ddtrain-train on
#      synthetic data of the same shape in the same run.
# Usage: launch/gpu-check.sh [results.json]     (a relative path is from the repository root; python3 must hold torch)
#   default: results/gpu-check-<GPU>-<date>.json (e.g. results/gpu-check-H200-2026-11-26.json), where the README's
#   recorded figures live; point the gpu-check entry of benchmarks/figures.py at it and run `make figures`.
# GPU_CHECK_MODEL/SHAPE/BATCH/STEPS/SWEEP_SIZES shrink it for a rehearsal on a CPU; GPU_CHECK_JPEGS/JPEG_SIZE/
# CROP/WORKERS/JPEG_STEPS shrink step 4 (e.g. GPU_CHECK_MODEL=lenet5 GPU_CHECK_SHAPE=[3,32,32] GPU_CHECK_CROP=32).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-}  # empty: the default above, named once the GPU is known
PY=${PYTHON:-python3}
MODEL=${GPU_CHECK_MODEL:-resnet50}
SHAPE=${GPU_CHECK_SHAPE:-[3,224,224]}
BATCH=${GPU_CHECK_BATCH:-256}
ITERS=${GPU_CHECK_ITERS:-10}
# ResNet-50 bf16 at 8192 images per micro-batch needs several hundred GB: out of memory on any GPU of today
# (4096, i.e. 2 micro-batches of 2048, still fits an H200's 141 GB)
SWEEP_SIZES=${GPU_CHECK_SWEEP_SIZES:-[256,16384]}
SWEEP_SAMPLES=${GPU_CHECK_SWEEP_SAMPLES:-18432}  # 90% of it for training: at least one batch of the largest size
JPEGS=${GPU_CHECK_JPEGS:-10240}           # training JPEGs written for step 4 (and a tenth as many for validation)
JPEG_SIZE=${GPU_CHECK_JPEG_SIZE:-256}     # their typical side: 224x224-ish images, as ImageNet's after resizing
CROP=${GPU_CHECK_CROP:-224}               # random-resized-crop side (the model's input)
WORKERS=${GPU_CHECK_WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}  # decoding workers: all cores but two
JPEG_STEPS=${GPU_CHECK_JPEG_STEPS:-150}   # timed steps of each step-4 run (after 20 warm-up steps)
work=$(mktemp -d)
export PYTHONUNBUFFERED=1

echo "== 1/4 CUDA tests"
$PY -m pytest -q -m cuda tests --junitxml "$work/cuda.xml" 2>&1 | tee "$work/tests.log"

common=(model="$MODEL" dataset=synthetic "dataset.shape=$SHAPE" "dataset.num_samples=$((BATCH * 10))"
        "dataset.num_test_samples=$BATCH" "train.global_batch_size=$BATCH" train.precision=bf16
        train.channels_last=true)
for compile in false true; do
    echo "== 2/4 throughput, compile=$compile"
    $PY -m ddtrain.bench throughput --warmup 10 --iters "$ITERS" --batches-per-iter 10 \
        --json "$work/throughput-compile-$compile.json" --out-dir "$work/bench-$compile" \
        "${common[@]}" "train.compile=$compile" 2>&1 | grep -v "^step " | tee -a "$work/bench.log"
done

echo "== 3/4 sweep into out-of-memory"
$PY -m ddtrain.sweep "${common[@]}" "dataset.num_samples=$SWEEP_SAMPLES" "sweep.batch_sizes=$SWEEP_SIZES" \
    sweep.budget=steps:20 sweep.seeds=[0] sweep.target=1.0 sweep.auto_accumulate=false logging.progress=false \
    "hydra.run.dir=$work/sweep" 2>&1 | grep -v "^step " | tail -30 | tee "$work/sweep.log"

echo "== 4/4 $MODEL from a JPEG folder ($JPEGS images, $WORKERS workers) against synthetic data"
$PY benchmarks/disk_data.py jpegs --out "$work/jpegs" --images "$JPEGS" --size "$JPEG_SIZE" 2>&1 | tee "$work/jpeg.log"
timed=(model="$MODEL" "train.global_batch_size=$BATCH" train.precision=bf16 train.channels_last=true
       "train.max_steps=$((20 + JPEG_STEPS))" train.throughput_warmup_steps=20 "train.log_every=$((20 + JPEG_STEPS))"
       train.eval_every=1000000 logging.progress=false logging.tensorboard=false)
$PY -m ddtrain.train "${timed[@]}" dataset=synthetic "dataset.shape=[3,$CROP,$CROP]" \
    "dataset.num_samples=$((BATCH * 10))" "dataset.num_test_samples=$BATCH" "hydra.run.dir=$work/from-synthetic" \
    2>&1 | tail -8 | tee -a "$work/jpeg.log"
$PY -m ddtrain.train "${timed[@]}" dataset=image_folder "dataset.root=$work/jpegs" \
    "dataset.augment=[random_resized_crop,hflip]" "dataset.crop_size=$CROP" "dataset.eval_transform=[resize,center_crop]" \
    "dataset.resize_size=$(( CROP * 8 / 7 ))" "dataset.num_workers=$WORKERS" dataset.prefetch_factor=4 \
    "hydra.run.dir=$work/from-jpegs" 2>&1 | tail -8 | tee -a "$work/jpeg.log"

$PY - "$work" "$OUT" "$JPEGS" "$WORKERS" <<'EOF'
import json, pathlib, sys, time, xml.etree.ElementTree as ET
import torch
work = pathlib.Path(sys.argv[1])
res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
# "NVIDIA H100 80GB HBM3" -> results/gpu-check-H100-80GB-HBM3-<date>.json: what and where it was measured
gpu = (res["gpu"] or "cpu").removeprefix("NVIDIA ").replace(" ", "-")
out = pathlib.Path(sys.argv[2] or f"results/gpu-check-{gpu}-{res['date']}.json")
if (work / "cuda.xml").exists():
    suite = ET.parse(work / "cuda.xml").getroot().find("testsuite")
    res["cuda_tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
res["cuda_tests_log"] = (work / "tests.log").read_text()[-3000:]
res["throughput"] = [json.loads(p.read_text()) for p in sorted(work.glob("throughput-*.json"))]
sweep = work / "sweep" / "sweep.json"
res["sweep"] = json.loads(sweep.read_text()) if sweep.exists() else (work / "sweep.log").read_text()[-2000:]
runs = {k: work / f"from-{k}" / "summary.json" for k in ("synthetic", "jpegs")}
if all(p.exists() for p in runs.values()):
    s = {k: json.loads(p.read_text()) for k, p in runs.items()}
    res["image_folder"] = {
        "model": s["jpegs"]["model"], "global_batch_size": s["jpegs"]["global_batch_size"],
        "precision": s["jpegs"]["precision"], "channels_last": s["jpegs"]["channels_last"],
        "input": "generated JPEGs, random-resized-crop + flip, decoded by DataLoader workers",
        "jpegs": int(sys.argv[3]), "workers": int(sys.argv[4]),
        "synthetic_samples_per_s": s["synthetic"]["samples_per_s"], "jpeg_samples_per_s": s["jpegs"]["samples_per_s"],
        "jpeg_over_synthetic": (s["jpegs"]["samples_per_s"] or 0) / (s["synthetic"]["samples_per_s"] or float("nan")),
        "summaries": s}
else:
    res["image_folder"] = (work / "jpeg.log").read_text()[-3000:]
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(res, indent=2, default=str) + "\n")
print(f"results written to {out}")
EOF
