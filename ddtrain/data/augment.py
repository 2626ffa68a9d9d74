"""Augmentation and evaluation transforms as config: crops, flips and resizes, then normalisation on the device.

Every random choice is drawn from a generator seeded by (train.seed, epoch, sample index), so a
sample looks the same whichever rank or worker reads it, after a resume, and at any world size.
The geometry of each op is worked out first from the image size alone (so a JPEG can be decoded at
a reduced scale, Pillow's draft mode), then applied to a Pillow image or to a (C, H, W) tensor.

Ops (dataset.augment for training, dataset.eval_transform for evaluation, applied in order):
  random_resized_crop  a random area (dataset.crop_scale) and aspect ratio (dataset.crop_ratio),
                       resized to dataset.crop_size (ImageNet training, as torchvision's)
  pad_crop             a random dataset.crop_size crop (default: the image's size) of the image
                       zero-padded by dataset.pad on each side (CIFAR training)
  hflip                a horizontal flip with probability 1/2
  resize               the shorter side to dataset.resize_size (evaluation)
  center_crop          the central dataset.crop_size square (evaluation)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ddtrain.config import RANDOM_TRANSFORM_OPS as RANDOM_OPS


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one sample's random choices: a pure function of (seed, epoch, index)."""
    state = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(state)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(1, generator=g).item()


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g).item())


@dataclass(frozen=True)
class Transform:
    """One split's ops and their parameters (see the module docstring); call plan() per sample."""

    ops: tuple[str, ...] = ()
    crop_size: int = 0
    resize_size: int = 0
    pad: int = 4
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def random(self) -> bool:
        """Whether any op draws random numbers (then each sample needs its generator)."""
        return any(op in RANDOM_OPS for op in self.ops)

    def plan(self, width: int, height: int, g: torch.Generator | None) -> list[tuple]:
        """The geometry for an image of this size: ("crop", box), ("resize", box, (w, h)) and ("flip",) steps.

        Boxes are (left, top, right, bottom) in the coordinates of the image as it is at that step;
        a crop box may reach outside the image (the outside is zero).
        """
        steps: list[tuple] = []
        w, h = width, height
        for op in self.ops:
            if op == "random_resized_crop":
                left, top, cw, ch = self._resized_crop_box(w, h, g)
                steps.append(("resize", (left, top, left + cw, top + ch), (self.crop_size, self.crop_size)))
                w = h = self.crop_size
            elif op == "pad_crop":
                cw, ch = (self.crop_size, self.crop_size) if self.crop_size else (w, h)
                left = _randint(g, 0, w + 2 * self.pad - cw) - self.pad
                top = _randint(g, 0, h + 2 * self.pad - ch) - self.pad
                steps.append(("crop", (left, top, left + cw, top + ch)))
                w, h = cw, ch
            elif op == "hflip":
                if torch.rand(1, generator=g).item() < 0.5:
                    steps.append(("flip",))
            elif op == "resize":
                r = self.resize_size
                nw, nh = (r, int(r * h / w)) if w <= h else (int(r * w / h), r)  # torchvision's rounding
                steps.append(("resize", (0, 0, w, h), (nw, nh)))
                w, h = nw, nh
            elif op == "center_crop":
                s = self.crop_size
                left, top = int(round((w - s) / 2.0)), int(round((h - s) / 2.0))
                steps.append(("crop", (left, top, left + s, top + s)))
                w = h = s
        return steps

    def _resized_crop_box(self, w: int, h: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop.get_params: (left, top, width, height)."""
        area = w * h
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(g, *self.scale)
            aspect = math.exp(_uniform(g, *log_ratio))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                return _randint(g, 0, w - cw), _randint(g, 0, h - ch), cw, ch
        in_ratio = w / h  # fallback: the central crop of the nearest allowed aspect ratio
        if in_ratio < min(self.ratio):
            cw, ch = w, int(round(w / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            cw, ch = int(round(h * max(self.ratio))), h
        else:
            cw, ch = w, h
        return (w - cw) // 2, (h - ch) // 2, cw, ch


def draft_size(steps: list[tuple], width: int, height: int) -> tuple[int, int] | None:
    """The smallest decoded size that loses nothing to a first downscaling step (for JPEG draft mode)."""
    if not steps or steps[0][0] != "resize":
        return None
    _, (l, t, r, b), (nw, nh) = steps[0]
    f = max(nw / max(r - l, 1), nh / max(b - t, 1))
    return (math.ceil(width * f), math.ceil(height * f)) if f < 0.5 else None


def apply_pil(image, steps: list[tuple], sx: float = 1.0, sy: float = 1.0):
    """The steps applied to a Pillow image; sx, sy scale the first step's box (image decoded in draft mode)."""
    from PIL import Image

    for i, step in enumerate(steps):
        if step[0] == "flip":
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            continue
        box = step[1]
        if i == 0 and (sx != 1.0 or sy != 1.0):
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        if step[0] == "crop":
            image = image.crop(tuple(int(round(v)) for v in box))  # outside the image: zeros
        else:
            image = image.resize(step[2], Image.Resampling.BILINEAR, box=box)
    return image


def apply_tensor(x: torch.Tensor, steps: list[tuple]) -> torch.Tensor:
    """The steps applied to a (C, H, W) tensor (bilinear resizes with antialiasing, as Pillow's)."""
    for step in steps:
        if step[0] == "flip":
            x = x.flip(-1)
        elif step[0] == "crop":
            x = _crop(x, step[1])
        else:
            x = _resize(_crop(x, step[1]), step[2])
    return x


def _crop(x: torch.Tensor, box) -> torch.Tensor:
    left, top, right, bottom = (int(v) for v in box)
    h, w = x.shape[-2:]
    inner = x[..., max(top, 0):min(bottom, h), max(left, 0):min(right, w)]
    pads = (max(-left, 0), max(right - w, 0), max(-top, 0), max(bottom - h, 0))
    return F.pad(inner, pads) if any(pads) else inner


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = F.interpolate(x.unsqueeze(0).float(), size=(size[1], size[0]), mode="bilinear", antialias=True,
                        align_corners=False).squeeze(0)
    if x.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(x.dtype)


def from_config(cfg, which: str) -> Transform:
    """The Transform of dataset.augment (which="augment") or dataset.eval_transform (checked by validation.py)."""
    return Transform(tuple(str(op) for op in (cfg.get(which) or ())), int(cfg.crop_size), int(cfg.resize_size),
                     int(cfg.pad), tuple(float(v) for v in cfg.crop_scale), tuple(float(v) for v in cfg.crop_ratio))


def normaliser(cfg):
    """(mean, std) 1-D tensors from dataset.mean/std, or None when normalisation is off."""
    mean, std = [float(v) for v in (cfg.mean or ())], [float(v) for v in (cfg.std or ())]
    return (torch.tensor(mean), torch.tensor(std)) if mean else None


def to_model_input(x: torch.Tensor, norm, device: torch.device) -> torch.Tensor:
    """A batch on the device as the model takes it: uint8 pixels to [0, 1] floats, then (x - mean) / std per channel.

    Runs on the device, once per batch: workers ship uint8 (4x less to copy and pin than float32).
    norm: (mean, std) already on the device, or None.
    """
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    if norm is not None:
        shape = (1, -1) + (1,) * (x.dim() - 2)  # channels are dim 1: (B, C, H, W), (B, C, L) or (B, C)
        x = x.sub(norm[0].view(shape)).div_(norm[1].view(shape))
    return x
