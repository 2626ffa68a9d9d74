"""A real SLURM cluster for tests: slurmctld plus one slurmd per node, from a generated slurm.conf.

    from helpers.slurm_cluster import require_slurm, start     # tests/ is on sys.path under pytest

    require_slurm()                                    # fails (skips only with DDTRAIN_NO_SLURM=1)
    with start(tmp_dir) as cluster:                    # one node: this machine, 127.0.0.1
        p = cluster.run(["srun", "-n", "2", "hostname"], timeout=60)
    with start(tmp_dir, net=net) as cluster:           # one node per netns host (tests/netns.py, gateway=True)
        ...

Debian's Slurm 22.05 with auth/none and cred/none (no munge), state, spool, pid and log files in
the directory given, ports picked free. Up in about a second; the daemons are stopped by pid
(SIGTERM, then SIGKILL), and jobs left running are cancelled first, also when the test failed.
Every command goes through `timeout`: srun can hang after its ranks failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("slurmctld", "slurmd", "srun", "sbatch", "scancel", "sinfo", "squeue", "scontrol")
SETUP_HINT = ("run `bash launch/setup-test.sh` as root "
              "(apt-get install slurmctld slurmd slurm-client libpmix2 libpmix-dev)")


def missing() -> str | None:
    """Why a SLURM cluster cannot be started here (None when it can)."""
    absent = [b for b in BINARIES if shutil.which(b) is None]
    if absent:
        return f"SLURM binaries missing ({', '.join(absent)}): {SETUP_HINT}"
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root (SlurmdUser=root): run the SLURM tests as root"
    return None


def pmix_missing() -> str | None:
    """Why `srun --mpi=pmix` cannot work here (None when it can).

    Debian's Slurm plugin mpi_pmix_v4.so dlopens <libdir>/pmix2/lib/libpmix.so, the unversioned
    name that only libpmix-dev installs; with libpmix2 alone srun says "can not load PMIx library".
    """
    import glob

    if glob.glob("/usr/lib/*/pmix2/lib/libpmix.so"):
        return None
    return f"srun --mpi=pmix needs libpmix.so (package libpmix-dev): {SETUP_HINT}"


def require_slurm() -> None:
    """Fail the calling test when SLURM is absent; skip only when DDTRAIN_NO_SLURM=1 says so explicitly."""
    import pytest

    reason = missing()
    if reason is None:
        return
    if os.environ.get("DDTRAIN_NO_SLURM") == "1":
        pytest.skip(f"DDTRAIN_NO_SLURM=1: {reason}")
    pytest.fail(f"SLURM tests: {reason} (or set DDTRAIN_NO_SLURM=1 to skip them)", pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """One compute node: its SLURM name, address, and the netns host it lives in (None: this machine)."""

    name: str
    addr: str
    host: object = None  # a netns.Host


@dataclass
class Cluster:
    """A running cluster: its config file and directory, nodes, and the daemons' processes."""

    root: Path
    conf: Path
    nodes: list[Node]
    procs: dict = field(default_factory=dict)  # daemon name -> Popen

    @property
    def env(self) -> dict:
        """os.environ with SLURM_CONF pointing at this cluster and no inherited job identity."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, argv: list[str], timeout: float, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run a command against this cluster under `timeout` (SIGTERM, then SIGKILL 5 s later); text output."""
        merged = {**self.env, **(env or {})}
        cmd = ["timeout", "-k", "5", str(int(timeout)), *argv]
        kwargs.setdefault("capture_output", True)
        return subprocess.run(cmd, env=merged, text=True, timeout=timeout + 15, **kwargs)

    def popen(self, argv: list[str], timeout: float, env: dict | None = None, **kwargs) -> subprocess.Popen:
        """Start a command against this cluster under `timeout`, without waiting."""
        merged = {**self.env, **(env or {})}
        return subprocess.Popen(["timeout", "-k", "5", str(int(timeout)), *argv], env=merged, text=True, **kwargs)

    def logs(self) -> str:
        """The tails of the daemons' log files, for failure messages."""
        out = []
        for log in sorted(self.root.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def jobs(self) -> list[str]:
        """Ids of the jobs the controller still knows as pending or running."""
        p = self.run(["squeue", "-h", "-o", "%i"], timeout=15)
        return p.stdout.split() if p.returncode == 0 else []

    def wait_idle(self, timeout: float = 30) -> None:
        """Wait until every node is idle (no jobs left on it); raise with the logs otherwise."""
        deadline = time.monotonic() + timeout
        states = ""
        while time.monotonic() < deadline:
            p = self.run(["sinfo", "-h", "-N", "-o", "%t"], timeout=15)
            states = p.stdout.split()
            if p.returncode == 0 and len(states) == len(self.nodes) and all(s == "idle" for s in states):
                return
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}\n{self.logs()}")
            time.sleep(0.2)
        raise RuntimeError(f"SLURM nodes not idle after {timeout} s (sinfo: {states})\n{self.logs()}")

    def stop(self) -> None:
        """Cancel leftover jobs, then SIGTERM each daemon by pid (SIGKILL after 10 s)."""
        with contextlib.suppress(Exception):
            ids = self.jobs()
            if ids:
                self.run(["scancel", "--signal=KILL", "--full", *ids], timeout=15)
                self.run(["scancel", *ids], timeout=15)
                deadline = time.monotonic() + 10
                while self.jobs() and time.monotonic() < deadline:
                    time.sleep(0.2)
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)


def write_conf(root: Path, nodes: list[Node], ctl_host: str, ctl_addr: str, cpus: int) -> Path:
    """A minimal slurm.conf (and mpi.conf) in root for these nodes; returns the slurm.conf path."""
    ctl_port, node_port = _free_port(), _free_port()
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [
        "ClusterName=ddtest",
        f"SlurmctldHost={ctl_host}({ctl_addr})",
        f"SlurmctldPort={ctl_port}",
        f"SlurmdPort={node_port}",
        "AuthType=auth/none",
        # job credential lifetime; also how long a requeued job waits before it may start again (default 120 s)
        "AuthInfo=cred_expire=5",
        # look at pending jobs (a requeued one whose begin time has come) every 2 s, not every 60 s
        "SchedulerParameters=sched_interval=2,bf_interval=2",
        "CredType=cred/none",
        "SlurmUser=root",
        "SlurmdUser=root",
        "MailProg=/bin/true",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}/%n",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        # the node's CPUs as configured here, not as probed: a 2-core machine can hold two 2-task steps
        "SlurmdParameters=config_overrides",
        "ReturnToService=2",
        "KillWait=5",
        # finished jobs leave the controller after 4 s; with MinJobAge < 8, `sbatch --wait` polls every 2 s
        # instead of backing off to 32 s (src/sbatch/sbatch.c, _job_wait)
        "MinJobAge=4",
        "InactiveLimit=0",
        "JobRequeue=1",
    ]
    for node in nodes:
        lines.append(f"NodeName={node.name} NodeAddr={node.addr} CPUs={cpus} RealMemory=4000 State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(n.name for n in nodes)} Default=YES "
                 "MaxTime=INFINITE State=UP OverSubscribe=NO")
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    # PMIx's client temp dir under the node's own spool dir: nodes on one machine must not share it
    (root / "mpi.conf").write_text(f"PMIxCliTmpDirBase={root / 'spool'}\n")
    return conf


@contextlib.contextmanager
def start(root: Path, net=None, cpus: int = 4, timeout: float = 30):
    """Start a cluster in directory root: one node (this machine) or one per host of a netns Network.

    With net (from netns.hosts(n, gateway=True)), slurmctld runs here at the gateway address and
    each host's slurmd runs in its namespace with its own hostname (n0, n1, ...) and /etc/hosts.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    hostname = socket.gethostname()
    if net is None:
        nodes = [Node(hostname, "127.0.0.1")]
        ctl_addr = "127.0.0.1"
    else:
        nodes = [Node(f"n{i}", h.addr, h) for i, h in enumerate(net.hosts)]
        ctl_addr = net.gateway
        if ctl_addr is None:
            raise ValueError("a multi-node cluster needs netns.hosts(..., gateway=True) to reach slurmctld")
    conf = write_conf(root, nodes, hostname, ctl_addr, cpus)
    cluster = Cluster(root, conf, nodes)
    env = cluster.env
    try:
        cluster.procs["slurmctld"] = subprocess.Popen(
            ["slurmctld", "-D", "-i", "-f", str(conf)], env=env,
            stdout=subprocess.DEVNULL, stderr=open(root / "slurmctld.stderr.log", "w"))
        for node in nodes:
            stderr = open(root / f"slurmd-{node.name}.stderr.log", "w")
            if node.host is None:
                argv = ["slurmd", "-D", "-N", node.name, "-f", str(conf)]
            else:
                hosts = root / f"hosts-{node.name}"
                hosts.write_text("127.0.0.1 localhost\n" + f"{ctl_addr} {hostname}\n"
                                 + "".join(f"{n.addr} {n.name}\n" for n in nodes))
                inner = (f"mount --bind {hosts} /etc/hosts && hostname {node.name} && "
                         f"exec slurmd -D -N {node.name} -f {conf}")
                argv = ["nsenter", f"--net=/run/netns/{node.host.ns}", "unshare", "--uts", "--mount",
                        "sh", "-c", inner]
            cluster.procs[f"slurmd {node.name}"] = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                                                      stderr=stderr)
        cluster.wait_idle(timeout)
        yield cluster
    finally:
        cluster.stop()
