"""Compose a config exactly as Hydra will, outside a Hydra app, with errors a user can act on.

The console scripts compose once before Hydra starts (so bad input fails as one line on every rank
before any work) and the benchmarks compose model configs from the same files.
"""

from __future__ import annotations

from ddtrain.config import config_dir, register_configs
from ddtrain.errors import UserError


def compose(config_name: str, overrides: list[str]):
    """The config Hydra would compose for these overrides (hydra.* ones aside); UserError on bad input."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    # hydra.* overrides shape Hydra's own output, not the config; the search path finds the user's
    # config group files (configs/model/widenet.yaml in their project), so it is kept
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra") or o.startswith("hydra.searchpath=")]
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name=f"ddtrain-{config_name}"):
            return hydra_compose(config_name, overrides=user)
    except Exception as exc:  # Hydra/OmegaConf composition errors: unknown option, wrong type, bad key
        raise UserError(describe_error(exc, user)) from exc
    finally:
        GlobalHydra.instance().clear()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[:1]).strip()
    return text or type(exc).__name__


def describe_error(exc: Exception, overrides: list[str]) -> str:
    """One line for a composition error: the unknown option and the options there are, or Hydra's first line."""
    text = str(exc)
    if "Could not find" in text and "'" in text:
        # e.g. "In 'train': Could not find 'model/foo'": name the group and list what exists
        missing = text.split("Could not find '")[1].split("'")[0]
        group, _, option = missing.rpartition("/")
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        if options:
            return f"{group}={option} is not a known {group}; choose one of: {', '.join(options)}"
    hint = " (quote a value that contains '=', e.g. 'key=\"a=b\"')" if "mismatched input '='" in text else ""
    return f"bad configuration ({', '.join(overrides) or 'defaults'}): {_first_line(exc)}{hint}"
