"""Weights out and in: <run_dir>/model.pt, and model.init_from (a model.pt, a checkpoint or a plain state_dict).

model.pt is a dict of tensors and plain values, so torch.load(path, weights_only=True) reads it:

    {"format": "ddtrain-model/1", "state_dict": {...}, "model": <the model config>, "input_shape": [...],
     "num_classes": N, "dataset": <the dataset config>, "loss": <the loss config>, "step": N, ...}

Reading weights accepts the layouts users have on disk: model.pt, a ddtrain checkpoint ("model"),
a Lightning-style file ("state_dict"), or a bare state_dict (torchvision, timm), with the key prefixes
that wrappers add ("module." from DDP, "_orig_mod." from torch.compile) taken off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ddtrain.errors import UserError
from ddtrain.fileio import atomic_open

log = logging.getLogger("ddtrain")
MODEL_FILE = "model.pt"
FORMAT = "ddtrain-model/1"
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# ResNet names before ddtrain 0.3 (stem/stages), before they followed torchvision's
_LEGACY_RESNET = (("stem.0.", "conv1."), ("stem.1.", "bn1."))


def model_file(model: nn.Module, meta: dict) -> dict:
    """The content of model.pt: the weights (on the CPU) and the plain-value description in meta."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"format": FORMAT, **meta, "state_dict": state}


def save_model_file(path: Path, model: nn.Module, meta: dict) -> Path:
    """Write model.pt atomically (readers never see half a file)."""
    path = Path(path)
    with atomic_open(path, "wb") as f:
        torch.save(model_file(model, meta), f)
    return path


def read_file(path: str | Path, key: str = "model.init_from") -> dict:
    """torch.load(weights_only=True) of a weights file; UserError naming `key` when absent or unreadable."""
    path = Path(path).expanduser()
    if path.is_dir() and (path / MODEL_FILE).is_file():
        path = path / MODEL_FILE  # a run directory
    if not path.is_file():
        raise UserError(f"{key}={path}: no such file; pass a model.pt, a checkpoint or a state_dict file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        # weights_only's own reason ("Unsupported global: ...") is further down its long message
        reason = next((ln for ln in lines if ln.startswith("WeightsUnpickler error")), lines[0] if lines else "")
        raise UserError(f"{key}={path} cannot be read as PyTorch weights with weights_only=True "
                        f"({type(exc).__name__}: {reason[:300]})") from None


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def state_dict_in(obj, path, key: str = "model.init_from") -> tuple[dict, str]:
    """(the state_dict, what kind of file it came from) in a loaded weights file."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return obj["state_dict"], "model.pt"
    if isinstance(obj, dict) and _is_state_dict(obj.get("model")) and "step" in obj:
        return obj["model"], f"checkpoint of step {obj['step']}"
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        return obj["state_dict"], "state_dict entry"
    if _is_state_dict(obj):
        return obj, "state_dict"
    raise UserError(f"{key}={path} holds no state_dict (expected a model.pt, a ddtrain checkpoint or a dict of tensors)")


def _candidates(state: dict):
    """The state_dict as saved, and with wrapper prefixes or old names taken off (one of them will match)."""
    yield state
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            yield {k[len(prefix):]: v for k, v in state.items()}
    heads = {k.split(".", 1)[0] for k in state}
    if len(heads) == 1 and all("." in k for k in state):  # one attribute holds the model (Lightning: "net.")
        yield {k.split(".", 1)[1]: v for k, v in state.items()}
    if any(k.startswith(("stem.", "stages.")) for k in state):
        renamed = {}
        for k, v in state.items():
            for old, new in _LEGACY_RESNET:
                k = new + k[len(old):] if k.startswith(old) else k
            if k.startswith("stages."):
                stage, rest = k[len("stages."):].split(".", 1)
                k = f"layer{int(stage) + 1}.{rest}"
            renamed[k] = v
        yield renamed


@dataclass
class InitReport:
    """What init_from loaded: the file's kind, how many tensors, and the keys it did not load."""

    kind: str
    loaded: int
    total: int
    fresh: list = field(default_factory=list)  # the model's keys left as initialised (absent or reshaped)
    ignored: list = field(default_factory=list)  # the file's keys the model does not have

    def line(self, path) -> str:
        """One log line."""
        text = f"initialised from {path} ({self.kind}): {self.loaded} of {self.total} tensors"
        if self.fresh:
            text += f"; skipped, kept as initialised: {', '.join(self.fresh)}"
        if self.ignored:
            text += f"; ignored from the file: {', '.join(self.ignored)}"
        return text


def _shape(t) -> list:
    return list(t.shape)


def init_from(model: nn.Module, path: str | Path, strict: bool = True) -> InitReport:
    """Load weights into model by name (new optimizer and step count are the caller's); strict: all must match.

    Not strict: loads every tensor whose name and shape match and reports the rest (a new classifier head).
    """
    own = model.state_dict()
    state, kind = state_dict_in(read_file(path), path)
    state = max(_candidates(state), key=lambda s: sum(1 for k in s if k in own))
    missing = [k for k in own if k not in state]
    ignored = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and state[k].shape != own[k].shape]
    if strict and (missing or ignored or reshaped):
        parts = []
        if reshaped:
            k = reshaped[0]
            parts.append(f"{len(reshaped)} with another shape (e.g. {k}: {_shape(state[k])} in the file, "
                         f"{_shape(own[k])} in the model)")
        if missing:
            parts.append(f"{len(missing)} missing from the file (e.g. {missing[0]})")
        if ignored:
            parts.append(f"{len(ignored)} not in the model (e.g. {ignored[0]})")
        raise UserError(f"model.init_from={path} does not match the model: {'; '.join(parts)}; "
                        "set model.init_strict=false to load what matches (e.g. a new classifier head)")
    usable = {k: v for k, v in state.items() if k in own and k not in reshaped}
    if not usable:
        raise UserError(f"model.init_from={path}: none of its {len(state)} tensors matches the model's names "
                        f"(file: {next(iter(state))}, ...; model: {next(iter(own))}, ...)")
    model.load_state_dict(usable, strict=False)
    return InitReport(kind, len(usable), len(own), fresh=missing + reshaped, ignored=ignored)


def load_model_file(path: str | Path, key: str = "model_file") -> tuple[nn.Module, dict]:
    """Rebuild the model that model.pt (or a run directory holding one) describes: (module in eval mode, the file)."""
    from omegaconf import OmegaConf

    from ddtrain.models import build_model

    content = read_file(path, key)
    if not (isinstance(content, dict) and content.get("format") == FORMAT):
        raise UserError(f"{key}={path} is not a ddtrain model.pt (no {FORMAT!r} format entry); "
                        "pass a run directory or its model.pt")
    model = build_model(OmegaConf.create(content["model"]), content["input_shape"], content["num_classes"])
    model.load_state_dict(content["state_dict"])
    return model.eval(), content


__all__ = ["FORMAT", "MODEL_FILE", "InitReport", "init_from", "load_model_file", "read_file", "save_model_file",
           "state_dict_in"]
