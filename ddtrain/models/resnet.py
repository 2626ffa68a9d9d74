"""Residual networks (He et al. 2016): CIFAR-style resnet20 and ImageNet-style resnet18/resnet50.

The ImageNet variants match torchvision's layout (v1.5: Bottleneck strides on its 3x3 conv) and its
parameter names (conv1, bn1, layer1..layer4, fc; downsample.0/.1), so parameter counts and results are
comparable with published numbers and a torchvision or timm ResNet state_dict loads (model.init_from).
"""

from __future__ import annotations

from typing import List, Sequence, Type, Union

import torch
from torch import nn


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # no bias: the BatchNorm right after it has its own shift
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity or projection shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output relu(F(x) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised in the ImageNet variants)."""
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4, each with BN, plus a shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual output relu(F(x) + shortcut(x))."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)

    def last_bn(self) -> nn.BatchNorm2d:
        """The BN closing the residual branch (zero-initialised in the ImageNet variants)."""
        return self.bn3


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """Stem (conv1, bn1, relu, maxpool), stages layer1.. of residual blocks (stride 2 from layer2 on), pool, fc."""

    def __init__(self, block: Block, layers: Sequence[int], widths: Sequence[int], in_channels: int,
                 num_classes: int, imagenet_stem: bool, zero_init_residual: bool):
        super().__init__()
        # torchvision's attribute names, so its (and timm's) state_dicts load by name
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:  # CIFAR: small images keep full resolution in the first stage
            self.conv1 = _conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.cin = widths[0]
        self.stages = [self._stage(block, w, n, 1 if i == 0 else 2) for i, (w, n) in enumerate(zip(widths, layers))]
        for i, stage in enumerate(self.stages):
            self.add_module(f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Goyal et al. 2017: gamma=0 on each branch's last BN makes every block start as the
            # identity, which eases optimisation at large batch sizes and high learning rates
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    def _stage(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.cin != planes * block.expansion:
            # option B (projection) shortcut whenever the shape changes
            downsample = nn.Sequential(nn.Conv2d(self.cin, planes * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers: List[nn.Module] = [block(self.cin, planes, stride, downsample)]
        self.cin = planes * block.expansion
        layers += [block(self.cin, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (batch, num_classes) for a batch shaped (B, C, H, W)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet20(in_channels: int, num_classes: int) -> ResNet:
    """CIFAR ResNet-20 (He et al. 2016, sec. 4.2): 3 stages x 3 BasicBlocks of 16/32/64 channels."""
    return ResNet(BasicBlock, [3, 3, 3], [16, 32, 64], in_channels, num_classes,
                  imagenet_stem=False, zero_init_residual=False)


def resnet18(in_channels: int, num_classes: int) -> ResNet:
    """ImageNet ResNet-18 as in torchvision, with zero-initialised residual BNs."""
    return ResNet(BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512], in_channels, num_classes,
                  imagenet_stem=True, zero_init_residual=True)


def resnet50(in_channels: int, num_classes: int) -> ResNet:
    """ImageNet ResNet-50 v1.5 as in torchvision, with zero-initialised residual BNs."""
    return ResNet(Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], in_channels, num_classes,
                  imagenet_stem=True, zero_init_residual=True)
