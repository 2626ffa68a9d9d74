"""ddtrain-sweep: train the configured model at every batch size of sweep.batch_sizes in one job; print the report."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from ddtrain.cli import common
from ddtrain.config import config_dir, register_configs
from ddtrain.validation import validate

register_configs()


def sweep(cfg: DictConfig, sweep_dir: str) -> list[dict]:
    """Run the missing points (or the probe) in the session (started by the first job, closed after the last);
    returns the rows."""
    from ddtrain.cli import jobs
    from ddtrain.sweep.probe import run_prediction
    from ddtrain.sweep.runner import run_sweep, validate_sweep

    def check(world_size: int) -> None:
        validate(cfg, world_size)
        validate_sweep(cfg, world_size)

    session = jobs.session(cfg, sweep_dir, check=check,
                           note="finished points are kept in {run_dir}/sweep.csv; run the same command with "
                                "hydra.run.dir={run_dir} to train only the missing ones")
    rows = run_prediction(cfg, session) if cfg.sweep.mode == "predict" else run_sweep(cfg, session)
    if session.engine.is_main:
        print((session.run_dir / "report.md").read_text(), flush=True)
    return rows


@hydra.main(config_path=str(config_dir()), config_name="sweep", version_base="1.3")
def hydra_entry(cfg: DictConfig) -> None:
    """Hydra's task function of ddtrain-sweep."""
    from hydra.core.hydra_config import HydraConfig

    with common.exit_path():
        sweep(cfg, HydraConfig.get().runtime.output_dir)


def main() -> None:
    """Console script ddtrain-sweep."""
    from ddtrain.sweep.runner import validate_sweep

    common.prepare_argv("sweep", extra_check=validate_sweep)
    common.run_jobs(hydra_entry)


if __name__ == "__main__":
    main()
