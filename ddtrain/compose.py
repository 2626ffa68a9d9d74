"""Compose a config exactly as Hydra will, outside a Hydra app, with errors a user can act on.

The console scripts compose once before Hydra starts (so bad input fails as one line on every rank
before any work) and the benchmarks compose model configs from the same files.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing

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
        raise UserError(describe_error(exc, user, f"ddtrain-{config_name}")) from exc
    finally:
        GlobalHydra.instance().clear()


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[:1]).strip()
    return text or type(exc).__name__


_KINDS = {"int": ("an integer", "integers"), "float": ("a number", "numbers"), "str": ("a string", "strings"),
          "bool": ("true or false", "booleans")}


def _type_name(annotation) -> str:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, typing.List) and args:
        return f"a list of {_KINDS.get(args[0].__name__, ('', args[0].__name__))[1]}"
    name = getattr(annotation, "__name__", str(annotation))
    return _KINDS.get(name, (name,))[0]


def _reason(why: BaseException, value: str) -> str:
    """OmegaConf's complaint in the user's words: which value, and what is wrong with it."""
    line = _first_line(why)
    m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", line)
    if m:
        return f"'{m.group(1)}' is not {'an integer' if m.group(2) == 'Integer' else 'a number'}"
    m = re.match(r"Value '(.*)' is not a valid bool", line)
    if m:
        return f"'{m.group(1)}' is not true or false"
    if "is not a ListConfig, list or tuple" in line:
        return f"a list is expected, not {value}"
    return line


def field_docs(cls) -> dict[str, str]:
    """The first line of the docstring under each field of a config dataclass (read from its source)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for field, doc in zip(body, body[1:]):
        if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name) and isinstance(doc, ast.Expr)
                and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
            docs[field.target.id] = doc.value.value.strip().split("\n")[0]
    return docs


@functools.lru_cache(maxsize=1)
def schema_keys() -> dict[str, tuple[str, object, str]]:
    """Every key of ddtrain-train's config: dotted name -> (type, default, the first line of its doc)."""
    from ddtrain.config import TrainJob

    keys = {}
    for section in dataclasses.fields(TrainJob):
        cls = section.default_factory  # every section is a dataclass built by its default factory
        hints, docs, default = typing.get_type_hints(cls), field_docs(cls), cls()
        for f in dataclasses.fields(cls):
            keys[f"{section.name}.{f.name}"] = (_type_name(hints[f.name]), getattr(default, f.name),
                                                docs.get(f.name, ""))
    return keys


def _example(key: str, kind: str, default) -> str:
    if kind == "true or false":
        return f"{key}={str(default).lower()}"
    if isinstance(default, list):
        return f"{key}=[{','.join(map(str, default))}]" if default else f"{key}=[1,2]"
    return f"{key}={default}"


def _groups() -> list[str]:
    return sorted(p.name for p in config_dir().iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


def closest(name: str) -> str | None:
    """The valid key or config group nearest to a misspelt one (None when nothing is close)."""
    import difflib

    candidates = [*schema_keys(), *_groups()]
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _causes(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def describe_error(exc: Exception, overrides: list[str], program: str = "ddtrain-train") -> str:
    """One line for a composition error that keeps Hydra's reason: the unknown key and the nearest valid one,
    the value and the type the key expects, or the unknown option and the options there are."""
    text = str(exc)
    if "Could not find" in text and "'" in text:
        # e.g. "In 'train': Could not find 'model/foo'": name the group and list what exists
        missing = text.split("Could not find '")[1].split("'")[0]
        group, _, option = missing.rpartition("/")
        options = sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
        if options:
            import difflib

            near = difflib.get_close_matches(option, options, n=1, cutoff=0.6)
            hint = f"did you mean {group}={near[0]}? " if near else ""
            return f"{group}={option} is not a known {group}; {hint}choose one of: {', '.join(options)}"
    override = _override_in(text, overrides)
    causes = _causes(exc)
    why = next((c for c in causes[1:] if type(c).__module__.startswith("omegaconf")), None)
    if "Could not override" in text:
        key = override.split("=", 1)[0].lstrip("+~")
        near = closest(key)
        if near in _groups():
            near = f"{near}={override.split('=', 1)[1]}" if "=" in override else near
        hint = f" (did you mean {near}?)" if near else ""
        return f"{override}: {key} is not a config key or group{hint}; `{program} --help` lists them"
    if why is not None and "Error merging override" in text:
        key = getattr(why, "full_key", "") or override.split("=", 1)[0]
        key = re.sub(r"\[\d+\]$", "", str(key))
        if "." not in key and any(k.startswith(f"{key}.") for k in schema_keys()):
            return f"{override}: {key} is a section, not a value; set its keys, e.g. {next(k for k in schema_keys() if k.startswith(key + '.'))}=..."
        kind, default, _ = schema_keys().get(key, (None, None, ""))
        reason = _reason(why, override.split("=", 1)[-1])
        expected = f"; {key} takes {kind}, e.g. {_example(key, kind, default)}" if kind else ""
        return f"{override}: {reason}{expected}"
    detail = ""
    lines = [ln.strip() for ln in text.split("\n")[1:] if ln.strip() and not ln.strip().startswith("See https")]
    if lines and lines[0] != _first_line(exc):
        detail = f": {lines[0]}"
    elif len(causes) > 1 and _first_line(causes[1]) != _first_line(exc):
        detail = f": {_first_line(causes[1])}"
    if "missing EQUAL" in text:  # a key without a value
        return f"{override}: an override is key=value, e.g. {override}=<value> ({_first_line(exc)}{detail})"
    hint = " (quote a value that contains '=', e.g. 'key=\"a=b\"')" if "mismatched input '='" in text else ""
    return f"bad configuration ({', '.join(overrides) or 'defaults'}): {_first_line(exc)}{detail}{hint}"


def _override_in(text: str, overrides: list[str]) -> str:
    """The override a Hydra message is about (its own words name it), else all of them."""
    for o in overrides:
        key = o.split("=", 1)[0]
        if f"'{key}'" in text or f"override {o}" in text or f"'{o}'" in text:
            return o
    return ", ".join(overrides)
