"""MNIST-1D accuracy of the default CNN and the MLP, 1 and 2 ranks, several seeds (the README's figures).

    python benchmarks/mnist1d_accuracy.py [--seeds 0 1 2] [--out accuracy.json]

Each run is the default configuration (configs/train.yaml) with model= and train.seed= changed; 2 ranks
run under mpirun. Published references (Greydanus 2020): CNN 94%, MLP 68% test accuracy. With the
default seeds the rows go to results/mnist1d-accuracy-cpu.json, the README's recorded figures (`make
figures` turns it into the README's table); other seeds to outputs/benchmarks/, unless --out says where.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from recorded import default_out, written  # noqa: E402

SEEDS = [0, 1, 2]


def run(model: str, ranks: int, seed: int, workdir: Path) -> dict:
    """One default training run; returns its summary.json."""
    run_dir = workdir / f"{model}-{ranks}-{seed}"
    args = [str(BIN / "ddtrain-train"), f"model={model}", f"train.seed={seed}", "logging.progress=false",
            "logging.tensorboard=false", f"hydra.run.dir={run_dir}"]
    if ranks > 1:
        args = [str(BIN / "mpirun"), "-np", str(ranks), "--oversubscribe", "--bind-to", "none", *args]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    subprocess.run(args, env=env, check=True, capture_output=True, timeout=900)
    return json.loads((run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--out", type=Path, help="where the rows go as JSON (default: "
                        "results/mnist1d-accuracy-cpu.json with the default seeds, else outputs/benchmarks/)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, published in (("cnn1d", 0.94), ("mlp", 0.68)):
            for ranks in (1, 2):
                accs = [run(model, ranks, seed, Path(tmp))["test_accuracy"] for seed in args.seeds]
                rows.append({"model": model, "ranks": ranks, "seeds": args.seeds, "test_accuracy": accs,
                             "mean": statistics.mean(accs), "min": min(accs), "published": published})
                print(f"{model:6s} ranks={ranks} test accuracy mean {100 * rows[-1]['mean']:.2f}% "
                      f"(min {100 * min(accs):.2f}%, seeds {args.seeds}: "
                      f"{', '.join(f'{100 * a:.1f}' for a in accs)}); published {100 * published:.0f}%", flush=True)
    out = args.out or default_out("mnist1d-accuracy-cpu.json", recorded=args.seeds == SEEDS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(written(out))


if __name__ == "__main__":
    main()
