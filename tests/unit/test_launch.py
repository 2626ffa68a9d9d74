"""ddtrain-launch: the command it builds for each launcher (table-driven), and real 2-rank runs."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import BIN, base_env
from ddtrain.cli.launch import LaunchRequest, build_command, choose_launcher, parse

TRAIN = ["ddtrain-train", "model=mlp"]


def request(**kw) -> LaunchRequest:
    base = dict(ranks=2, program=TRAIN, environ={}, cpus=2, is_root=False, available=("mpirun", "torchrun"))
    return LaunchRequest(**{**base, **kw})


CASES = {
    "mpirun local": (request(via="mpirun"),
                     ["mpirun", "-np", "2", "--bind-to", "none", "--map-by", "slot", *TRAIN], {}),
    "mpirun oversubscribed as root, NCCL/OMP forwarded": (
        request(via="mpirun", ranks=4, is_root=True, environ={"NCCL_DEBUG": "INFO", "OMP_NUM_THREADS": "1",
                                                              "HOME": "/root"}),
        ["mpirun", "-np", "4", "--bind-to", "none", "--map-by", "slot", "--oversubscribe",
         "-x", "NCCL_DEBUG", "-x", "OMP_NUM_THREADS", *TRAIN],
        {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}),
    "srun two nodes": (request(via="srun", ranks=8, nodes=2, cpus=16),
                       ["srun", "--ntasks=8", "--nodes=2", "--ntasks-per-node=4", "--cpus-per-task=4",
                        "--kill-on-bad-exit=1", *TRAIN], {}),
    "srun mpi engine uses pmix": (request(via="srun", program=[*TRAIN, "dist.engine=mpi"]),
                                  ["srun", "--ntasks=2", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                                   "--kill-on-bad-exit=1", "--mpi=pmix", *TRAIN, "dist.engine=mpi"], {}),
    "torchrun one node": (request(via="torchrun", ranks=4),
                          ["torchrun", "--nproc-per-node=4", "--nnodes=1", "--standalone", "--no-python", *TRAIN], {}),
    "torchrun two nodes": (request(via="torchrun", ranks=8, nodes=2, environ={"MASTER_ADDR": "n1"}),
                           ["torchrun", "--nproc-per-node=4", "--nnodes=2", "--rdzv-backend=c10d",
                            "--rdzv-endpoint=n1:29400", "--rdzv-id=ddtrain", "--no-python", *TRAIN], {}),
    "horovodrun local": (request(via="horovodrun"),
                         ["horovodrun", "-np", "2", "--gloo", "-H", "localhost:2", *TRAIN], {}),
}


@pytest.mark.parametrize("req,cmd,env", CASES.values(), ids=CASES.keys())
def test_command_for_each_launcher(req, cmd, env):
    assert build_command(req) == (cmd, env)


def test_hostfile_slots_decide_oversubscription(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("n1 slots=4\nn2 slots=4  # comment\n")
    cmd, _ = build_command(request(via="mpirun", ranks=8, hostfile=str(hosts)))
    assert "--oversubscribe" not in cmd and cmd[cmd.index("--hostfile") + 1] == str(hosts)
    cmd, _ = build_command(request(via="mpirun", ranks=9, hostfile=str(hosts)))
    assert "--oversubscribe" in cmd


def test_auto_picks_srun_in_an_allocation_then_mpirun_then_torchrun():
    assert choose_launcher(request(environ={"SLURM_JOB_ID": "7"})) == "srun"
    assert choose_launcher(request()) == "mpirun"
    assert choose_launcher(request(available=("torchrun",))) == "torchrun"


def test_bad_arguments_are_one_line():
    with pytest.raises(SystemExit, match="after --"):
        parse(["-n", "2", "ddtrain-train"])
    with pytest.raises(SystemExit):
        parse(["-n", "3", "--nodes", "2", "--", "ddtrain-train"])


@pytest.mark.slow
@pytest.mark.parametrize("via,launcher", [("mpirun", "openmpi"), ("torchrun", "torchrun")])
def test_real_two_rank_launch(tmp_path, mnist1d_cache, via, launcher):
    env = base_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    out = subprocess.run([str(BIN / "ddtrain-launch"), "-n", "2", "--via", via, "--", "ddtrain-train",
                          "train.max_steps=20", "logging.progress=false", f"dataset.cache_dir={mnist1d_cache}",
                          f"hydra.run.dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.startswith("ddtrain-launch: ")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["launcher"] == launcher and summary["ranks_identical"]


@pytest.mark.slow
def test_launcher_exit_code_is_returned(tmp_path):
    env = base_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    out = subprocess.run([str(BIN / "ddtrain-launch"), "-n", "2", "--via", "mpirun", "--", "ddtrain-train",
                          "model=nonexistent"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode != 0 and "model=nonexistent" in out.stderr


def test_torchrun_restarts_by_itself():
    cmd, _ = build_command(request(via="torchrun", max_restarts=2))
    assert cmd[:4] == ["torchrun", "--nproc-per-node=2", "--nnodes=1", "--max-restarts=2"]
    cmd, _ = build_command(request(via="mpirun", max_restarts=2))
    assert "--max-restarts=2" not in cmd  # ddtrain-launch runs mpirun again itself


def test_what_is_restarted():
    from ddtrain.cli.restart import describe, restartable

    assert [c for c in (0, 1, 2, 3, 75, 137, 143, -9) if restartable(c)] == [3, 75, 137, 143, -9]
    assert describe(137) == "a rank was killed by SIGKILL" and describe(3).startswith("a rank was lost")


def test_restarts_get_one_run_directory_and_checked_input(tmp_path, monkeypatch):
    import re

    from ddtrain.cli.restart import pin_directories, resumed
    from ddtrain.errors import UserError

    monkeypatch.chdir(tmp_path)
    program, run_dir = pin_directories(TRAIN, 2, "mpirun")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", str(run_dir.relative_to(tmp_path / "outputs")))
    assert program == [*TRAIN, f"hydra.run.dir={run_dir}"]
    assert pin_directories([*TRAIN, "hydra.run.dir=r1"], 2, "mpirun") == ([*TRAIN, "hydra.run.dir=r1"], tmp_path / "r1")
    program, sweep_dir = pin_directories([*TRAIN, "-m", "train.lr=0.1,0.2"], 2, "mpirun")
    assert program[-1] == f"hydra.sweep.dir={sweep_dir}" and sweep_dir.parent.parent.name == "multirun"
    assert resumed(program)[-1] == "checkpoint.resume=auto"
    with pytest.raises(UserError, match="train.global_batch_size=100 does not split into 3 rank"):
        pin_directories([*TRAIN, "train.global_batch_size=100"], 3, "mpirun")
    with pytest.raises(UserError, match="checkpoint.resume=never: every restart would start over"):
        pin_directories([*TRAIN, "checkpoint.resume=never"], 2, "mpirun")
    with pytest.raises(UserError, match="under torchrun gives every attempt the same arguments"):
        pin_directories([*TRAIN, "checkpoint.resume=/x/step_00000004.pt"], 2, "torchrun")
    assert pin_directories(["python", "my_script.py"], 2, "mpirun") == (["python", "my_script.py"], None)
