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
    (ddtrain.compose.compose("train", ...)), a nested dict of values to set on the defaults (e.g.
    {"model": {"_target_": "mynets.WideNet", "width": 64}}), or None for the defaults. run_dir: where
    the run writes (default outputs/<date>/<time>, as the console script). Bad input raises UserError
    before any training; nothing here exits the process.
    """
    import time
    from collections.abc import Mapping
    from pathlib import Path

    from omegaconf import DictConfig, OmegaConf

    from ddtrain.compose import compose
    from ddtrain.distributed.session import Session
    from ddtrain.errors import UserError
    from ddtrain.runtime.run import run
    from ddtrain.validation import validate

    if config is None or isinstance(config, (list, tuple)):
        cfg = compose("train", [str(o) for o in config or []])
    elif isinstance(config, DictConfig):
        cfg = config
    elif isinstance(config, Mapping):
        try:
            cfg = OmegaConf.merge(compose("train", []), config)
        except Exception as exc:  # a wrong type or an unknown key of a typed section
            raise UserError(f"bad configuration: {str(exc).strip().splitlines()[0]}") from exc
    else:
        raise UserError(f"ddtrain.fit(config={type(config).__name__}): pass a list of overrides, a dict or a "
                        "composed config")
    run_dir = Path(run_dir) if run_dir is not None else Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")
    session = Session.start(cfg.dist, run_dir, check=lambda world_size: validate(cfg, world_size),
                            log_level=cfg.logging.level, checkpoints="checkpoints")
    summary = run(cfg, session)
    session.close()
    return summary
