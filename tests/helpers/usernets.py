"""A user's own module, as a project beside ddtrain would have it: models and a loss named by `_target_`.

The end-to-end tests copy this file into the ranks' working directory (or put its folder on
PYTHONPATH) and train through `model._target_=usernets.WideNet`; the unit tests import it as
helpers.usernets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class WideNet(nn.Module):
    """A two-layer MLP classifier: the dataset's input_shape and num_classes arrive by parameter name."""

    def __init__(self, input_shape, num_classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.input_shape, self.dropout_p = tuple(input_shape), dropout
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                 nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Regressor(nn.Module):
    """One number per sample: a regression model (no num_classes in its signature)."""

    def __init__(self, input_shape, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(),
                                 nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def label_mse(outputs: torch.Tensor, targets: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Mean squared error of a number against the label read as a number (the datasets' labels are integers)."""
    return F.mse_loss(outputs, targets.float() * scale)


class Recorder(nn.Module):
    """Remembers the keyword arguments it was built with (which keys reach a target)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs
        self.fc = nn.Linear(2, 2)


class NeedsDropout(Recorder):
    """Like Recorder, but its signature names ddtrain's dropout key and the dataset's num_classes."""

    def __init__(self, num_classes: int, dropout: float = 0.25, **kwargs):
        super().__init__(num_classes=num_classes, dropout=dropout, **kwargs)


def make_widenet(input_shape, num_classes: int, width: int = 8) -> nn.Module:
    """A function returning a module works as a target too."""
    return WideNet(input_shape, num_classes, width)


class Broken(nn.Module):
    """A constructor that fails (a bug in the user's code)."""

    def __init__(self, input_shape):
        super().__init__()
        raise ValueError(f"cannot handle input_shape {tuple(input_shape)}")


def not_an_optimizer(params, lr: float) -> list:
    """Takes what an optimizer takes, returns something else."""
    return list(params)
