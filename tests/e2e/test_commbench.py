"""ddtrain-bench allreduce and overlap: the bandwidth formulas, the size list, and real 2-rank runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import BIN, base_env, free_port
from ddtrain.perf import allreduce as commbench
from ddtrain.perf import bandwidth
from ddtrain.perf import overlap as overlapbench
from ddtrain.errors import UserError

HOROVOD_INSTALLED = importlib.util.find_spec("horovod") is not None
SMALL = ["--max-bytes", "1M", "--factor", "4", "--iters", "3", "--warmup", "1", "--memcpy-bytes", "4M",
         "--memcpy-repeats", "2", "--ref-bytes", "1M"]


# ----------------------------------------------------------------------------- pure helpers


def test_default_sizes_are_powers_of_two_from_4_bytes_to_256_mib():
    sizes = bandwidth.message_sizes(4, 256 << 20, 2)
    assert sizes[0] == 4 and sizes[-1] == 256 << 20 and len(sizes) == 27
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:]))


def test_sizes_are_whole_float32s_increasing_and_include_max():
    sizes = bandwidth.message_sizes(6, 1000, 1.5)
    assert all(s % 4 == 0 for s in sizes)
    assert sizes == sorted(set(sizes)) and sizes[0] == 4 and sizes[-1] <= 1000
    assert bandwidth.message_sizes(4, 64, 4) == [4, 16, 64]
    assert bandwidth.message_sizes(1024, 1024, 2) == [1024]


@pytest.mark.parametrize("args", [(2, 64, 2), (64, 4, 2), (4, 64, 1.0)])
def test_bad_size_options_are_user_errors(args):
    with pytest.raises(UserError):
        bandwidth.message_sizes(*args)


def test_bus_bandwidth_is_algbw_times_2_n_minus_1_over_n():
    assert bandwidth.bus_bandwidth(10.0, 2) == pytest.approx(10.0)
    assert bandwidth.bus_bandwidth(10.0, 4) == pytest.approx(15.0)
    assert bandwidth.bus_bandwidth(10.0, 8) == pytest.approx(17.5)
    assert bandwidth.bus_bandwidth(10.0, 1) == 0.0
    assert bandwidth.algorithm_bandwidth(1 << 20, 0.5) == 2 << 20


def test_byte_counts_parse_with_binary_suffixes():
    assert [bandwidth.parse_bytes(t) for t in ("4", "64K", "1M", "256MiB", "1G", "2m")] == \
        [4, 64 << 10, 1 << 20, 256 << 20, 1 << 30, 2 << 20]
    with pytest.raises(UserError):
        bandwidth.parse_bytes("lots")
    assert bandwidth.reference_size([4, 1 << 20, 64 << 20, 128 << 20], 64 << 20) == 64 << 20
    assert bandwidth.reference_size([4, 1 << 20], 64 << 20) == 1 << 20
    with pytest.raises(UserError):
        commbench.parse_libraries("gloo,shm")


class _FakeEngine:
    """Rank 0 of a world of 2 whose peer (rank 1) holds the same pattern + 2; `broken` skips the peer's share."""

    def __init__(self, broken: bool):
        self.broken = broken

    def all_reduce_sum(self, t, name=None):
        if not self.broken:
            t.add_((torch.arange(t.numel()) % 7).float() + 2)
        return t

    def barrier(self):
        pass


def _FakeColl(broken: bool):
    return commbench.Library("fake", _FakeEngine(broken), torch.device("cpu"))


def test_correctness_check_tells_a_right_sum_from_a_wrong_one():
    assert commbench.check_once(_FakeColl(broken=False), 4096, rank=0, world_size=2) is True
    assert commbench.check_once(_FakeColl(broken=True), 4096, rank=0, world_size=2) is False


def test_wrong_sums_are_flagged_in_the_rows():
    d = SimpleNamespace(rank=0, world_size=2, all_gather_object=lambda o: [o, o])
    rows = commbench.bench_library(_FakeColl(broken=True), d, [4, 64], iters=1, warmup=0)
    assert [r["correct"] for r in rows] == [False, False]
    rows = commbench.bench_library(_FakeColl(broken=False), d, [4, 64], iters=1, warmup=0)
    assert [r["correct"] for r in rows] == [True, True]


def test_missing_horovod_is_a_skip_with_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "horovod", None)  # import horovod.torch now raises ImportError
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    d = SimpleNamespace(env=SimpleNamespace(is_mpi=True, launcher="openmpi"), world_size=2)
    reason = commbench.availability("horovod", d)
    assert "not installed" in reason and "launch/install-horovod.sh" in reason


def test_mpi_library_needs_an_mpi_launcher():
    d = SimpleNamespace(env=SimpleNamespace(is_mpi=False, launcher="torchrun"), world_size=2)
    assert "mpirun" in commbench.availability("mpi", d)


def test_abba_order_and_hidden_fraction():
    assert overlapbench.abba_order(2) == [True, False, False, True]
    assert overlapbench.abba_order(3) == [True, False, False, True, True, False]
    assert overlapbench.hidden_fraction(12.0, 10.0, 4.0) == pytest.approx(0.5)
    assert overlapbench.hidden_fraction(10.0, 10.0, 4.0) == 1.0
    assert overlapbench.hidden_fraction(14.0, 10.0, 4.0) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- real 2-rank runs


def _mpirun(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none", str(BIN / "ddtrain-bench"), *args]
    return subprocess.run(cmd, env=base_env(), cwd=cwd, text=True, capture_output=True, timeout=timeout)


def _check_rows(engine: dict, sizes: list[int], world: int, ceiling: float) -> None:
    rows = engine["rows"]
    assert [r["bytes"] for r in rows] == sizes
    for r in rows:
        assert r["correct"] is True
        assert r["time_us"] > 0 and r["algbw_GBps"] > 0 and r["busbw_GBps"] > 0
        assert r["time_us"] == max(r["time_us_per_rank"]) and len(r["time_us_per_rank"]) == world
        algbw = r["bytes"] / (r["time_us"] * 1e-6) / 1e9
        assert r["algbw_GBps"] == pytest.approx(algbw, rel=1e-9)
        assert r["busbw_GBps"] == pytest.approx(algbw * 2 * (world - 1) / world, rel=1e-9)
    ref = next(r for r in rows if r["bytes"] == engine["ref_bytes"])
    assert engine["busbw_fraction_of_memcpy"] == pytest.approx(ref["busbw_GBps"] * 1e9 / ceiling, rel=1e-9)


@pytest.mark.slow
def test_allreduce_bench_under_mpirun_every_available_library(tmp_path):
    out = tmp_path / "allreduce.json"
    p = _mpirun(["allreduce", *SMALL, "--json", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    res = json.loads(out.read_text())
    sizes = bandwidth.message_sizes(4, 1 << 20, 4)
    assert res["sizes"] == sizes and res["world_size"] == 2 and res["launcher"] == "openmpi"
    ceiling = res["memcpy"]["cpu"]["bytes_per_s"]
    assert ceiling > 0 and len(res["memcpy"]["cpu"]["concurrent_per_rank_bytes_per_s"]) == 2
    engines = res["libraries"]
    assert list(engines) == ["gloo", "nccl", "mpi", "horovod"]
    expected_ok = ["gloo", "mpi"] + (["horovod"] if HOROVOD_INSTALLED else [])
    for name in expected_ok:
        assert engines[name]["status"] == "ok", engines[name]
        _check_rows(engines[name], sizes, 2, res["memcpy"][engines[name]["device"]]["bytes_per_s"])
        assert f"# library {name} (cpu)" in p.stdout
        assert f"{name:8s} busbw at 1 MiB:" in p.stdout
    if not HOROVOD_INSTALLED:
        assert engines["horovod"]["status"] == "skipped"
        assert "launch/install-horovod.sh" in engines["horovod"]["reason"]
    if not torch.cuda.is_available():
        assert engines["nccl"] == {"status": "skipped", "reason": "no CUDA device visible (nccl needs GPUs)"}
    assert "memcpy cpu:" in p.stdout and "nccl     skipped: no CUDA" in p.stdout


@pytest.mark.slow
def test_allreduce_bench_under_torchrun_has_gloo_and_skips_mpi(tmp_path):
    out = tmp_path / "allreduce.json"
    cmd = [str(BIN / "torchrun"), "--nproc-per-node=2", f"--master-port={free_port()}", "--no-python",
           str(BIN / "ddtrain-bench"), "allreduce", *SMALL, "--max-bytes", "4K", "--libraries", "gloo,mpi,horovod",
           "--json", str(out)]
    p = subprocess.run(cmd, env=base_env(), cwd=tmp_path, text=True, capture_output=True, timeout=180)
    assert p.returncode == 0, p.stderr + p.stdout
    res = json.loads(out.read_text())
    libs = res["libraries"]
    assert list(libs) == ["gloo", "mpi", "horovod"]
    _check_rows(libs["gloo"], [4, 16, 64, 256, 1024, 4096], 2, res["memcpy"]["cpu"]["bytes_per_s"])
    assert libs["mpi"]["status"] == "skipped" and "mpirun" in libs["mpi"]["reason"]
    assert libs["horovod"]["status"] == "skipped"


@pytest.mark.parametrize("args,message", [
    (["allreduce"], "needs at least 2 ranks"),
    (["allreduce", "--libraries", "gloo,shm"], "--libraries=gloo,shm names shm"),
    (["allreduce", "--engines", "gloo,shm"], "--libraries=gloo,shm names shm"),  # the name before 0.2
    (["allreduce", "--max-bytes", "2", "--min-bytes", "8"], "--max-bytes=2 is below --min-bytes=8"),
    (["overlap", "--engines", "fsdp"], "--engines=fsdp names fsdp"),
    (["overlap"], "needs at least 2 ranks"),
])
def test_bad_input_is_one_line(tmp_path, args, message):
    p = subprocess.run([str(BIN / "ddtrain-bench"), *args], env=base_env(), cwd=tmp_path, text=True,
                       capture_output=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("ddtrain: error: ") and message in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def _engine_expected(name: str) -> bool:
    """ddp and mpi always (mpirun); horovod when it is installed."""
    return name != "horovod" or HOROVOD_INSTALLED


@pytest.mark.slow
def test_overlap_bench_times_sync_and_no_sync_steps(tmp_path):
    out = tmp_path / "overlap.json"
    p = _mpirun(["overlap", "--models", "mlp", "--steps", "2", "--warmup", "1", "--repeats", "2",
                 "--comm-iters", "3", "--json", str(out), "model.hidden_sizes=[100,100]"], tmp_path)
    assert p.returncode == 0, p.stderr + p.stdout
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and list(res["engines"]) == ["ddp", "horovod", "mpi"]
    mlp_bytes = 4 * (784 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10)
    for name, e in res["engines"].items():
        if not _engine_expected(name):
            assert e["status"] == "skipped" and e["reason"], e
            assert f"{name:8s} skipped:" in p.stdout
            continue
        assert e["status"] == "ok", e
        m = e["models"]["mlp"]
        assert m["grad_bytes"] == mlp_bytes
        # the synced step really exchanged gradients, the other really did not
        assert m["identical_after_sync"] is True and m["identical_after_nosync"] is False
        assert [b["sync"] for b in m["blocks"]] == [True, False, False, True]
        assert all(b["ms"] > 0 for b in m["blocks"])
        assert m["t_sync_ms"] > 0 and m["t_nosync_ms"] > 0 and m["t_comm_alone_ms"] > 0
        assert m["not_hidden_ms"] == pytest.approx(m["t_sync_ms"] - m["t_nosync_ms"])
        assert m["hidden_fraction"] == pytest.approx(1 - m["not_hidden_ms"] / m["t_comm_alone_ms"])
        assert f"{name:8s} mlp" in p.stdout
