"""The MNIST-1D paper's 1-D CNN (Greydanus 2020, mnist1d's ConvBase)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def _conv_len(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(nn.Module):
    """Three strided Conv1d+ReLU layers then one Linear; samples shaped (L,) or (C, L)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: int = 25):
        super().__init__()
        in_channels = 1 if len(input_shape) == 1 else input_shape[0]
        self.conv1 = nn.Conv1d(in_channels, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        length = _conv_len(_conv_len(_conv_len(input_shape[-1], 5, 2, 1), 3, 2, 1), 3, 2, 1)
        # explicit flat size instead of LazyLinear: DDP must see materialized parameters at wrap time
        self.flat_size = channels * length
        self.linear = nn.Linear(self.flat_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) for a batch shaped (B, L) or (B, C, L)."""
        if x.dim() == 2:
            x = x.unsqueeze(1)
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        return self.linear(torch.flatten(x, 1))
