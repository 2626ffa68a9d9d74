"""Real SLURM: srun and sbatch runs, PMIx/PMI-2 for the mpi engine, preemption with resume, two nodes.

The cluster (Debian's slurmctld + slurmd, see tests/slurm_cluster.py) is started once per session;
the two-node cluster runs its slurmds in network namespaces (tests/helpers/netns.py). Missing SLURM
binaries fail these tests with a hint to run launch/setup-test.sh (DDTRAIN_NO_SLURM=1 skips them).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, FAST, base_env
from helpers.slurm_cluster import pmix_missing, require_slurm, start

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "launch" / "slurm.sbatch"
PREEMPTED = 75  # ddtrain.errors.PREEMPTED_EXIT_CODE
LONG = 600  # steps of a run that gets preempted: a few seconds, long enough to signal it mid-way
SHORT = 20
# one intra-op thread per rank, as on one node with 2 ranks on 2 cores: with the same thread count
# ranks on one node and on two give bit-identical parameters
ONE_THREAD = {**base_env(), "OMP_NUM_THREADS": "1"}


def train_args(cache: Path, run_dir: Path, steps: int, *extra: str) -> list[str]:
    """ddtrain-train and the overrides of a small 2-rank MLP run into run_dir."""
    return [str(BIN / "ddtrain-train"), *FAST, "model=mlp", f"train.max_steps={steps}",
            "train.global_batch_size=64", "train.eval_every=0", "logging.tensorboard=false",
            f"dataset.cache_dir={cache}", f"hydra.run.dir={run_dir}", *extra]


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def check_summary(s: dict, steps: int, world_size: int = 2) -> None:
    """What every finished 2-rank SLURM run must report."""
    assert s["world_size"] == world_size
    assert s["launcher"] == "slurm"
    assert s["steps"] == steps
    assert s["ranks_identical"] is True
    assert s["status"] == "ok"


def explain(p) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-3000:]}"


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until rank 0 has logged a training step >= step (metrics.jsonl is line-buffered)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"run ended before step {step}: exit {proc.returncode}\n{out[-2000:]}\n{err[-2000:]}")
        time.sleep(0.05)
    pytest.fail(f"no step {step} in {metrics} after {timeout} s")


def rank_pid(run_dir: Path, rank: int) -> int:
    """The pid of the ddtrain-train process of `rank` writing into run_dir (a task of the srun step)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (f"hydra.run.dir={run_dir}".encode() in cmdline and any(b"ddtrain-train" in a for a in cmdline)
                and f"SLURM_PROCID={rank}".encode() in environ):
            return int(entry.name)
    pytest.fail(f"no rank {rank} process of {run_dir}")


def stopped_at(text: str) -> int:
    m = re.search(r"preempted \(.*?\) at step (\d+)/", text)
    assert m, f"no preemption line in:\n{text[-3000:]}"
    return int(m.group(1))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """One single-node SLURM cluster (this machine) for the session."""
    require_slurm()
    with start(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def reference(cluster, mnist1d_cache, tmp_path_factory):
    """An uninterrupted `srun -n 2` run of LONG steps: (completed process, run directory)."""
    run_dir = tmp_path_factory.mktemp("srun") / "run"
    p = cluster.run(["srun", "-n", "2", *train_args(mnist1d_cache, run_dir, LONG)], timeout=240, env=base_env())
    return p, run_dir


@pytest.fixture(scope="module")
def launched(cluster, mnist1d_cache, tmp_path_factory):
    """`ddtrain-launch -n 2 --via srun -- ddtrain-train ...` of SHORT steps: (completed process, run directory)."""
    run_dir = tmp_path_factory.mktemp("launch") / "run"
    p = cluster.run([str(BIN / "ddtrain-launch"), "-n", "2", "--via", "srun", "--",
                     *train_args(mnist1d_cache, run_dir, SHORT)], timeout=240, env=ONE_THREAD)
    return p, run_dir


def test_srun_two_ranks_same_training_as_env_launch(reference, launch):
    p, run_dir = reference
    assert p.returncode == 0, explain(p)
    s = summary(run_dir)
    check_summary(s, LONG)
    assert s["resumed_from"] is None
    # the same training as two ranks started by hand through env:// (rank and size from SLURM here)
    other = launch(["model=mlp", f"train.max_steps={LONG}", "train.global_batch_size=64", "train.eval_every=0",
                    "logging.tensorboard=false"], ranks=2)
    assert other.returncode == 0, other.stderr[-2000:]
    assert other.summary["launcher"] == "torchrun"
    assert other.summary["parameter_digest"] == s["parameter_digest"]


def test_ddtrain_launch_via_srun(launched):
    p, run_dir = launched
    assert p.returncode == 0, explain(p)
    assert "ddtrain-launch: srun --ntasks=2" in p.stdout
    check_summary(summary(run_dir), SHORT)


def test_srun_runs_every_job_of_a_multirun(cluster, mnist1d_cache, tmp_path):
    """`srun -n 2 ddtrain-train -m train.lr=0.1,0.2`: both jobs on both ranks, one directory each (rank 0's)."""
    p = cluster.run(["srun", "-n", "2", *train_args(mnist1d_cache, tmp_path / "unused", SHORT), "-m",
                     "train.lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'multi'}"], timeout=240, env=ONE_THREAD,
                    cwd=tmp_path)
    assert p.returncode == 0, explain(p)
    for job in ("0", "1"):
        check_summary(summary(tmp_path / "multi" / job), SHORT)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["multi"]


def test_sigterm_to_one_rank_stops_all_and_resume_matches(cluster, reference, mnist1d_cache, tmp_path):
    """SIGTERM to rank 1 only: both ranks agree, checkpoint, exit 75; a rerun resumes to the same parameters."""
    ref_run = reference[1]
    run_dir = tmp_path / "run"
    args = ["srun", "--kill-on-bad-exit=1", "-n", "2", *train_args(mnist1d_cache, run_dir, LONG)]
    proc = cluster.popen(args, timeout=240, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_step(run_dir, 20, proc)
        os.kill(rank_pid(run_dir, 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == PREEMPTED, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    step = stopped_at(out)
    assert 20 <= step < LONG
    assert "preempted (signal on another rank)" in out  # rank 0 got no signal and stopped with rank 1
    log = (run_dir / "train.log").read_text()
    assert f"[rank 1/2] INFO preempted (SIGTERM) at step {step}/" in log
    assert (run_dir / "checkpoints" / f"step_{step:08d}.pt").is_file()
    assert not (run_dir / "summary.json").exists()

    again = cluster.run(["srun", "-n", "2", *train_args(mnist1d_cache, run_dir, LONG)], timeout=240, env=base_env())
    assert again.returncode == 0, explain(again)
    s = summary(run_dir)
    check_summary(s, LONG)
    assert s["resumed_from"].endswith(f"step_{step:08d}.pt")
    assert s["trained_steps_this_run"] == LONG - step
    assert s["parameter_digest"] == summary(ref_run)["parameter_digest"]


def test_sbatch_cpu_preempted_requeued_and_resumed(cluster, reference, mnist1d_cache, tmp_path):
    """launch/slurm.sbatch with CPU settings; SIGUSR1 to the step: exit 75, requeue, resume, same parameters."""
    ref_run = reference[1]
    run_dir = tmp_path / "run"
    overrides = train_args(mnist1d_cache, run_dir, LONG)[1:]
    overrides = [a for a in overrides if not a.startswith("hydra.run.dir=")]  # the script sets it
    env = {**base_env(), "DDTRAIN_PROGRAM": str(BIN / "ddtrain-train"), "DDTRAIN_RUN_DIR": str(run_dir)}
    args = ["sbatch", "--wait", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0",
            "--time=10", f"--output={tmp_path}/job-%j.out", str(SBATCH), *overrides]
    proc = cluster.popen(args, timeout=300, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_step(run_dir, 20, proc)
        jobs = cluster.jobs()
        assert len(jobs) == 1, jobs
        signalled = cluster.run(["scancel", "--signal=USR1", jobs[0]], timeout=30)
        assert signalled.returncode == 0, explain(signalled)
        out, err = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    job_out = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert proc.returncode == 0, f"sbatch exit {proc.returncode}\n{err}\n{job_out[-4000:]}"
    step = stopped_at(job_out)
    assert 20 <= step < LONG
    assert f"ddtrain: preempted, checkpoint saved; requeueing job {jobs[0]}" in job_out
    assert f"ddtrain: job {jobs[0]} (restart 1)" in job_out  # the same job id after the requeue
    s = summary(run_dir)
    check_summary(s, LONG)
    assert s["resumed_from"].endswith(f"step_{step:08d}.pt")
    assert s["parameter_digest"] == summary(ref_run)["parameter_digest"]


@pytest.mark.parametrize("engine", ["mpi", "horovod"])
def test_srun_pmix_runs_the_mpi_engines(cluster, mnist1d_cache, tmp_path, engine):
    if pmix_missing():
        pytest.fail(pmix_missing(), pytrace=False)
    run_dir = tmp_path / "run"
    p = cluster.run(["srun", "--mpi=pmix", "-n", "2",
                     *train_args(mnist1d_cache, run_dir, SHORT, f"dist.engine={engine}")],
                    timeout=240, env=base_env())
    assert p.returncode == 0, explain(p)
    s = summary(run_dir)
    check_summary(s, SHORT)
    assert (s["engine"], s["launcher"]) == (engine, "slurm")


def test_srun_pmi2_with_pip_open_mpi_is_refused(cluster, mnist1d_cache, tmp_path):
    """pip's Open MPI under --mpi=pmi2: each rank is an MPI world of 1; that must fail, not train twice."""
    run_dir = tmp_path / "run"
    p = cluster.run(["srun", "--mpi=pmi2", "-n", "2", *train_args(mnist1d_cache, run_dir, SHORT, "dist.engine=mpi")],
                    timeout=240, env=base_env())
    assert p.returncode != 0, explain(p)
    errors = [line for line in p.stderr.splitlines() if line.startswith("ddtrain: error:")]
    assert len(errors) == 2, explain(p)  # one line from each rank
    assert "MPI" in errors[0] and "not available" not in errors[0]  # it is the world size that is wrong
    assert re.search(r"\b1\b", errors[0]) and re.search(r"\b2\b", errors[0]), errors[0]  # names both sizes
    assert "done:" not in p.stdout
    assert not (run_dir / "summary.json").exists()


def test_two_nodes(launched, mnist1d_cache, tmp_path):
    """One slurmd per network namespace: `srun -N 2 -n 2` trains over the veth link like one node does."""
    from helpers import netns

    netns.require()
    require_slurm()
    run_dir = tmp_path / "run"
    with netns.hosts(2, gateway=True) as net, start(tmp_path / "slurm2", net=net) as c:
        where = c.run(["srun", "-N", "2", "-n", "2", "-l", "hostname"], timeout=60)
        assert where.returncode == 0, explain(where) + c.logs()
        assert sorted(where.stdout.split()) == ["0:", "1:", "n0", "n1"]
        # no GLOO_SOCKET_IFNAME: each rank binds gloo to its interface towards rank 0 (n0's address)
        env = {k: v for k, v in ONE_THREAD.items() if not k.startswith(("GLOO_", "MASTER_"))}
        p = c.run(["srun", "-N", "2", "-n", "2", *train_args(mnist1d_cache, run_dir, SHORT)], timeout=240, env=env)
        assert p.returncode == 0, explain(p) + c.logs()
        h0, h1 = net.hosts
    s = summary(run_dir)
    check_summary(s, SHORT)
    assert s["parameter_digest"] == summary(launched[1])["parameter_digest"]
    log = (run_dir / "train.log").read_text()
    assert f"rank 0's interface eth0 {h0.addr} (it carries the rendezvous address n0)" in log
    assert f"this rank's interface eth0 {h1.addr} (the route to rank 0's address {h0.addr})" in log
