"""Two hosts = two network namespaces with their own addresses; rank 0 on one, rank 1 on the other.

A run across them finishes (env:// ranks, torchrun --nnodes 2 with c10d rendezvous, and plain
`mpirun --host h0:1,h1:1` with nothing set by hand, also through launch/mpirun.sh: each host with
its own hostname mapped to 127.0.1.1, as on Debian); a rendezvous that cannot be reached says that
the advertised address may be wrong and how to set it; a rank
killed mid-training stops the other in seconds; a cable pulled between them stops both within
dist.timeout_s (plus the few seconds of waiting for a failure report); the newest checkpoint then
resumes (checkpoint.resume=auto) to the same final parameters as the uninterrupted run. Needs root
and iproute2 (launch/setup-test.sh); fails, never skips, without.
"""

from __future__ import annotations

import time

import pytest

from helpers import netns
from ddtrain.distributed.failure import PEER_REPORT_WAIT_S
from ddtrain.errors import EXIT_PEER
from helpers.mpi_hosts import MpiHosts
from helpers.rankrun import finish, kill_all, start_ranks, wait_for

pytestmark = pytest.mark.slow

TIMEOUT_S = 10  # dist.timeout_s of these runs
RUN = ["model=mlp", "train.max_steps=30", "train.global_batch_size=64", "train.eval_every=0",
       "logging.tensorboard=false", "checkpoint.every_steps=4", "checkpoint.keep_last=3", f"dist.timeout_s={TIMEOUT_S}"]
# rank 1 pauses 5 s at step 10, after checkpoint 8: the window in which the test cuts the network or kills a rank
PAUSE = {"DDTRAIN_INJECT_FAULT": "1:10:sleep5"}


@pytest.fixture(scope="module")
def net():
    netns.require()
    with netns.hosts(2) as network:
        yield network


def across(net, run_dir, cache, overrides=(), env_per_rank=None):
    """Rank r on host r, gloo on that host's veth, rendezvous at host 0's address."""
    env = {r: {"GLOO_SOCKET_IFNAME": h.ifname, **(env_per_rank or {}).get(r, {})} for r, h in enumerate(net.hosts)}
    return start_ranks([*RUN, *overrides], run_dir, cache, master_addr=net.hosts[0].addr,
                       wrap=lambda r, argv: net.hosts[r].cmd(argv), env_per_rank=env)


@pytest.fixture(scope="module")
def reference(net, tmp_path_factory, mnist1d_cache):
    """The uninterrupted run across the two hosts: its summary."""
    import json

    run_dir = tmp_path_factory.mktemp("two-hosts") / "reference"
    ranks = across(net, run_dir, mnist1d_cache)
    codes = finish(ranks)
    assert codes == [0, 0], ranks[0].output() + ranks[1].output()
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def one_host(tmp_path_factory, mnist1d_cache):
    """The same 2-rank run on one host (env:// ranks on loopback): its summary."""
    import json

    run_dir = tmp_path_factory.mktemp("one-host") / "run"
    ranks = start_ranks(RUN, run_dir, mnist1d_cache)
    assert finish(ranks) == [0, 0], ranks[0].output() + ranks[1].output()
    return json.loads((run_dir / "summary.json").read_text())


def mpirun_in_host0(net, tmp_path, argv, btl_if_include=True, timeout=240):
    """Run argv (mpirun or launch/mpirun.sh) inside host 0 of the two, with Open MPI reaching host 1 by its agent."""
    from conftest import BIN, base_env

    mpi = MpiHosts(net, tmp_path / "mpi")
    env = {k: v for k, v in base_env().items() if not k.startswith(("MASTER_", "GLOO_", "NCCL_"))}
    env.update(mpi.env(btl_if_include), PATH=f"{BIN}:{env['PATH']}", OMP_NUM_THREADS="1")
    argv = [a.replace("{hostfile}", str(mpi.hostfile())) for a in argv]
    return mpi.run(0, argv, env=env, timeout=timeout, cwd=tmp_path)


def test_plain_mpirun_across_two_hosts_gives_the_one_host_model(net, one_host, tmp_path, mnist1d_cache):
    """`mpirun --host h0:1,h1:1 -np 2 ddtrain-train ...`: no MASTER_ADDR, no GLOO_SOCKET_IFNAME, hostname -> 127.0.1.1."""
    import json

    from conftest import BIN, FAST

    run_dir = tmp_path / "run"
    p = mpirun_in_host0(net, tmp_path, ["mpirun", "--host", "h0:1,h1:1", "-np", "2", "--bind-to", "none",
                                        str(BIN / "ddtrain-train"), *FAST, f"dataset.cache_dir={mnist1d_cache}",
                                        f"hydra.run.dir={run_dir}", *RUN])
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["launcher"] == "openmpi" and summary["ranks_identical"]
    assert summary["parameter_digest"] == one_host["parameter_digest"]
    h0, h1 = net.hosts
    log = (run_dir / "train.log").read_text()
    # the log says which address and interface were chosen, and why (here: the interface MPI itself uses)
    assert f"rendezvous at {h0.addr}:" in log and f"(rank 0's eth0, chosen because Open MPI's btl_tcp_if_include=" \
        f"{net.subnet})" in log and "GLOO_SOCKET_IFNAME=eth0" in log
    assert f"this rank's interface eth0 {h1.addr}" in log


def test_launch_mpirun_sh_across_two_hosts(net, one_host, tmp_path, mnist1d_cache):
    """launch/mpirun.sh over a host file of the two; MPI told nothing about interfaces: rank 0 finds the subnet."""
    import json
    from pathlib import Path

    from conftest import FAST

    script = Path(__file__).resolve().parents[2] / "launch" / "mpirun.sh"
    run_dir = tmp_path / "run"
    p = mpirun_in_host0(net, tmp_path, [str(script), "--hostfile", "{hostfile}", "-g", "1", *FAST,
                                        f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={run_dir}", *RUN],
                        btl_if_include=False)
    assert p.returncode == 0, p.stdout + p.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["parameter_digest"] == one_host["parameter_digest"] and summary["world_size"] == 2
    assert f"(rank 0's eth0, chosen because the subnet {net.subnet} holds 1 of the 1 rank(s) on other hosts)" \
        in (run_dir / "train.log").read_text()


def test_unreachable_rendezvous_says_the_address_may_be_wrong(net, tmp_path, mnist1d_cache):
    """dist.interface=lo across hosts: rank 0 advertises 127.0.0.1; the line says so and how to set it."""
    from conftest import BIN, FAST

    p = mpirun_in_host0(net, tmp_path, ["mpirun", "--host", "h0:1,h1:1", "-np", "2", str(BIN / "ddtrain-train"),
                                        *FAST, f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={tmp_path}/run",
                                        *RUN, "dist.interface=lo", "dist.timeout_s=5"])
    assert p.returncode == EXIT_PEER, p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if "ddtrain: error:" in line]
    assert lines, p.stdout + p.stderr
    for line in lines:
        assert "rendezvous at 127.0.0.1:" in line and "within dist.timeout_s (5 s)" in line
        assert "The advertised address 127.0.0.1 (rank 0's lo, chosen because dist.interface=lo) may be wrong" \
            in line and "set dist.interface=" in line and "MASTER_ADDR=" in line


def test_namespaces_are_separate_hosts(net):
    h0, h1 = net.hosts
    assert netns.reachable(h0, h1.addr) and netns.reachable(h1, h0.addr)
    net.link_down(h1)
    try:
        assert not netns.reachable(h0, h1.addr)
    finally:
        net.link_up(h1)
    assert netns.reachable(h0, h1.addr)


def test_run_across_two_hosts_finishes(reference):
    assert reference["world_size"] == 2 and reference["steps"] == 30 and reference["ranks_identical"] is True


def test_torchrun_c10d_rendezvous_across_two_hosts(net, reference, tmp_path, mnist1d_cache):
    """torchrun --nnodes 2 on each host, c10d rendezvous hosted on host 0: the same model as env:// ranks."""
    import json
    import subprocess

    from conftest import BIN, FAST, base_env, free_port

    h0 = net.hosts[0]
    run_dir, port = tmp_path / "run", free_port()
    procs = []
    for i, h in enumerate(net.hosts):
        argv = [str(BIN / "torchrun"), "--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={h0.addr}:{port}", "--rdzv-id=two-hosts", f"--local-addr={h.addr}",
                *(["--rdzv-conf=is_host=1"] if i == 0 else []), "--no-python", str(BIN / "ddtrain-train"),
                *FAST, f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={run_dir}", *RUN]
        env = dict(base_env(), GLOO_SOCKET_IFNAME=h.ifname, OMP_NUM_THREADS="1")
        procs.append(h.popen(argv, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=180)[0])
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], "".join(outs)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["launcher"] == "torchrun" and summary["world_size"] == 2
    assert summary["parameter_digest"] == reference["parameter_digest"]


def test_killed_rank_on_the_other_host(net, tmp_path, mnist1d_cache):
    run_dir = tmp_path / "run"
    ranks = across(net, run_dir, mnist1d_cache, env_per_rank={1: PAUSE})
    try:
        wait_for(run_dir / "checkpoints" / "step_00000008.pt", ranks)
        killed_at = time.monotonic()
        ranks[1].kill()  # a real SIGKILL of the process on host 1
        code = ranks[0].wait(timeout=TIMEOUT_S + 60)
    finally:
        kill_all(ranks)
    assert code == EXIT_PEER, ranks[0].output()
    lines = ranks[0].error_lines()
    assert len(lines) == 1, ranks[0].output()
    assert f"lost rank 1 (host {_hostname()}, {net.hosts[1].addr})" in lines[0]
    assert f"newest checkpoint {run_dir / 'checkpoints' / 'step_00000008.pt'}" in lines[0]
    assert ranks[0].ended - killed_at < TIMEOUT_S  # the reset arrives at once; no waiting for the timeout


def test_link_down_stops_both_and_the_checkpoint_resumes_exactly(net, reference, tmp_path, mnist1d_cache):
    run_dir = tmp_path / "run"
    h0, h1 = net.hosts
    ranks = across(net, run_dir, mnist1d_cache, env_per_rank={1: PAUSE})
    try:
        wait_for(run_dir / "checkpoints" / "step_00000008.pt", ranks)
        net.link_down(h1)
        down_at = time.monotonic()
        codes = [r.wait(timeout=TIMEOUT_S + 60) for r in ranks]
    finally:
        kill_all(ranks)
        net.link_up(h1)
    out = ranks[0].output() + ranks[1].output()
    assert codes == [EXIT_PEER, EXIT_PEER], out
    assert "terminate called" not in out
    for r, peer in ((ranks[0], 1), (ranks[1], 0)):
        lines = r.error_lines()
        assert len(lines) == 1, r.output()
        assert f"no answer from rank {peer} (host {_hostname()}, {net.hosts[peer].addr}) within dist.timeout_s" \
            in lines[0] and "Timed out waiting 10000ms" in lines[0]
        # the timeout, the pause of rank 1 and the wait for a failure report, with a wide margin for load
        assert r.ended - down_at < TIMEOUT_S + 5 + PEER_REPORT_WAIT_S + 20
    newest = max((run_dir / "checkpoints").glob("step_*.pt"))
    assert f"newest checkpoint {newest} (continue with checkpoint.resume=auto hydra.run.dir={run_dir})" in lines[0]

    resumed = across(net, run_dir, mnist1d_cache, ["checkpoint.resume=auto"])
    assert finish(resumed) == [0, 0], resumed[0].output() + resumed[1].output()
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"] == str(newest) and summary["steps"] == 30
    assert summary["parameter_digest"] == reference["parameter_digest"]


def _hostname() -> str:
    import socket

    return socket.gethostname()
