"""Open MPI across the netns hosts of tests/helpers/netns.py, as on a cluster whose nodes are reached by ssh.

    with netns.hosts(2) as net:
        mpi = MpiHosts(net, tmp_dir)                  # writes the rsh agent and one /etc/hosts per host
        p = mpi.run(0, ["mpirun", "--host", "h0:1,h1:1", "-np", "2", ...], env=mpi.env(), timeout=300)

Each host gets its own hostname (a UTS namespace) and its own /etc/hosts (a mount namespace) that
maps that hostname to 127.0.1.1, as Debian and Ubuntu do: the case where "the address of my
hostname" is loopback. mpirun runs inside host 0; Open MPI starts its daemon on every other host
through `--mca plm_rsh_agent <agent>` (here: PRTE_MCA_plm_ssh_agent, its current name), a script that enters the
target host's namespaces instead of ssh-ing there. MPI's own traffic stays on the test subnet
(btl tcp,self; oob_tcp_if_include and, unless told otherwise, btl_tcp_if_include).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ENTER = 'mount --bind {hosts} /etc/hosts && hostname {name} && {run}'


class MpiHosts:
    """The agent script and per-host files for one netns.Network, in `directory`."""

    def __init__(self, net, directory: Path):
        self.net = net
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for h in net.hosts:
            (self.directory / f"hosts.{h.name}").write_text(f"127.0.0.1 localhost\n127.0.1.1 {h.name}\n")
        cases = " ".join(f"{h.name}) ns={h.ns} ;;" for h in net.hosts)
        self.agent = self.directory / "rsh-agent.sh"
        # Open MPI calls `<agent> <host> <shell command>`, as it would call ssh
        self.agent.write_text(
            "#!/bin/sh\n"
            "host=$1; shift\n"
            f'case $host in {cases} *) echo "rsh-agent: unknown host $host" >&2; exit 255 ;; esac\n'
            f'exec nsenter --net=/run/netns/$ns unshare --uts --mount sh -c '
            f'"{ENTER.format(hosts=self.directory / "hosts.$host", name="$host", run="$*")}"\n')
        self.agent.chmod(0o755)

    def env(self, btl_if_include: bool = True, **extra) -> dict:
        """The MCA settings of the issue's harness as environment variables (PRTE_MCA_*: Open MPI 5's launcher)."""
        env = {"PRTE_MCA_plm_ssh_agent": str(self.agent), "PRTE_MCA_oob_tcp_if_include": self.net.subnet,
               "OMPI_MCA_btl": "tcp,self", **extra}
        if btl_if_include:
            env["OMPI_MCA_btl_tcp_if_include"] = self.net.subnet
        return env

    def enter(self, index: int, argv: list[str]) -> list[str]:
        """argv run inside host `index`: its network, its hostname, its /etc/hosts."""
        h = self.net.hosts[index]
        script = ENTER.format(hosts=self.directory / f"hosts.{h.name}", name=h.name, run='exec "$@"')
        return ["nsenter", f"--net=/run/netns/{h.ns}", "unshare", "--uts", "--mount", "sh", "-c", script, "sh", *argv]

    def hostfile(self, slots: int = 1) -> Path:
        """An Open MPI host file naming every host."""
        path = self.directory / "hostfile"
        path.write_text("".join(f"{h.name} slots={slots}\n" for h in self.net.hosts))
        return path

    def run(self, index: int, argv: list[str], env: dict, timeout: float, cwd=None) -> subprocess.CompletedProcess:
        """Run argv inside host `index` to completion (text output, under `timeout`)."""
        merged = {**os.environ, **env}
        return subprocess.run(["timeout", "-k", "5", str(int(timeout)), *self.enter(index, argv)], env=merged,
                              cwd=cwd, text=True, capture_output=True, timeout=timeout + 15)
