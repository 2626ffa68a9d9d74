"""ddtrain: distributed data-parallel training for PyTorch.

    import ddtrain
    summary = ddtrain.fit(["model=mlp", "train.epochs=5"])      # Hydra-style overrides, or a composed config

One process needs no launcher; under mpirun/srun/torchrun every rank calls fit() alike. Errors
raise (UserError for bad input), so a notebook kernel survives a typo. The console scripts are
ddtrain-train, ddtrain-sweep, ddtrain-bench and ddtrain-launch.
"""

from __future__ import annotations

__version__ = "0.2.0"


def fit(config=None, run_dir=None) -> dict:
    """Train as ddtrain-train would; returns the summary (also written to <run_dir>/summary.json).

    config: a list of overrides (e.g. ["model=mlp", "train.lr=0.1"]), a composed config
    (ddtrain.compose.compose("train", ...)), or None for the defaults. run_dir: where the run
    writes (default outputs/<date>/<time>, as the console script).
    """
    import time
    from pathlib import Path

    from ddtrain.compose import compose
    from ddtrain.config import validate
    from ddtrain.distributed.session import Session
    from ddtrain.runtime.run import run

    cfg = compose("train", list(config or [])) if config is None or isinstance(config, (list, tuple)) else config
    run_dir = Path(run_dir) if run_dir is not None else Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")
    session = Session.start(cfg.dist, run_dir, check=lambda world_size: validate(cfg, world_size),
                            log_level=cfg.logging.level, checkpoints="checkpoints")
    summary = run(cfg, session)
    session.close()
    return summary
