"""What every ddtrain console script shares: checking arguments before Hydra, one-line errors, logging, summary."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

from ddtrain.errors import Preempted, UserError

log = logging.getLogger("ddtrain")


def _want_traceback() -> bool:
    return os.environ.get("DDTRAIN_TRACEBACK") == "1" or os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str, code: int = 2) -> None:
    """Print one error line and leave at once, without tearing down a process group a peer may have left."""
    sys.stdout.flush()
    print(f"ddtrain: error: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    os._exit(code)


@contextlib.contextmanager
def user_errors():
    """Turn UserError into one line and exit status 2 (a traceback only with DDTRAIN_TRACEBACK=1).

    A preempted run (ddtrain.errors.Preempted: checkpoint saved, line already logged) exits with 75.
    """
    try:
        yield
    except UserError as exc:
        if _want_traceback():
            raise
        fail(str(exc), exc.exit_code)
    except Preempted as exc:
        sys.stdout.flush()
        logging.shutdown()
        os._exit(exc.exit_code)  # no process-group teardown: the requeued job starts afresh


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[:1]).strip()
    return text or type(exc).__name__


def compose(config_name: str, overrides: list[str]):
    """The config Hydra would compose for these overrides (hydra.* ones aside); bad input exits with one line."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ddtrain.config import config_dir, register_configs

    register_configs()
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=f"ddtrain-{config_name}"):
            return hydra_compose(config_name, overrides=user)
    except Exception as exc:  # Hydra/OmegaConf composition errors: unknown option, wrong type, bad key
        if _want_traceback():
            raise
        fail(_describe_compose_error(exc, user))
    finally:
        GlobalHydra.instance().clear()


def preflight(config_name: str, overrides: list[str], world_size: int, extra_check=None) -> None:
    """Compose the config as Hydra will and validate it, so bad input fails as one line before any rank starts work."""
    from ddtrain.config import validate

    cfg = compose(config_name, overrides)
    validate(cfg, world_size)
    if extra_check is not None:
        extra_check(cfg, world_size)


def _describe_compose_error(exc: Exception, overrides: list[str]) -> str:
    text = str(exc)
    if "Could not find" in text and "'" in text:
        # e.g. "In 'train': Could not find 'model/foo'": name the group and list what exists
        missing = text.split("Could not find '")[1].split("'")[0]
        group, _, option = missing.rpartition("/")
        from ddtrain.config import config_dir
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        if options:
            return f"{group}={option} is not a known {group}; choose one of: {', '.join(options)}"
    hint = " (quote a value that contains '=', e.g. 'key=\"a=b\"')" if "mismatched input '='" in text else ""
    return f"bad configuration ({', '.join(overrides) or 'defaults'}): {_first_line(exc)}{hint}"


def prepare_argv(config_name: str, extra_check=None) -> None:
    """Check the overrides once per rank, then make Hydra write its output files on rank 0 only."""
    from ddtrain.env import detect

    args = sys.argv[1:]
    with user_errors():
        env = detect(os.environ)
        if not any(a.startswith("-") for a in args):  # --help, --cfg, -m: leave those to Hydra
            preflight(config_name, args, env.world_size, extra_check)
    if env.rank != 0:
        # only rank 0 lets Hydra make the run directory (${now:} differs per process); rank 0's
        # directory is broadcast to the others once the process group exists
        sys.argv = [sys.argv[0], *(a for a in args if not a.startswith("hydra.run.dir=")),
                    "hydra.output_subdir=null", "hydra.run.dir=."]


def setup_logging(run_dir: Path, rank: int, world_size: int, level: str = "INFO") -> None:
    """Rank-prefixed lines to train.log (every rank) and the console (rank 0; warnings from the others)."""
    logger = logging.getLogger("ddtrain")
    logger.setLevel(level)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    prefix = f"[rank {rank}/{world_size}] " if world_size > 1 else ""
    run_dir.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(run_dir / "train.log")  # appends (O_APPEND): ranks share one file
    to_file.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(message)s"))
    to_console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    to_console.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    to_console.setLevel(level if rank == 0 else logging.WARNING)
    logger.addHandler(to_file)
    logger.addHandler(to_console)


def print_summary(summary: dict, run_dir: Path, tensorboard: bool, is_main: bool) -> None:
    """The short summary at the end of a run (rank 0)."""
    if not is_main:
        return
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"
    sps = summary.get("samples_per_s")
    lines = [
        f"done: {summary['model']} on {summary['dataset']}, {summary['world_size']} rank(s), "
        f"{summary['steps']} steps ({summary['epochs']:.1f} epochs), global batch {summary['global_batch_size']}",
        f"  test accuracy {pct(summary.get('test_accuracy'))}, val accuracy {pct(summary.get('val_accuracy'))}, "
        f"final train loss {summary.get('final_train_loss') or float('nan'):.4f}",
        f"  {sps:,.0f} samples/s" if sps else "  samples/s: n/a (run too short)",
        f"  wall time {summary['wall_s']:.1f} s; ranks identical: {summary['ranks_identical']}",
        f"  run directory {run_dir}",
    ]
    if tensorboard:
        lines.append(f"  TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    log.info("\n".join(lines))
