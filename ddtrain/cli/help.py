"""`ddtrain-train --help` (and ddtrain-sweep's): the real options of each group and, per chosen option, the keys that apply.

Hydra's own help shows one block per group with every field of the schema (mlp's hidden_sizes beside
cnn1d's channels). This one composes the config with the overrides given before --help, lists the
options of every group and, for the chosen model, dataset, optimizer and schedule, only the keys whose
doc names that option (or names none: the key applies to all), each with its current value and doc.
A doc says which options a key is for by starting with them: "mlp and alexnet: dropout ..."; several
such parts are separated by "; " ("mnist1d: ...; synthetic: ...").
"""

from __future__ import annotations

import re

from omegaconf import ListConfig

from ddtrain.compose import compose, schema_keys
from ddtrain.config import config_dir

GROUPS = ("model", "dataset", "optimizer", "schedule")
SECTIONS = ("train", "dist", "checkpoint", "logging")


def options(group: str) -> list[str]:
    """The options of a config group: its YAML files."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def applies_to(doc: str, choices: list[str]) -> set[str] | None:
    """The options a key's doc names ("mlp and alexnet: ..."); None when it names none (the key is for all)."""
    named = set()
    for part in doc.split("; "):
        prefix, colon, _ = part.partition(":")
        words = re.findall(r"\w+", prefix)
        if colon and words and all(w in choices or w in ("and", "or") for w in words):
            named.update(w for w in words if w in choices)
    return named or None


def _value(v) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    return str(v)


def _keys(cfg, prefix: str, keep) -> list[str]:
    rows = []
    for key, (kind, _, doc) in schema_keys().items():
        if key.startswith(prefix + ".") and key != f"{prefix}.name" and keep(doc):
            rows.append((f"{key}={_value(cfg[prefix][key.split('.', 1)[1]])}", doc))
    width = max((len(k) for k, _ in rows), default=0)
    return [f"  {k.ljust(width)}  {doc}" for k, doc in rows]


def help_text(program: str, config_name: str, overrides: list[str]) -> str:
    """The help page for these overrides (UserError when they do not compose)."""
    cfg = compose(config_name, overrides)
    lines = [f"{program}: distributed data-parallel training with PyTorch; the same command runs as one process "
             "or under mpirun, srun and torchrun.",
             "",
             f"Usage: {program} [group=option ...] [key=value ...]     e.g. {program} model=mlp train.lr=0.1",
             f"       {program} -m train.lr=0.1,0.2                 one job after the other (Hydra multirun)",
             f"       {program} [overrides] --help                 this page for those overrides",
             f"       {program} --cfg job                          the whole composed config; --hydra-help: Hydra's",
             "",
             "== Options (group=option) =="]
    for group in (*GROUPS, "experiment"):
        lines.append(f"{group}: {', '.join(options(group))}")
    lines.append("experiment=<name> sets a ready-made combination (configs/experiment/).")
    for group in GROUPS:
        chosen = str(cfg[group].name)
        lines += ["", f"== {group}={chosen}: its keys ({group}=<option> --help shows another's) =="]
        lines += _keys(cfg, group, lambda doc: (applies_to(doc, options(group)) or {chosen}) >= {chosen})
    sections = (*SECTIONS, "sweep") if config_name == "sweep" else SECTIONS
    for section in sections:
        lines += ["", f"== {section} =="]
        lines += _keys(cfg, section, lambda doc: True)
    lines += ["", "Every key's type, default and doc: ddtrain/config.py. README.md: what each does."]
    return "\n".join(lines)
