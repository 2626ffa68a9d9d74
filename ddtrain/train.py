"""ddtrain-train: compose the config, detect the launcher, build the components, fit, summarise.

Runs as one process or unchanged under mpirun, srun and torchrun (rank and world size come
from the launcher's environment).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from ddtrain import cli, failure
from ddtrain.config import config_dir, per_rank_batch_size, register_configs, total_steps, validate

log = logging.getLogger("ddtrain")
register_configs()


def parameter_digest(model) -> str:
    """SHA-256 of the model's parameters and buffers: equal digests mean bit-identical models."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def loop_settings(cfg: DictConfig, steps: int, data_on_device: bool, flops: int | None, peak: float | None):
    """The training loop's cadence and options, from the config and what run() measured."""
    from ddtrain.trainer import LoopSettings

    tc = cfg.train
    return LoopSettings(
        total_steps=steps, grad_accum_steps=tc.grad_accum_steps, log_every=tc.log_every, eval_every=tc.eval_every,
        evals_per_epoch=tc.evals_per_epoch, checkpoint_every=cfg.checkpoint.every_steps,
        throughput_warmup_steps=tc.throughput_warmup_steps, throughput_measure_steps=tc.throughput_measure_steps,
        grad_clip=tc.grad_clip, precision=tc.precision, progress=cfg.logging.progress,
        channels_last=tc.channels_last, data_on_device=data_on_device, num_workers=cfg.dataset.num_workers,
        prefetch_factor=cfg.dataset.prefetch_factor, flops_per_sample=flops, peak_flops_per_device=peak,
        target_accuracy=tc.target_accuracy, time_budget_s=tc.time_budget_s, noise_scale=tc.noise_scale,
        stop_on_nan=tc.stop_on_nan)


def run(cfg: DictConfig, hydra_output_dir: str, d=None, probe_memory: bool = False) -> dict:
    """Train one model as configured; returns the summary written to summary.json.

    With `d` (a ddtrain.dist.Dist) the existing process group is reused and left open, so one
    job can run several trainings (benchmarks, sweeps); without it run() sets up and tears down.
    With probe_memory, a first forward/backward checks that the batch fits; if it does not on any
    rank, every rank raises ddtrain.errors.OutOfMemory before anything is written.
    """
    import torch

    from ddtrain import dist as ddist
    from ddtrain.checkpoint import Checkpointer, load
    from ddtrain.data.feed import load_placed
    from ddtrain.data.sharding import ShardedBatches
    from ddtrain.engines import build_engine
    from ddtrain.env import detect
    from ddtrain.errors import UserError
    from ddtrain.hardware import lookup_gpu, peak_flops
    from ddtrain.metrics import MetricsSink, peak_memory_bytes, write_json_atomic
    from ddtrain.models import build_model
    from ddtrain.models.flops import flops_per_sample
    from ddtrain.optim import build_optimizer, build_scheduler, scaled_lr
    from ddtrain.trainer import Trainer

    t_start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # per run, also when a sweep runs several in one process
    own_group = d is None
    if own_group:
        env = detect(os.environ)
        validate(cfg, env.world_size)
        d = ddist.init(env, cfg.dist.backend, cfg.dist.timeout_s, cfg.dist.engine, cfg.dist.bucket_cap_mb)
    else:
        validate(cfg, d.world_size)
    env = d.env
    # Hydra resolves ${now:} per process: rank 0's run directory is everyone's
    run_dir = Path(d.broadcast_object(str(Path(hydra_output_dir).resolve())))
    cli.setup_logging(run_dir, d.rank, d.world_size, cfg.logging.level)
    if own_group:  # what a failure message says: failures/, the checkpoints, every rank's host
        failure.attach(d, run_dir, run_dir / "checkpoints", "no checkpoint written yet" if
                       cfg.checkpoint.every_steps else "no checkpoint (checkpoint.every_steps=0)")
    log.info("run directory %s; %d rank(s) via %s; device %s; backend %s", run_dir, d.world_size,
             env.launcher, d.device, d.backend)

    tc = cfg.train
    per_rank = per_rank_batch_size(tc.global_batch_size, d.world_size, tc.grad_accum_steps)
    splits, on_device = load_placed(cfg.dataset, d.device)
    n_train = splits.train_x.shape[0]
    if n_train < tc.global_batch_size:
        raise UserError(f"dataset={cfg.dataset.name} has {n_train} training samples, fewer than one global batch "
                        f"(train.global_batch_size={tc.global_batch_size}); use a smaller batch or a larger dataset")
    steps = total_steps(tc.epochs, tc.max_steps, n_train, tc.global_batch_size)
    steps_per_epoch = n_train / tc.global_batch_size

    torch.manual_seed(tc.seed)  # same initial model on every rank (DDP also broadcasts rank 0's)
    model = build_model(cfg.model, tuple(splits.input_shape), splits.num_classes).to(d.device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if d.device.type == "cuda":
        torch.backends.cudnn.benchmark = tc.cudnn_benchmark
    fps = flops_per_sample(model, tuple(splits.input_shape), splits.num_classes, device=d.device)
    gpu = lookup_gpu(torch.cuda.get_device_name(d.device)) if d.device.type == "cuda" else None
    engine = build_engine(cfg.dist.engine, d, cfg.dist.bucket_cap_mb, cfg.dist.compression)
    wrapped = engine.wrap(model)
    if tc.compile:
        wrapped = torch.compile(wrapped)  # after DDP wraps it, so the compiler sees the bucket boundaries
    lr = scaled_lr(tc.lr, tc.global_batch_size, tc.base_batch_size, tc.lr_scaling)
    optimizer = engine.wrap_optimizer(build_optimizer(model, cfg.optimizer, lr), model, tc.grad_accum_steps)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps, steps_per_epoch, warmup_start_factor=tc.lr / lr)
    scaler = torch.amp.GradScaler(d.device.type, enabled=tc.precision == "fp16")

    checkpointer = Checkpointer(run_dir / "checkpoints", d, cfg.checkpoint.keep_last)
    resume_path = checkpointer.find_resume(cfg.checkpoint.resume)
    state = load(resume_path, d.device) if resume_path is not None else None
    if state is not None and state.get("global_batch_size") != tc.global_batch_size:
        raise UserError(f"checkpoint {resume_path} was written with train.global_batch_size="
                        f"{state.get('global_batch_size')}; resume with the same value or checkpoint.resume=never")
    settings = loop_settings(cfg, steps, on_device, fps, peak_flops(gpu, tc.precision) if gpu else None)
    batches = ShardedBatches(splits.train_x, splits.train_y, seed=tc.seed, global_batch_size=tc.global_batch_size,
                             rank=d.rank, world_size=d.world_size, grad_accum_steps=tc.grad_accum_steps)
    trainer = Trainer(settings=settings, dist=d, model=wrapped, engine=engine, optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, batches=batches, splits=splits, sink=None,
                      checkpointer=checkpointer)
    if probe_memory:
        trainer.probe_memory()
    trainer.sink = sink = MetricsSink(run_dir, d.is_main, cfg.logging.tensorboard, OmegaConf.to_yaml(cfg))

    start_step, resumed_from = 0, None
    if state is not None:
        trainer.load_state_dict(state)
        checkpointer.restore_rng(state)
        start_step, resumed_from = int(state["step"]), str(resume_path)
        log.info("resumed from %s at step %d", resume_path, start_step)
    engine.broadcast_state(model, optimizer)  # every rank starts from rank 0's model and optimizer state

    log.info("training %s on %s: %d steps, global batch %d (%d per rank x %d rank(s) x %d accumulation), lr %.4g",
             cfg.model.name, cfg.dataset.name, steps, tc.global_batch_size, per_rank, d.world_size,
             tc.grad_accum_steps, lr)
    figures = trainer.fit(start_step)

    # distributed: prove the ranks ended with bit-identical models
    digests = d.all_gather_object(parameter_digest(model))
    summary = {
        "world_size": d.world_size, "global_batch_size": tc.global_batch_size, "per_rank_batch_size": per_rank,
        "grad_accum_steps": tc.grad_accum_steps, **figures, "lr": lr,
        "wall_s": time.perf_counter() - t_start, "engine": engine.name if d.active else cfg.dist.engine,
        "backend": d.backend, "device": str(d.device), "precision": tc.precision,
        "peak_memory_bytes": max(d.all_gather_object(peak_memory_bytes(d.device))),
        "torch_version": torch.__version__, "model": cfg.model.name, "dataset": cfg.dataset.name,
        "launcher": env.launcher, "run_dir": str(run_dir), "resumed_from": resumed_from,
        "flops_per_sample": fps, "gpu": gpu.name if gpu else None,
        "peak_flops_per_device": settings.peak_flops_per_device, "channels_last": tc.channels_last,
        "compile": tc.compile, "data_on_device": on_device,
        "parameter_digest": digests[0], "ranks_identical": len(set(digests)) == 1,
    }
    if d.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    sink.close()
    if not summary["ranks_identical"]:
        log.error("ranks ended with different parameters: %s", digests)
    cli.print_summary(summary, run_dir, cfg.logging.tensorboard, d.is_main)
    d.barrier()
    if own_group:
        ddist.shutdown(d)
    return summary


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    """Hydra's task function: run, turning bad input into one line and a non-zero exit."""
    from hydra.core.hydra_config import HydraConfig

    with cli.user_errors(), failure.guard():
        run(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """Console script ddtrain-train."""
    cli.prepare_argv("train")
    hydra_entry()


if __name__ == "__main__":
    main()
