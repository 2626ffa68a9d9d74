"""Users' own classes and functions named by Hydra's `_target_`: find them, call them, fail as one line.

    model._target_=mynets.WideNet +model.width=512   ->   locate("model._target_", "mynets.WideNet")

A target is looked up on sys.path and in the working directory (a console script such as ddtrain-train
does not put the working directory on sys.path, `python -m` does; users expect both to find the
module beside them). Anything that goes wrong becomes a UserError naming the key and the cause, the
same on every rank. Which keys of the model, optimizer and loss nodes are the user's, and whether a
loss is a classification loss (accuracy applies), are decided here too.
"""

from __future__ import annotations

import difflib

import importlib
import inspect
import os
import sys
from typing import Any, Callable

from ddtrain.config import TARGET_NODES
from ddtrain.errors import UserError

# losses whose outputs are class scores and targets class indices: accuracy applies
CLASSIFICATION_LOSSES = ("torch.nn.CrossEntropyLoss", "torch.nn.modules.loss.CrossEntropyLoss", "torch.nn.NLLLoss",
                         "torch.nn.modules.loss.NLLLoss", "torch.nn.functional.cross_entropy",
                         "torch.nn.functional.nll_loss")


def _cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # last: a module beside the user never shadows an installed package


def locate(key: str, path: str) -> Any:
    """The object `path` names (a dotted module path to a class or function); UserError naming `key` if absent."""
    from hydra.utils import get_object

    _cwd_on_path()
    if not isinstance(path, str) or not path.strip():
        raise UserError(f"{key}={path!r} must name a class or function, e.g. mypkg.nets.WideNet")
    try:
        return get_object(path)
    except Exception as exc:  # ImportError, AttributeError, or an error raised while importing the module
        module, _, name = path.rpartition(".")
        try:
            found = importlib.import_module(module) if module else None
        except Exception:
            found = None
        if found is not None and not hasattr(found, name):
            raise UserError(f"{key}={path}: module {module} ({getattr(found, '__file__', '')}) has no {name}") from exc
        cause = exc.__cause__ or exc
        raise UserError(f"{key}={path} cannot be imported ({type(cause).__name__}: {_first_line(cause)}); "
                        "put its module on PYTHONPATH or in the working directory") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def parameters(target: Callable) -> dict[str, inspect.Parameter]:
    """The named parameters of a class's constructor or a function (empty when it cannot be inspected)."""
    try:
        return dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):  # some builtins have no signature
        return {}


def takes(target: Callable, name: str) -> bool:
    """Whether `target` has a parameter called `name` (not merely **kwargs)."""
    p = parameters(target).get(name)
    return p is not None and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def partial(key: str, path: str, node) -> Callable:
    """hydra.utils.instantiate(node, _partial_=True): the target with the node's keyword arguments bound.

    node holds `_target_` and the keyword arguments the user gave (nested `_target_`s are built here).
    """
    from hydra.utils import instantiate

    _cwd_on_path()
    try:
        return instantiate(node, _partial_=True)
    except Exception as exc:
        raise UserError(f"{key}={path} cannot be set up: {_cause(exc)}") from exc


def call(key: str, path: str, node, *args, **kwargs) -> Any:
    """Build the target from node and call it with args/kwargs (objects such as parameters or tuples,
    passed as they are); any failure as a UserError naming `key` and the cause."""
    bound = partial(key, path, node)
    try:
        return bound(*args, **kwargs)
    except Exception as exc:
        raise UserError(f"{key}={path} failed: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    # hydra wraps the real error ("Error in call to target ..."): name that one
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {_first_line(cause)}"


def added_keys(node, section: str) -> list[str]:
    """Keys of a model/optimizer/loss node that its schema does not declare: the user's, for the _target_."""
    if not hasattr(node, "keys"):  # a dataclass instance holds its declared fields only
        return []
    declared = set(TARGET_NODES[section].__dataclass_fields__)
    return [str(k) for k in node.keys() if str(k) not in declared]


def reports_accuracy(loss_cfg) -> bool:
    """Whether the loss is a classification loss, so accuracy applies (loss.accuracy decides when set)."""
    if loss_cfg is None:
        return True
    if loss_cfg.get("accuracy") is not None:
        return bool(loss_cfg.accuracy)
    target = loss_cfg.get("_target_")
    return target is None or target in CLASSIFICATION_LOSSES


def check_targets(cfg) -> None:
    """A _target_ must import; keys added to a built-in's node are typos (nothing would read them)."""
    for section in TARGET_NODES:
        node = cfg.get(section)
        if node is None:
            continue
        target = node.get("_target_")
        if target is not None:
            locate(f"{section}._target_", target)
            continue
        extra = added_keys(node, section)
        if extra:
            fields = [f for f in TARGET_NODES[section].__dataclass_fields__ if f != "_target_"]
            near = difflib.get_close_matches(extra[0], fields, n=1)
            hint = f"did you mean {section}.{near[0]}?" if near else f"its keys: {', '.join(fields)}"
            raise UserError(f"{section}.{extra[0]} is not a key of the built-in {section} ({hint}); "
                            f"keys you add are passed to your own {section}._target_ only")


__all__ = ["CLASSIFICATION_LOSSES", "added_keys", "call", "check_targets", "locate", "parameters", "partial",
           "reports_accuracy", "takes"]
