"""An installed ddtrain finds its configs from any working directory; both entry points start."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import BIN


@pytest.mark.slow
def test_wheel_ships_the_configs(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(repo)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("ddtrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("ddtrain/configs/train.yaml", "ddtrain/configs/sweep.yaml", "ddtrain/configs/model/cnn1d.yaml",
                 "ddtrain/configs/dataset/mnist1d.yaml", "ddtrain/configs/experiment/mnist1d_cnn_cpu.yaml"):
        assert path in names, path


@pytest.mark.parametrize("cmd", [[str(BIN / "ddtrain-train")], [sys.executable, "-m", "ddtrain.train"],
                                 [str(BIN / "ddtrain-sweep")]])
def test_entry_points_compose_from_any_directory(tmp_path, cmd):
    out = subprocess.run([*cmd, "--cfg", "job", "model=mlp"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "name: mlp" in out.stdout and "global_batch_size" in out.stdout
