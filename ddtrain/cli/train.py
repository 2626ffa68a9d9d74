"""ddtrain-train: compose the config, start the session, run, print the summary.

Runs as one process or unchanged under mpirun, srun and torchrun (rank and world size come from
the launcher's environment).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from ddtrain.cli import common
from ddtrain.config import config_dir, register_configs
from ddtrain.validation import validate

log = logging.getLogger("ddtrain")
register_configs()


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary_text(summary: dict, run_dir: Path, tensorboard: bool) -> str:
    """The short summary printed at the end of a run."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"
    sps = summary.get("samples_per_s")
    if "test_accuracy" in summary:
        scores = f"test accuracy {pct(summary['test_accuracy'])}, val accuracy {pct(summary.get('val_accuracy'))}"
    else:  # a regression or sequence loss: no accuracy
        scores = f"test loss {_num(summary.get('test_loss'))}, val loss {_num(summary.get('val_loss'))}"
    lines = [
        f"done: {summary['model']} on {summary['dataset']}, {summary['world_size']} rank(s), "
        f"{summary['steps']} steps ({summary['epochs']:.1f} epochs), global batch {summary['global_batch_size']}",
        f"  {scores}, final train loss {_num(summary.get('final_train_loss'))}",
        f"  {sps:,.0f} samples/s" if sps else "  samples/s: n/a (run too short)",
        f"  wall time {summary['wall_s']:.1f} s; ranks identical: {summary['ranks_identical']}",
        f"  run directory {run_dir}",
    ]
    if summary.get("model_file"):
        lines.append(f"  weights {summary['model_file']} (ddtrain-export {summary['model_file']} --format onnx)")
    if tensorboard:
        lines.append(f"  TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    return "\n".join(lines)


def train(cfg: DictConfig, run_dir: str) -> dict:
    """Train one job in the session (started by the first job, closed after the last); returns the summary."""
    from ddtrain.cli import jobs
    from ddtrain.runtime.run import run

    session = jobs.session(cfg, run_dir, check=lambda world_size: validate(cfg, world_size), checkpoints="checkpoints",
                           note="no checkpoint written yet" if cfg.checkpoint.every_steps
                           else "no checkpoint (checkpoint.every_steps=0)")
    summary = run(cfg, session)
    if session.engine.is_main:
        log.info(summary_text(summary, session.run_dir, cfg.logging.tensorboard))
    return summary


@hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    """Hydra's task function."""
    from hydra.core.hydra_config import HydraConfig

    with common.exit_path():
        train(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """Console script ddtrain-train."""
    common.prepare_argv("train")
    common.run_jobs(hydra_entry)


if __name__ == "__main__":
    main()
