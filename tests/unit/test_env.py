"""Launcher detection (ddtrain.env): one table row per launcher situation, plus SLURM node lists."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from ddtrain.distributed import env as env_mod
from ddtrain.distributed.env import DistEnv, detect, parse_slurm_nodelist, slurm_master_port
from ddtrain.errors import UserError

# What `srun` puts in every task of a 2-task step on gpu01 (rank 1 of 2, one task per node).
SLURM_STEP = {
    "SLURM_JOB_ID": "4242",
    "SLURM_JOBID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "8",  # the allocation's; the step runs fewer
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_STEP_TASKS_PER_NODE": "1(x2)",
    "SLURM_TASKS_PER_NODE": "2(x4)",
    "SLURM_JOB_NODELIST": "gpu[01-04,07],cpu-a1",
    "SLURM_STEP_NODELIST": "gpu[01-04,07],cpu-a1",
}

# What an sbatch script sees before any srun: PROCID and NTASKS but no step id.
SLURM_BATCH = {
    "SLURM_JOB_ID": "4242",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "8",
    "SLURM_TASKS_PER_NODE": "2(x4)",
    "SLURM_JOB_NODELIST": "gpu[01-04]",
}

TORCHRUN = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29400",
}

SINGLE = DistEnv("single", 0, 1, 0, 1, "127.0.0.1", None)
SLURM_PORT = slurm_master_port("4242")


def E(launcher, rank, world, local, local_world, addr, port, node=0):
    return DistEnv(launcher, rank, world, local, local_world, addr, port, node)


DETECT_CASES = [
    pytest.param({}, SINGLE, id="empty-env-single"),
    pytest.param({"PATH": "/usr/bin", "HOME": "/root"}, SINGLE, id="unrelated-vars-single"),
    pytest.param(TORCHRUN, E("torchrun", 1, 2, 1, 2, "10.0.0.5", 29400), id="torchrun-2-ranks"),
    pytest.param({**TORCHRUN, "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "GROUP_RANK": "1"},
                 E("torchrun", 3, 4, 1, 2, "10.0.0.5", 29400, node=1), id="torchrun-2-nodes-group-rank"),
    pytest.param({"RANK": "0", "WORLD_SIZE": "1"}, E("torchrun", 0, 1, 0, 1, "127.0.0.1", 29500),
                 id="env-world-1-defaults"),
    pytest.param({"RANK": "2", "WORLD_SIZE": "4", "MASTER_ADDR": "h0"}, E("torchrun", 2, 4, 0, 1, "h0", 29500),
                 id="env-no-local-rank-alone-on-node"),
    pytest.param({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "MASTER_ADDR": "h0"},
                 E("torchrun", 2, 4, 2, 4, "h0", 29500), id="env-local-rank-no-local-size-single-node"),
    pytest.param({**SLURM_STEP, **TORCHRUN}, E("torchrun", 1, 2, 1, 2, "10.0.0.5", 29400),
                 id="srun-torchrun-torchrun-wins"),
    pytest.param({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4",
                  "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2"},
                 E("openmpi", 1, 4, 1, 2, None, None), id="openmpi-rank1-of-4"),
    pytest.param({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2",
                  "OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "1",
                  "MASTER_ADDR": "head", "MASTER_PORT": "12345"},
                 E("openmpi", 0, 2, 0, 1, "head", 12345), id="openmpi-user-master"),
    pytest.param({**SLURM_STEP, "SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
                  "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"},
                 E("openmpi", 5, 8, 1, 4, None, None), id="mpirun-inside-allocation-mpi-wins"),
    pytest.param({"PMI_RANK": "2", "PMI_SIZE": "4"}, E("mpich", 2, 4, 0, 1, None, None), id="mpich-pmi-only"),
    pytest.param({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
                 E("mpich", 3, 4, 1, 2, None, None), id="mpich-hydra-local-vars"),
    pytest.param({"PMI_RANK": "3", "PMI_SIZE": "8", "MPI_LOCALRANKID": "3"},
                 E("mpich", 3, 8, 3, 4, None, None), id="intel-mpi-localrankid-only"),
    # Hydra under SLURM: ranks inherit the per-node proxy's SLURM_PROCID; PMI must win.
    pytest.param({**SLURM_STEP, "SLURM_PROCID": "1", "PMI_RANK": "1", "PMI_SIZE": "4",
                  "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"},
                 E("mpich", 1, 4, 1, 2, None, None), id="hydra-inside-allocation-mpi-wins"),
    # Plain srun with MpiDefault=pmi2: Slurm itself sets PMI_RANK=SLURM_PROCID -> still slurm.
    pytest.param({**SLURM_STEP, "PMI_RANK": "1", "PMI_SIZE": "2", "PMI_FD": "7"},
                 E("slurm", 1, 2, 0, 1, "gpu01", SLURM_PORT, node=1), id="srun-pmi2-plugin-is-slurm"),
    pytest.param(SLURM_STEP, E("slurm", 1, 2, 0, 1, "gpu01", SLURM_PORT, node=1), id="slurm-srun-2-tasks"),
    pytest.param({**SLURM_STEP, "MASTER_PORT": "23456"}, E("slurm", 1, 2, 0, 1, "gpu01", 23456, node=1),
                 id="slurm-master-port-override"),
    pytest.param({**SLURM_STEP, "MASTER_ADDR": "login1"}, E("slurm", 1, 2, 0, 1, "login1", SLURM_PORT, node=1),
                 id="slurm-master-addr-override"),
    pytest.param({k: v for k, v in SLURM_STEP.items() if k not in ("SLURM_STEP_ID",)},
                 E("slurm", 1, 2, 0, 1, "gpu01", SLURM_PORT, node=1), id="slurm-old-stepid-name"),
    # 8 tasks on 3 nodes laid out "3(x2),2": node 2 has 2 tasks.
    pytest.param({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "1", "SLURM_PROCID": "7", "SLURM_LOCALID": "1",
                  "SLURM_NODEID": "2", "SLURM_NTASKS": "8", "SLURM_STEP_TASKS_PER_NODE": "3(x2),2",
                  "SLURM_NODELIST": "n[008-010]"},
                 E("slurm", 7, 8, 1, 2, "n008", slurm_master_port(77), node=2), id="slurm-uneven-tasks-per-node"),
    pytest.param({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "1", "SLURM_PROCID": "2", "SLURM_LOCALID": "2",
                  "SLURM_NTASKS": "4", "SLURM_TASKS_PER_NODE": "4", "SLURM_JOB_NODELIST": "node1"},
                 E("slurm", 2, 4, 2, 4, "node1", slurm_master_port(77)), id="slurm-no-nodeid-job-vars"),
    pytest.param({"SLURM_JOB_ID": "9", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"},
                 E("slurm", 0, 1, 0, 1, "127.0.0.1", slurm_master_port(9)), id="slurm-1-task-no-nodelist"),
    pytest.param(SLURM_BATCH, SINGLE, id="slurm-batch-script-no-step-single"),
    pytest.param({**SLURM_STEP, "RANK": "", "WORLD_SIZE": ""}, E("slurm", 1, 2, 0, 1, "gpu01", SLURM_PORT, node=1),
                 id="empty-values-count-as-unset"),
]


@pytest.mark.parametrize("environ,expected", DETECT_CASES)
def test_detect(environ, expected):
    got = detect(environ)
    assert got == expected
    assert got.is_mpi == (expected.launcher in ("openmpi", "mpich"))


MALFORMED_CASES = [
    pytest.param({"RANK": "one", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK='one'", id="rank-not-int"),
    pytest.param({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK=2", id="rank-ge-world"),
    pytest.param({"RANK": "-1", "WORLD_SIZE": "2", "MASTER_ADDR": "h"}, "RANK=-1", id="rank-negative"),
    pytest.param({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0", id="world-zero"),
    pytest.param({"RANK": "0", "WORLD_SIZE": "2.5"}, "WORLD_SIZE='2.5'", id="world-not-int"),
    pytest.param({"RANK": "1", "WORLD_SIZE": "2"}, "MASTER_ADDR", id="torchrun-no-master-addr"),
    pytest.param({**TORCHRUN, "MASTER_PORT": "http"}, "MASTER_PORT='http'", id="port-not-int"),
    pytest.param({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT='70000'", id="port-out-of-range"),
    pytest.param({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK=2", id="local-rank-ge-local-world"),
    pytest.param({**TORCHRUN, "LOCAL_WORLD_SIZE": "x"}, "LOCAL_WORLD_SIZE='x'", id="local-world-not-int"),
    pytest.param({"OMPI_COMM_WORLD_RANK": "4", "OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_RANK=4",
                 id="openmpi-rank-ge-size"),
    pytest.param({"OMPI_COMM_WORLD_RANK": "0"}, "OMPI_COMM_WORLD_SIZE", id="openmpi-missing-size"),
    pytest.param({"PMI_RANK": "0", "PMI_SIZE": "zero"}, "PMI_SIZE='zero'", id="pmi-size-not-int"),
    pytest.param({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "-1"}, "MPI_LOCALRANKID=-1",
                 id="pmi-local-negative"),
    pytest.param({**SLURM_STEP, "SLURM_PROCID": "x"}, "SLURM_PROCID='x'", id="slurm-procid-not-int"),
    pytest.param({**SLURM_STEP, "SLURM_PROCID": "2"}, "SLURM_PROCID=2", id="slurm-procid-ge-step-tasks"),
    pytest.param({**SLURM_STEP, "SLURM_STEP_TASKS_PER_NODE": "2(y3)"}, "SLURM_STEP_TASKS_PER_NODE",
                 id="slurm-tasks-per-node-garbled"),
    pytest.param({**SLURM_STEP, "SLURM_NODEID": "5"}, "SLURM_NODEID=5", id="slurm-nodeid-past-list"),
    pytest.param({**SLURM_STEP, "SLURM_STEP_NODELIST": "gpu[01-04"}, "gpu\\[01-04", id="slurm-nodelist-unbalanced"),
    pytest.param({k: v for k, v in SLURM_STEP.items() if "NODELIST" not in k}, "SLURM_STEP_NODELIST",
                 id="slurm-no-nodelist-world-2"),
    pytest.param({k: v for k, v in SLURM_STEP.items() if "JOB" not in k}, "SLURM_JOB_ID", id="slurm-no-job-id"),
]


@pytest.mark.parametrize("environ,needle", MALFORMED_CASES)
def test_detect_malformed(environ, needle):
    with pytest.raises(UserError, match=needle) as info:
        detect(environ)
    assert "\n" not in str(info.value)


NODELIST_CASES = [
    pytest.param("node1", ["node1"], id="single-host"),
    pytest.param("", [], id="empty"),
    pytest.param("a,b,c", ["a", "b", "c"], id="plain-list"),
    pytest.param("gpu[01-04,07],cpu-a1", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu-a1"],
                 id="range-and-single-in-brackets"),
    pytest.param("n[008-010]", ["n008", "n009", "n010"], id="zero-padding-kept"),
    pytest.param("n[8-10]", ["n8", "n9", "n10"], id="no-padding"),
    pytest.param("n[098-101]", ["n098", "n099", "n100", "n101"], id="padding-width-grows"),
    pytest.param("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"], id="two-bracket-groups"),
    pytest.param("n[3]", ["n3"], id="single-number-in-brackets"),
    pytest.param("[1-2]x", ["1x", "2x"], id="leading-bracket"),
    pytest.param("node-1.cluster.local,gpu[1-2].ib.local",
                 ["node-1.cluster.local", "gpu1.ib.local", "gpu2.ib.local"], id="dots-and-dashes"),
    pytest.param(" a[1-2] , b ", ["a1", "a2", "b"], id="spaces-trimmed"),
    pytest.param("a[ 1-2 , 5 ]", ["a1", "a2", "a5"], id="spaces-inside-brackets"),
    pytest.param("a,", ["a"], id="trailing-comma"),
]


@pytest.mark.parametrize("nodelist,hosts", NODELIST_CASES)
def test_parse_slurm_nodelist(nodelist, hosts):
    assert parse_slurm_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", [
    pytest.param("gpu[01-04", id="unclosed"),
    pytest.param("gpu01-04]", id="unopened"),
    pytest.param("gpu[[1-2]]", id="nested"),
    pytest.param("gpu[4-1]", id="backwards"),
    pytest.param("gpu[a-b]", id="letters"),
    pytest.param("gpu[]", id="empty-brackets"),
    pytest.param("gpu 01", id="space-in-host"),
])
def test_parse_slurm_nodelist_malformed(nodelist):
    with pytest.raises(UserError, match="SLURM node list"):
        parse_slurm_nodelist(nodelist)


@pytest.mark.parametrize("job_id", [0, 1, 4242, "4242", " 4242 ", 99999999, "123_4", "123+1", "abc"])
def test_slurm_master_port_range(job_id):
    port = slurm_master_port(job_id)
    # Unprivileged and below Linux's default ephemeral range (32768-60999).
    assert 15000 <= port < 32768
    assert slurm_master_port(job_id) == port


def test_slurm_master_port_values():
    assert slurm_master_port(4242) == slurm_master_port("4242") == 15000 + 4242
    assert slurm_master_port(0) == 15000
    # Consecutive jobs get different ports.
    assert slurm_master_port(100) != slurm_master_port(101)
    # Array ids: the same string always gives the same port (stable hash, not hash()).
    # Pinned (CRC32 of the id): a change here would split a running job's ranks across versions.
    assert slurm_master_port("123_4") == 20398
    assert slurm_master_port("123_4") != slurm_master_port("123_5")


def test_slurm_master_port_stable_across_processes():
    """Array-job ports must not depend on PYTHONHASHSEED: compare with a fresh interpreter."""
    import subprocess

    code = "from ddtrain.distributed.env import slurm_master_port as p; print(p('123_4'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[2])})
    assert int(out.stdout) == slurm_master_port("123_4")


def test_slurm_master_port_empty():
    with pytest.raises(UserError, match="SLURM_JOB_ID"):
        slurm_master_port(" ")


def test_detect_reads_only_its_argument(monkeypatch):
    for key, value in {**TORCHRUN, **SLURM_STEP}.items():
        monkeypatch.setenv(key, value)
    assert detect({}) == SINGLE


def test_distenv_is_frozen():
    with pytest.raises(Exception):
        SINGLE.rank = 1  # type: ignore[misc]


def test_env_module_imports_only_stdlib():
    """env.py (and the SLURM node-list parser it uses) is imported before torch/mpi4py decide anything."""
    from ddtrain.distributed import slurm

    allowed = set(sys.stdlib_module_names) | {"ddtrain.errors", "ddtrain.distributed.slurm"}
    for module in (env_mod, slurm):
        tree = ast.parse(Path(module.__file__).read_text())
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                modules.add(node.module or "")
        bad = {m for m in modules if m not in allowed and m.split(".")[0] not in sys.stdlib_module_names}
        assert not bad, f"{module.__file__} imports non-stdlib modules: {sorted(bad)}"
    # and for real: a fresh interpreter that imports it has loaded neither torch nor mpi4py
    import subprocess

    code = "import sys, ddtrain.distributed.env; print(sorted({'torch', 'mpi4py'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_case_id_unique():
    ids = [p.id for p in DETECT_CASES + MALFORMED_CASES + NODELIST_CASES]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z0-9-]+", i) for i in ids)
