"""Multi-layer perceptron on flattened samples (the MNIST-1D paper's MLP with the default widths)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Flatten, then Linear+ReLU per hidden width, then a Linear to the logits.

    With dropout > 0 a Dropout precedes every hidden Linear but the first (never on raw inputs).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden_sizes: Sequence[int] = (100, 100),
                 dropout: float = 0.0):
        super().__init__()
        layers: list = []
        width = math.prod(input_shape)
        for i, hidden in enumerate(hidden_sizes):
            if i > 0 and dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) for a batch of any sample shape."""
        # flatten (not view): channels_last image batches are not contiguous in NCHW order
        return self.net(torch.flatten(x, 1))
