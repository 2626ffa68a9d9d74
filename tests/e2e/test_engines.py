"""Engines ddp, horovod and mpi: the same model as one process (conftest.one_rank_model), overlap, exact averages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import BIN, FAST, EQUIV, assert_same_model, base_env, free_port

ENGINES = ["ddp", "horovod", "mpi"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_every_engine_trains_the_same_model(launch, one_rank_model, engine, tmp_path):
    models = {}
    for accum in (1, 2):
        r = launch([*EQUIV, f"dist.engine={engine}", f"train.grad_accum_steps={accum}"], ranks=2, via="mpirun",
                   run_dir=tmp_path / f"accum{accum}")
        assert r.returncode == 0, r.stderr
        s = r.summary
        assert (s["engine"], s["world_size"], s["grad_accum_steps"]) == (engine, 2, accum)
        assert s["ranks_identical"] is True  # every rank holds bit-identical parameters
        models[accum] = r.checkpoint(24)["model"]
        assert_same_model(models[accum], one_rank_model)
    assert_same_model(models[1], models[2])


@pytest.mark.slow
def test_horovodrun_with_gloo_controller(one_rank_model, mnist1d_cache, tmp_path):
    """`horovodrun -np 2 -H localhost:2 --gloo`: no MPI involved, same model."""
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo", "-p", str(free_port()),
           str(BIN / "ddtrain-train"), *FAST, f"dataset.cache_dir={mnist1d_cache}", *EQUIV, "dist.engine=horovod",
           f"hydra.run.dir={run_dir}"]
    env = base_env()
    env["PATH"] = f"{BIN}:{env['PATH']}"
    p = subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert (s["launcher"], s["backend"], s["world_size"], s["ranks_identical"]) == (
        "horovodrun", "horovod/gloo", 2, True)
    ckpt = torch.load(run_dir / "checkpoints" / "step_00000024.pt", weights_only=True)
    assert_same_model(ckpt["model"], one_rank_model)


@pytest.mark.slow
def test_mpi_engine_overlaps_backward_and_averages_exactly(tmp_path):
    """Buckets start from autograd hooks while backward still runs; the result is (g0 + g1) / 2 bit for bit."""
    script = str(BIN.parent.parent / "tests" / "helpers" / "mpi_engine_check.py")
    p = subprocess.run([str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none",
                        sys.executable, script], env=base_env(), text=True, capture_output=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    kinds = [e[0] for e in out["events"]]
    assert out["buckets"] >= 3
    first_start, end = kinds.index("start"), kinds.index("backward_end")
    # the first bucket's allreduce was started before backward finished, with gradients still to come
    assert first_start < end and "grad" in kinds[first_start:end]
    # every bucket started, in order, and all were waited for after backward
    assert [e[1] for e in out["events"] if e[0] == "start"] == list(range(out["buckets"]))
    assert kinds[-1] == "waited"
    assert out["exact"] is True


@pytest.mark.slow
@pytest.mark.parametrize("engine,compression", [("ddp", "fp16"), ("horovod", "fp16")])
def test_compressed_gradients_stay_close(launch, one_rank_model, engine, compression):
    r = launch([*EQUIV, f"dist.engine={engine}", f"dist.compression={compression}"], ranks=2, via="mpirun")
    assert r.returncode == 0, r.stderr
    assert r.summary["ranks_identical"] is True
    model = r.checkpoint(24)["model"]
    for name in one_rank_model:  # the averaged gradient is rounded to fp16 on the wire
        torch.testing.assert_close(model[name], one_rank_model[name], rtol=2e-3, atol=2e-3, msg=name)
    assert any(not torch.equal(model[n], one_rank_model[n]) for n in one_rank_model)  # compression really happened


@pytest.mark.slow
def test_bf16_compression_needs_nccl(launch):
    r = launch(["model=mlp", "train.max_steps=2", "dist.compression=bf16"], ranks=2)  # env:// ranks: both outputs
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("ddtrain: error:")]
    assert lines, r.stderr[-2000:]
    assert lines == ["ddtrain: error: dist.compression=bf16 needs NCCL (CUDA GPUs); this run uses gloo: "
                     "use dist.compression=fp16 or none"] * 2


@pytest.mark.slow
def test_powersgd_trains(launch):
    r = launch(["model=mlp", "train.max_steps=40", "train.global_batch_size=64", "train.eval_every=0",
                "logging.tensorboard=false", "dist.compression=powersgd"], ranks=2, via="mpirun")
    assert r.returncode == 0, r.stderr
    s = r.summary
    assert s["ranks_identical"] is True and s["final_train_loss"] < 2.2  # from ln(10) = 2.30 at the start


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["horovod", "mpi"])
def test_sweep_runs_on_the_engine(engine, mnist1d_cache, tmp_path):
    """The sweep's memory probe (a backward without exchange) must not upset the engine's bookkeeping."""
    cmd = [str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none", str(BIN / "ddtrain-sweep"),
           *FAST, f"dataset.cache_dir={mnist1d_cache}", "model=mlp", f"dist.engine={engine}",
           "sweep.batch_sizes=[32,64]", "sweep.budget=steps:12", "sweep.measure_steps=4",
           "sweep.warmup_steps=2", "sweep.target=0.2", "logging.tensorboard=false", f"hydra.run.dir={tmp_path}"]
    p = subprocess.run(cmd, env=base_env(), text=True, capture_output=True, timeout=240, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert sorted(r["batch_size"] for r in rows) == [32, 64]
    assert all(r["status"] in ("ok", "target_not_reached") and r["steps"] == 12 for r in rows)


def _run_without(module: str, engine: str, tmp_path, ranks_env: dict | None = None):
    """ddtrain-train with `module` made unimportable, as on a machine where it is not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; "
            f"sys.argv = ['ddtrain-train', 'dist.engine={engine}', 'hydra.run.dir={tmp_path}']; "
            "from ddtrain.train import main; main()")
    env = base_env()
    env.update(ranks_env or {})
    return subprocess.run([sys.executable, "-c", code], env=env, text=True, capture_output=True, timeout=60,
                          cwd=tmp_path)


@pytest.mark.parametrize("module,engine,hint", [("horovod", "horovod", "launch/install-horovod.sh"),
                                                ("mpi4py", "mpi", "pip install 'ddtrain[mpi]'")])
def test_missing_engine_says_how_to_install_it(tmp_path, module, engine, hint):
    p = _run_without(module, engine, tmp_path)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ddtrain: error: dist.engine={engine} needs ") and hint in lines[0]


def test_mpi_engine_without_an_mpi_launcher_is_refused(tmp_path, mnist1d_cache):
    """Two env:// ranks (no MPI launcher) with dist.engine=mpi: MPI sees worlds of one; say so, don't train twice."""
    procs = []
    for rank in range(2):
        env = dict(base_env(), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        procs.append(subprocess.Popen([str(BIN / "ddtrain-train"), "dist.engine=mpi", f"hydra.run.dir={tmp_path}",
                                       f"dataset.cache_dir={mnist1d_cache}"], env=env, text=True, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2
        assert err.strip().splitlines()[-1].startswith(
            "ddtrain: error: MPI reports 1 rank(s) but the launcher (torchrun) says 2")
    assert not (tmp_path / "summary.json").exists()


def test_unsupported_compression_names_the_key(tmp_path):
    p = subprocess.run([str(BIN / "ddtrain-train"), "dist.engine=mpi", "dist.compression=fp16",
                        f"hydra.run.dir={tmp_path}"], env=base_env(), text=True, capture_output=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip() == ("ddtrain: error: dist.compression=fp16 is not supported by dist.engine=mpi; "
                                "choose one of: none")


@pytest.mark.slow
def test_mpi_engine_shows_local_gradients_for_the_noise_scale(launch, tmp_path):
    """The gradient noise scale needs each rank's own gradient: the mpi engine gives the same figure as DDP's hook."""
    common = ["model=mlp", "train.max_steps=20", "train.global_batch_size=64", "train.eval_every=0",
              "logging.tensorboard=false", "train.noise_scale=true"]
    found = {}
    for engine in ("ddp", "mpi"):
        r = launch([*common, f"dist.engine={engine}"], ranks=2, via="mpirun", run_dir=tmp_path / engine)
        assert r.returncode == 0, r.stderr
        found[engine] = r.summary["noise_scale"]
    assert found["ddp"] is not None and found["ddp"] > 0
    assert found["mpi"] == pytest.approx(found["ddp"], rel=1e-4)
