"""LeNet-5 (LeCun et al. 1998) with ReLU and max pooling, for small images."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv6-pool-conv16-pool then 120-84-num_classes; pads the first conv for images under 32x32."""

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        channels, height, width = input_shape
        # 28x28 inputs (MNIST) get padding 2 so the feature maps match the original 32x32 design
        pad = 2 if min(height, width) < 32 else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        # conv5 (k=5) shrinks by 4, each pool halves (floor)
        h, w = (((d + 2 * pad - 4) // 2 - 4) // 2 for d in (height, width))
        self.classifier = nn.Sequential(
            nn.Linear(16 * h * w, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) for a batch shaped (B, C, H, W)."""
        return self.classifier(torch.flatten(self.features(x), 1))
