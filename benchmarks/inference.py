"""Inference batch-size benchmark of ResNet-18 on CPU: PyTorch eager, torch.compile, onnxruntime (README's table).

Runs `ddtrain-bench inference` on a freshly initialised ResNet-18 (ImageNet layout, 1000 classes,
inputs 3x224x224; weights do not change the time) for batch sizes 1..32 and writes, under --out
(default results/inference-resnet18-cpu/): inference.json (every row, each round's p50, the machine's
load average before and after), inference.md (the table) and inference.png.

    .venv/bin/python benchmarks/inference.py                      # ~10 minutes on 2 loaded cores
    .venv/bin/python benchmarks/inference.py --quick              # batch 1 and 4, 32x32 inputs: a smoke test
    .venv/bin/python benchmarks/inference.py --threads 2 --out /tmp/inf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--threads", type=int, default=1,
                        help="intra-op threads (1: steadier on a shared machine; all cores idle: their number)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "inference-resnet18-cpu")
    parser.add_argument("--quick", action="store_true")
    a = parser.parse_args()
    if a.quick:
        a.batch_sizes, a.size, a.iters, a.rounds = "1,4", 32, 3, 2
    bench = Path(sys.executable).parent / "ddtrain-bench"
    load_before = os.getloadavg()
    t0 = time.time()
    cmd = [str(bench), "inference", "--batch-sizes", a.batch_sizes, "--threads", str(a.threads), "--iters",
           str(a.iters), "--rounds", str(a.rounds), "--out", str(a.out), "model=resnet18", "dataset=synthetic",
           f"dataset.shape=[3,{a.size},{a.size}]", "dataset.num_classes=1000"]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    result_file = a.out / "inference.json"
    result = json.loads(result_file.read_text())
    result.update(load_average_before=load_before, load_average_after=os.getloadavg(), cores=os.cpu_count(),
                  wall_s=round(time.time() - t0, 1), command=" ".join(["ddtrain-bench", *cmd[1:]]),
                  date=time.strftime("%Y-%m-%d"))
    result_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}; {result_file}")


if __name__ == "__main__":
    main()
