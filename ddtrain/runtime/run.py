"""One training run, top to bottom: data, batch plan, model, engine, optimizer, the loop, the summary.

run() gets a started Session (ddtrain.distributed.session: ranks connected, run directory agreed,
logging set up) and leaves it open, so one job can run several trainings (sweeps, benchmarks).
It prints nothing: the console scripts show the summary it returns.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ddtrain.batching import BatchPlan
from ddtrain.data.feed import load_data
from ddtrain.errors import UserError
from ddtrain.hardware import lookup_gpu, peak_flops
from ddtrain.models import build_model, model_name
from ddtrain.models.flops import flops_per_sample
from ddtrain.models.weights import MODEL_FILE, init_from, save_model_file
from ddtrain.runtime.checkpoint import Checkpointer
from ddtrain.runtime.evaluator import Evaluator
from ddtrain.runtime.loss import build_loss, check_fits
from ddtrain.runtime.metrics import MetricsSink, peak_memory_bytes, write_json_atomic
from ddtrain.runtime.optim import build_optimizer, build_scheduler, scaled_lr
from ddtrain.runtime.step import TrainStep
from ddtrain.runtime.throughput import ThroughputMeter
from ddtrain.runtime.trainer import Trainer

log = logging.getLogger("ddtrain")


def parameter_digest(model) -> str:
    """SHA-256 of the model's parameters and buffers: equal digests mean bit-identical models."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _flops(model, data, device) -> int | None:
    """Training FLOPs per sample; None (and a warning) when the user's model cannot be traced on zeros."""
    try:
        return flops_per_sample(model, tuple(data.input_shape), data.num_classes, device=device,
                                input_dtype=data.example(1)[0].dtype)
    except Exception as exc:  # e.g. outputs that are not one tensor: throughput is still measured
        log.warning("FLOPs per sample not counted (%s: %s): no MFU", type(exc).__name__, exc)
        return None


def _model_meta(cfg, data, steps: int) -> dict:
    """What model.pt says besides the weights: enough to rebuild the model and feed it (ddtrain-export)."""
    from ddtrain import __version__

    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if node is not None else None

    return {"model": plain(cfg.model), "input_shape": [int(d) for d in data.input_shape],
            "num_classes": int(data.num_classes), "dataset": plain(cfg.dataset), "loss": plain(cfg.get("loss")),
            "step": int(steps), "ddtrain_version": __version__,
            "torch_version": str(torch.__version__)}  # a str subclass torch.load(weights_only=True) refuses


def run(cfg, session, run_dir: str | Path | None = None, before_fit=None) -> dict:
    """Train one model as configured; returns the summary also written to <run_dir>/summary.json.

    run_dir defaults to the session's. before_fit(trainer), when given, runs after everything is
    built and before anything is written (the sweep's memory probe).
    """
    t_start = time.perf_counter()
    engine, tc = session.engine, cfg.train
    device = engine.device
    run_dir = Path(run_dir) if run_dir is not None else session.run_dir
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # per run, also when a sweep runs several in one process

    data = load_data(cfg.dataset, device)  # in memory, or read from disk by DataLoader workers
    log.info(data.summary())
    plan = BatchPlan(tc.global_batch_size, engine.world_size, tc.grad_accum_steps)
    n_train = data.sizes["train"]
    if n_train < tc.global_batch_size:
        raise UserError(f"dataset={data.name} has {n_train} training samples, fewer than one global batch "
                        f"(train.global_batch_size={tc.global_batch_size}); use a smaller batch or a larger dataset")
    steps = plan.total_steps(tc.epochs, tc.max_steps, n_train)

    torch.manual_seed(tc.seed)  # same initial model on every rank (the engines also broadcast rank 0's)
    model = build_model(cfg.model, tuple(data.input_shape), data.num_classes).to(device)
    if cfg.model.get("init_from"):  # weights only: the optimizer, schedule and step count start fresh
        log.info("%s", init_from(model, cfg.model.init_from, cfg.model.init_strict).line(cfg.model.init_from))
    loss = build_loss(cfg.get("loss"))
    if cfg.model.get("_target_") or cfg.loss.get("_target_"):  # the user's code: fail now, not at step 1
        check_fits(model, loss, *data.example(2),
                   f"model {model_name(cfg.model)}")
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = tc.cudnn_benchmark
    fps = _flops(model, data, device)
    gpu = lookup_gpu(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    if cfg.model.get("sync_batchnorm"):
        model = engine.sync_batchnorm(model)  # before wrapping: DDP must see the synchronised layers
    wrapped = engine.wrap(model)
    if tc.compile:
        wrapped = torch.compile(wrapped)  # after the engine wraps it, so the compiler sees DDP's buckets
    lr = scaled_lr(tc.lr, tc.global_batch_size, tc.base_batch_size, tc.lr_scaling)
    optimizer = engine.wrap_optimizer(build_optimizer(model, cfg.optimizer, lr), model, tc.grad_accum_steps)
    scheduler = build_scheduler(optimizer, cfg.schedule, steps, plan.steps_per_epoch(n_train),
                                warmup_start_factor=tc.lr / lr)
    scaler = torch.amp.GradScaler(device.type, enabled=tc.precision == "fp16")

    checkpointer = Checkpointer(run_dir / "checkpoints", engine, cfg.checkpoint.every_steps, cfg.checkpoint.keep_last)
    state, resume_path = checkpointer.resume_state(cfg.checkpoint.resume, tc.global_batch_size)
    start_step = int(state["step"]) if state is not None else 0
    batches = data.train_batches(tc.seed, plan, engine.rank)
    step = TrainStep(engine, wrapped, optimizer, scheduler, scaler, plan, tc, loss)
    trainer = Trainer(
        engine=engine, step=step, evaluator=Evaluator(engine, step, data, plan, tc), checkpointer=checkpointer,
        feed=lambda start: data.feed(batches, start, steps),
        meter=ThroughputMeter(device, plan, start_step, tc.throughput_warmup_steps, tc.throughput_measure_steps,
                              fps, peak_flops(gpu, tc.precision) if gpu else None),
        total_steps=steps, train_cfg=tc, progress=cfg.logging.progress)
    if before_fit is not None:
        before_fit(trainer, batches)
    trainer.sink = sink = MetricsSink(run_dir, engine.is_main, cfg.logging.tensorboard, OmegaConf.to_yaml(cfg))
    if state is not None:
        trainer.load_state_dict(state)
        checkpointer.restore_rng(state)
        log.info("resumed from %s at step %d", resume_path, start_step)
    engine.broadcast_state(model, optimizer)  # every rank starts from rank 0's model and optimizer state

    log.info("training %s on %s: %d steps, global batch %d (%d per rank x %d rank(s) x %d accumulation), lr %.4g",
             model_name(cfg.model), data.name, steps, plan.global_batch_size, plan.per_rank_batch_size,
             plan.world_size, plan.grad_accum_steps, lr)
    figures = trainer.fit(start_step)

    # distributed: prove the ranks ended with bit-identical models
    digests = engine.all_gather_object(parameter_digest(model))
    model_file = run_dir / MODEL_FILE if cfg.checkpoint.get("save_model", True) else None
    if model_file is not None and engine.is_main:
        save_model_file(model_file, model, _model_meta(cfg, data, figures["steps"]))
    summary = {
        "world_size": engine.world_size, "global_batch_size": plan.global_batch_size,
        "per_rank_batch_size": plan.per_rank_batch_size, "grad_accum_steps": plan.grad_accum_steps, **figures,
        "lr": lr, "wall_s": time.perf_counter() - t_start, "engine": engine.name, "backend": engine.library,
        "device": str(device), "precision": tc.precision,
        "peak_memory_bytes": max(engine.all_gather_object(peak_memory_bytes(device))),
        "torch_version": torch.__version__, "model": model_name(cfg.model), "dataset": data.name,
        "launcher": engine.env.launcher, "run_dir": str(run_dir),
        "resumed_from": str(resume_path) if resume_path else None, "flops_per_sample": fps,
        "gpu": gpu.name if gpu else None, "peak_flops_per_device": trainer.meter.peak,
        "channels_last": tc.channels_last, "compile": tc.compile, "data_on_device": data.on_device,
        "parameter_digest": digests[0], "ranks_identical": len(set(digests)) == 1,
        "model_file": str(model_file) if model_file else None,
    }
    if engine.is_main:
        write_json_atomic(run_dir / "summary.json", summary)
    sink.close()
    if not summary["ranks_identical"]:
        log.error("ranks ended with different parameters: %s", digests)
    return summary
