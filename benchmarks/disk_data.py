"""Data read from disk against data in memory, and ddtrain's loader against torchvision's, on the same image files.

Writes a folder of 28x28 grayscale PNGs (digit-like strokes, about MNIST's file size) and the same
pixels as MNIST IDX files, then, in ABBA order (repeat 0: A, B; repeat 1: B, A; ...):

  train   LeNet-5, 2 ranks (mpirun), steady-state samples/s of ddtrain-train with dataset=image_folder
          (PNGs decoded by DataLoader workers) against dataset=mnist (the same pixels in memory);
          target: disk / memory >= 0.8.
  loader  the loader alone, one process, the same files and workers: ddtrain's (sampler, workers
          decoding whole batches) against torchvision's ImageFolder + DataLoader, both delivering
          normalised floats (ToTensor + Normalize; ddtrain's CPU path) and both delivering uint8 pixels
          (PILToTensor; what ddtrain's workers ship on a GPU run); images/s; target: ddtrain >= torchvision.
          Needs a Python with torchvision (--python; PyPI's torchvision does not import beside this
          machine's torch 2.13 wheel, so a throwaway venv: python3 -m venv /tmp/tv &&
          /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1 hydra-core pillow), which
          imports ddtrain from this checkout.

    .venv/bin/python benchmarks/disk_data.py train --repeats 3
    .venv/bin/python benchmarks/disk_data.py loader --python /tmp/tv/bin/python --repeats 3
Both append their table to results/disk-data-cpu.json.

    python benchmarks/disk_data.py jpegs --out DIR --images 10240 --size 256
writes an ImageNet-like folder of generated JPEGs (sides about --size, 3 channels) for
launch/gpu-check.sh's ResNet-50 from-disk figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent
RESULTS = REPO / "results" / "disk-data-cpu.json"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def digit(label: int, index: int) -> np.ndarray:
    """A 28x28 uint8 image of strokes that depend on the class: PNGs of about MNIST's size and entropy."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(100_003 * label + index)
    img = Image.new("L", (28, 28), 0)
    draw = ImageDraw.Draw(img)
    cx, cy = 14 + rng.normal(0, 1.5), 14 + rng.normal(0, 1.5)
    for k in range(2 + label % 3):
        angle = (label * 0.6 + k * 1.3) + rng.normal(0, 0.15)
        r = 7 + rng.normal(0, 1)
        x0, y0 = cx - r * np.cos(angle), cy - r * np.sin(angle)
        draw.line([(x0, y0), (cx + r * np.cos(angle + label), cy + r * np.sin(angle + label))], fill=255,
                  width=2 + label % 2)
    return np.asarray(img)


def write_data(root: Path, n_train: int, n_test: int) -> None:
    """root/images/{train,val}/<class>/<i>.png and root/idx/*-ubyte with the same pixels and labels."""
    from PIL import Image

    if (root / "done").exists():
        return
    sets = {}
    for split, n in (("train", n_train), ("val", n_test)):
        labels = np.arange(n) % 10
        pixels = np.stack([digit(int(c), i) for i, c in enumerate(labels)])
        sets[split] = (pixels, labels)
        for i, (p, c) in enumerate(zip(pixels, labels)):
            folder = root / "images" / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(p).save(folder / f"{i:06d}.png")
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for split, prefix in (("train", "train"), ("val", "t10k")):
        pixels, labels = sets[split]
        (root / "idx" / f"{prefix}-images-idx3-ubyte").write_bytes(
            bytes([0, 0, 8, 3]) + np.asarray(pixels.shape, ">u4").tobytes() + pixels.tobytes())
        (root / "idx" / f"{prefix}-labels-idx1-ubyte").write_bytes(
            bytes([0, 0, 8, 1]) + np.asarray([len(labels)], ">u4").tobytes() + labels.astype(np.uint8).tobytes())
    (root / "done").write_text("")


def _jpeg(job) -> None:
    """One smooth random RGB image (a low-resolution field upscaled, plus grain), saved as a JPEG."""
    from PIL import Image

    path, seed, size = job
    rng = np.random.default_rng(seed)
    w, h = (int(size * rng.uniform(0.8, 1.25)) for _ in range(2))
    field = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.clip(np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3)), 0, 255)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)


def write_jpegs(out: Path, images: int, size: int, classes: int = 100) -> None:
    """out/{train,val}/<class>/<i>.JPEG: `images` training and images/10 validation JPEGs, in parallel."""
    from multiprocessing import Pool

    classes = min(classes, images)  # every class has training images (validation classes must be among them)
    jobs = []
    for split, n in (("train", images), ("val", max(images // 10, classes))):
        for i in range(n):
            folder = out / split / f"n{i % classes:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((folder / f"{i:07d}.JPEG", i + (10**8 if split == "val" else 0), size))
    with Pool() as pool:
        pool.map(_jpeg, jobs, chunksize=64)
    print(f"{len(jobs)} JPEGs written under {out}")


def train_run(kind: str, root: Path, steps: int, warmup: int, workers: int, run_dir: Path) -> float:
    """Steady-state samples/s of one 2-rank ddtrain-train run on the disk or in-memory copy of the data."""
    data = (["dataset=image_folder", f"dataset.root={root / 'images'}", "dataset.channels=1",
             f"dataset.mean=[{MNIST_MEAN}]", f"dataset.std=[{MNIST_STD}]", f"dataset.num_workers={workers}"]
            if kind == "disk" else ["dataset=mnist", f"dataset.root={root / 'idx'}", "dataset.val_fraction=0"])
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none", str(BIN / "ddtrain-train"),
           *data, "model=lenet5", "train.global_batch_size=128", "train.lr=0.05", "train.lr_scaling=none",
           "schedule=constant", f"train.max_steps={warmup + steps}", f"train.throughput_warmup_steps={warmup}",
           f"train.log_every={warmup + steps}", "train.eval_every=0", "train.evals_per_epoch=1",
           "logging.progress=false", "logging.tensorboard=false", f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise SystemExit(f"{kind} run failed:\n{p.stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())["samples_per_s"]


def loader_run(kind: str, root: Path, batches: int, batch: int, workers: int) -> float:
    """Images/s of one loader alone over the training folder (run in the torchvision Python)."""
    import torch

    folder = root / "images" / "train"
    if kind.startswith("ddtrain"):
        from ddtrain.batching import BatchPlan
        from ddtrain.compose import compose
        from ddtrain.data import load_data

        cfg = compose("train", ["dataset=image_folder", f"dataset.root={root / 'images'}", "dataset.channels=1",
                                f"dataset.mean=[{MNIST_MEAN}]", f"dataset.std=[{MNIST_STD}]",
                                f"dataset.num_workers={workers}"]).dataset
        data = load_data(cfg, torch.device("cpu"))
        if kind == "ddtrain-uint8":  # what the workers ship on a GPU run: uint8, normalised on the device later
            data.in_workers = False
        loaded = data.train_batches(0, BatchPlan(batch, 1, 1), 0)
        if kind == "ddtrain-uint8":
            loaded._placed = lambda b: b
        it = data.feed(loaded, 0, batches + 5)
    else:
        import torchvision
        from torchvision import transforms as T

        tf = (T.Compose([T.Grayscale(1), T.ToTensor(), T.Normalize([MNIST_MEAN], [MNIST_STD])]) if kind == "tv-float"
              else T.Compose([T.Grayscale(1), T.PILToTensor()]))
        ds = torchvision.datasets.ImageFolder(str(folder), transform=tf)
        sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=(batches + 5) * batch,
                                                 generator=torch.Generator().manual_seed(0))
        it = iter(torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                              prefetch_factor=2 if workers else None))
    for _ in range(5):  # workers started, first batches out of the way
        next(it)
    t0 = time.perf_counter()
    n = sum(len(next(it)[1]) for _ in range(batches))
    return n / (time.perf_counter() - t0)


def abba(kinds: tuple[str, str], repeats: int, measure) -> dict:
    """Run the two kinds alternately (A B, B A, ...); medians, per-pair ratios A/B and their spread."""
    figures: dict[str, list[float]] = {k: [] for k in kinds}
    ratios = []
    for r in range(repeats):
        order = kinds if r % 2 == 0 else kinds[::-1]
        pair = {k: measure(k) for k in order}
        for k in kinds:
            figures[k].append(pair[k])
        ratios.append(pair[kinds[0]] / pair[kinds[1]])
        print(f"repeat {r}: " + ", ".join(f"{k} {pair[k]:,.0f}/s" for k in order) + f"; ratio {ratios[-1]:.3f}",
              flush=True)
    return {"runs": figures, "median": {k: statistics.median(v) for k, v in figures.items()},
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def record(section: str, result: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved[section] = result
    RESULTS.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"written to {RESULTS} [{section}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["train", "loader", "loader-worker", "jpegs"])
    ap.add_argument("--out", help="jpegs: the folder to write")
    ap.add_argument("--images", type=int, default=10240, help="jpegs: training images")
    ap.add_argument("--size", type=int, default=256, help="jpegs: typical side in pixels")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "ddtrain-disk-bench"))
    ap.add_argument("--train-images", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers (per rank for train)")
    ap.add_argument("--steps", type=int, default=300, help="train: timed steps after 30 warm-up steps")
    ap.add_argument("--batches", type=int, default=150, help="loader: timed batches of 128")
    ap.add_argument("--python", default=sys.executable, help="loader: a Python with torchvision")
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.what == "jpegs":
        write_jpegs(Path(a.out), a.images, a.size)
        return
    root = Path(a.data)
    write_data(root, a.train_images, a.train_images // 10)
    if a.what == "loader-worker":  # one measurement in the torchvision Python
        print(json.dumps(loader_run(a.kind, root, a.batches, 128, a.workers)))
        return
    meta = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0],
            "images": a.train_images, "image": "28x28 grayscale PNG", "workers": a.workers, "repeats": a.repeats}
    if a.what == "train":
        with tempfile.TemporaryDirectory() as tmp:
            counter = iter(range(10**6))
            res = abba(("disk", "memory"), a.repeats,
                       lambda k: train_run(k, root, a.steps, 30, a.workers, Path(tmp) / f"{k}{next(counter)}"))
        record("train_lenet5_2_ranks", {**meta, "steps": a.steps, "global_batch": 128, **res})
    else:
        env = dict(os.environ, PYTHONPATH=str(REPO))

        def measure(kind):
            p = subprocess.run([a.python, __file__, "loader-worker", "--kind", kind, "--data", a.data, "--workers",
                                str(a.workers), "--batches", str(a.batches), "--train-images", str(a.train_images)],
                               env=env, capture_output=True, text=True, timeout=900)
            if p.returncode:
                raise SystemExit(f"{kind} failed:\n{p.stderr[-3000:]}")
            return float(p.stdout.strip().splitlines()[-1])

        versions = subprocess.run([a.python, "-c", "import torch, torchvision; print(torch.__version__, "
                                   "torchvision.__version__)"], capture_output=True, text=True).stdout.split()
        out = {**meta, "batch": 128, "batches": a.batches, "torch": versions[:1], "torchvision": versions[1:]}
        for ours, baseline in (("ddtrain", "tv-float"), ("ddtrain-uint8", "tv-uint8")):
            out[f"{ours}_vs_{baseline}"] = abba((ours, baseline), a.repeats, measure)
        record(f"loader_{a.workers}_workers", out)


if __name__ == "__main__":
    main()
