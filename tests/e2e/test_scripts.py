"""launch/*.sh and docker/: the commands the scripts build, real 2-rank runs through them, and the
Dockerfile installing through the same scripts CI runs (.ci/run -> make test -> launch/setup.sh)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, FAST, base_env, free_port

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
TINY = ["model=mlp", "train.max_steps=10", "train.global_batch_size=64", "train.eval_every=0",
        "logging.tensorboard=false"]


def fake_nvidia_smi(folder: Path, gpus: int) -> Path:
    """A bin folder whose nvidia-smi lists `gpus` GPUs (none: it fails, as without a driver)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus))
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + (lines if gpus else "echo 'NVIDIA-SMI has failed' >&2; exit 9\n"))
    script.chmod(0o755)
    return folder


def script_env(fake_bin: Path | None = None) -> dict:
    """No venv on PATH (the scripts must find it themselves); a fake nvidia-smi first when given."""
    env = base_env()
    env["PATH"] = os.pathsep.join(([str(fake_bin)] if fake_bin else []) + ["/usr/local/bin", "/usr/bin", "/bin"])
    env.pop("VIRTUAL_ENV", None)
    if BIN.parent != ROOT / ".venv":
        env["DDTRAIN_VENV"] = str(BIN.parent)
    return env


def run_script(name: str, args: list[str], env: dict, cwd: Path, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAUNCH / name), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def launched(out: subprocess.CompletedProcess) -> list[str]:
    """The launcher command that ddtrain-launch printed (without the environment assignments)."""
    assert out.returncode == 0, out.stderr + out.stdout
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ddtrain-launch: "))
    words = shlex.split(line.removeprefix("ddtrain-launch: "))
    return [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]


# --- every script parses; the commands they build -------------------------------------------------------


@pytest.mark.parametrize("script", sorted(LAUNCH.glob("*.sh")), ids=lambda p: p.name)
def test_launch_script_parses_and_is_executable(script):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_local_counts_gpus_else_two_cpu_ranks_and_passes_overrides(tmp_path):
    train, sweep = str(BIN / "ddtrain-train"), str(BIN / "ddtrain-sweep")
    cpu = script_env(fake_nvidia_smi(tmp_path / "nogpu", 0))
    cmd = launched(run_script("local.sh", ["--dry-run", "model=mlp", "train.lr=0.1"], cpu, tmp_path))
    assert cmd[:3] == ["mpirun", "-np", "2"] and cmd[-3:] == [train, "model=mlp", "train.lr=0.1"]
    gpus = script_env(fake_nvidia_smi(tmp_path / "gpus", 4))
    cmd = launched(run_script("local.sh", ["--via", "torchrun", "--dry-run", "--sweep", "--", "a=1"], gpus, tmp_path))
    assert cmd == ["torchrun", "--nproc-per-node=4", "--nnodes=1", "--standalone", "--no-python", sweep, "a=1"]
    cmd = launched(run_script("local.sh", ["-n", "3", "--dry-run"], gpus, tmp_path))
    assert cmd[:3] == ["mpirun", "-np", "3"]
    bad = run_script("local.sh", ["-n"], cpu, tmp_path)
    assert bad.returncode != 0 and bad.stderr.strip() == "local.sh: error: -n needs a value (see --help)"


def test_mpirun_ranks_are_nodes_times_per_node(tmp_path):
    train = str(BIN / "ddtrain-train")
    hosts = tmp_path / "hosts"
    hosts.write_text("# two nodes\nn1 slots=4\n\nn2   # no slots: 2 CPU ranks\n")
    cpu = script_env(fake_nvidia_smi(tmp_path / "nogpu", 0))
    out = run_script("mpirun.sh", ["--hostfile", str(hosts), "--dry-run", "x=1"], cpu, tmp_path)
    cmd = launched(out)
    assert cmd[:3] == ["mpirun", "-np", "6"] and "--oversubscribe" not in cmd and cmd[-2:] == [train, "x=1"]
    assert "mpirun.sh: 2 node(s) x ranks: n1 slots=4,n2 slots=2" in out.stdout
    gpus = script_env(fake_nvidia_smi(tmp_path / "gpus", 8))
    out = run_script("mpirun.sh", ["--hostfile", str(hosts), "--dry-run"], gpus, tmp_path)
    assert launched(out)[:3] == ["mpirun", "-np", "16"] and "n1 slots=8,n2 slots=8" in out.stdout
    out = run_script("mpirun.sh", ["--hostfile", str(hosts), "-g", "1", "--sweep", "--dry-run"], gpus, tmp_path)
    assert launched(out)[:3] == ["mpirun", "-np", "2"] and launched(out)[-1] == str(BIN / "ddtrain-sweep")
    for args, message in ((["x=1"], "--hostfile FILE is required"),
                          (["--hostfile", str(tmp_path / "missing")], "not found")):
        bad = run_script("mpirun.sh", args, cpu, tmp_path)
        assert bad.returncode == 2 and bad.stderr.startswith("mpirun.sh: error: ") and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_horovodrun_uses_gloo_and_the_horovod_engine_by_default(tmp_path):
    train = str(BIN / "ddtrain-train")
    cpu = script_env(fake_nvidia_smi(tmp_path / "nogpu", 0))
    cmd = launched(run_script("horovodrun.sh", ["--dry-run", "model=mlp"], cpu, tmp_path))
    assert cmd == ["horovodrun", "-np", "2", "--gloo", "-H", "localhost:2", train, "dist.engine=horovod", "model=mlp"]
    cmd = launched(run_script("horovodrun.sh", ["--dry-run", "dist.engine=ddp"], cpu, tmp_path))
    assert cmd[-2:] == [train, "dist.engine=ddp"] and "dist.engine=horovod" not in cmd
    hosts = tmp_path / "hosts"
    hosts.write_text("n1 slots=4\nn2 slots=4\n")
    cmd = launched(run_script("horovodrun.sh", ["--hostfile", str(hosts), "--dry-run"], cpu, tmp_path))
    assert cmd[:6] == ["horovodrun", "-np", "8", "--gloo", "--hostfile", str(hosts)]
    assert "--mpi" not in cmd  # horovodrun --mpi is broken with Open MPI 5


# --- the Dockerfile installs through the scripts CI uses --------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    out, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = pending.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps rel (a path relative to the repository) out of the build context."""
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = rel.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(pre, pat) or fnmatch.fnmatch(pre, pat.removeprefix("**/"))
               or fnmatch.fnmatch(parts[i], pat.removeprefix("**/")) for pat in patterns
               for i, pre in enumerate(prefixes))


def test_dockerfile_is_well_formed():
    ins = instructions(DOCKERFILE)
    assert ins[0][0] == "FROM", "the first instruction must be FROM"
    for word, args in ins:
        assert word in {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "CMD", "ENTRYPOINT", "LABEL",
                        "EXPOSE", "USER", "SHELL", "VOLUME", "HEALTHCHECK", "STOPSIGNAL"}, word
        if word == "FROM":
            image = args.split()[0]
            name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
            assert tag and tag != "latest" or "@sha256:" in image, f"FROM {image}: pin a tag other than latest"
        if word in ("COPY", "ADD"):
            words = [w for w in args.split() if not w.startswith("--")]
            for src in words[:-1]:
                assert (ROOT / src).exists(), f"{word} {src}: not in the repository"
                if src != ".":
                    assert not dockerignored(src), f"{word} {src}: excluded by .dockerignore"
    # a host .venv in the context would be copied and setup.sh would keep its broken interpreter paths
    assert dockerignored(".venv") and dockerignored(".git") and dockerignored("ddtrain/__pycache__")
    assert not any(dockerignored(p) for p in ("launch/setup.sh", "launch/install-horovod.sh", "pyproject.toml",
                                              "ddtrain/train.py", "configs/train.yaml"))


def test_dockerfile_installs_through_the_ci_scripts():
    ins = instructions(DOCKERFILE)
    runs = [args for word, args in ins if word == "RUN"]
    setup = [i for i, r in enumerate(runs) if "launch/setup.sh" in r]
    horovod = [i for i, r in enumerate(runs) if "launch/install-horovod.sh" in r]
    assert setup and horovod and setup[0] < horovod[0], "setup.sh, then install-horovod.sh"
    assert "DDTRAIN_TORCH_SPEC" in runs[setup[0]] and "DDTRAIN_TORCH_SPEC" in (LAUNCH / "setup.sh").read_text()
    copied_to = next(args.split()[-1] for word, args in ins if word == "COPY" and args.split()[0] == ".")
    # every repository script the image runs exists and is executable
    text = " ".join(args for word, args in ins if word in ("RUN", "CMD", "ENTRYPOINT"))
    referenced = set(re.findall(r"(?:%s/)?\b(launch/[\w.-]+)" % re.escape(copied_to), text))
    assert {"launch/setup.sh", "launch/install-horovod.sh"} <= referenced
    for rel in referenced:
        assert (ROOT / rel).is_file() and os.access(ROOT / rel, os.X_OK), f"{rel}: missing or not executable"


def makefile_recipes() -> dict[str, tuple[list[str], list[str]]]:
    """target -> (prerequisites, recipe lines) of the repository's Makefile."""
    targets: dict = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        if line.startswith("\t") and current:
            targets[current][1].append(line.strip())
            continue
        m = re.match(r"^([\w.-]+)\s*:(?!=)\s*(.*)$", line)
        current = m.group(1) if m else None
        if m:
            targets[current] = (m.group(2).split(), [])
    return targets


def test_ci_runs_make_test_which_runs_setup():
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and
          not ln.startswith("#")]
    assert "make test" in ci, ".ci/run must run `make test`"
    targets = makefile_recipes()
    seen, todo, recipes = set(), ["test"], []
    while todo:
        target = todo.pop()
        if target in seen or target not in targets:
            continue
        seen.add(target)
        prereqs, lines = targets[target]
        todo += prereqs
        recipes += lines
    assert any(re.search(r"\blaunch/setup\.sh\b", r) for r in recipes), "make test must run launch/setup.sh"


# --- real 2-rank runs through the scripts -----------------------------------------------------------------


def train_through(tmp_path, mnist1d_cache, script: str, args: list[str], extra_env: dict | None = None) -> dict:
    run_dir = tmp_path / "run"
    env = script_env(fake_nvidia_smi(tmp_path / "nogpu", 0))
    env.update(CUDA_VISIBLE_DEVICES="", **(extra_env or {}))
    out = run_script(script, [*args, *FAST, *TINY, f"dataset.cache_dir={mnist1d_cache}", f"hydra.run.dir={run_dir}"],
                     env, tmp_path, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_local_sh_trains_on_two_cpu_ranks(tmp_path, mnist1d_cache):
    summary = train_through(tmp_path, mnist1d_cache, "local.sh", [])  # no GPU: 2 CPU ranks by default
    assert summary["world_size"] == 2 and summary["ranks_identical"] and summary["launcher"] == "openmpi"


@pytest.mark.slow
def test_mpirun_sh_trains_from_a_hostfile(tmp_path, mnist1d_cache):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    summary = train_through(tmp_path, mnist1d_cache, "mpirun.sh", ["--hostfile", str(hosts)])
    assert summary["world_size"] == 2 and summary["ranks_identical"] and summary["launcher"] == "openmpi"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("horovod") is None, reason="Horovod is not installed: launch/install-horovod.sh")
def test_horovodrun_sh_trains_on_two_ranks(tmp_path, mnist1d_cache):
    from ddtrain.config import ENGINES

    if "horovod" in ENGINES:
        summary = train_through(tmp_path, mnist1d_cache, "horovodrun.sh", [])
    else:  # until the Horovod engine exists: DDP under horovodrun, rendezvous at an exported address
        summary = train_through(tmp_path, mnist1d_cache, "horovodrun.sh", ["dist.engine=ddp"],
                                {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})
    assert summary["world_size"] == 2 and summary["ranks_identical"] and summary["launcher"] == "horovodrun"
