"""Small ResNet (ResNet-8 style for one block per stage)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import XpruneError
from ..layers import Add
from ._base import Configurable


class BasicBlock(nn.Module):
    """Residual block ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    stride : int, default 1
        Stride of ``conv1`` (2 halves height and width).

    Attributes
    ----------
    conv1, bn1, relu1, conv2, bn2 : nn.Module
        Residual branch (3x3 convolutions, no bias).
    shortcut : nn.Module
        ``nn.Identity()`` when shapes match, else ``Sequential(Conv2d 1x1, BatchNorm2d)``.
    add : Add
        The residual sum as a module (visible to hooks / LRP).
    relu2 : nn.ReLU
        Final activation, applied after ``add``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(self.add(out, self.shortcut(x)))


class ResNet(Configurable):
    """CIFAR-style ResNet: stem, stages of :class:`BasicBlock`, global average pool, Linear.

    With ``widths=(16, 32, 64)`` and ``blocks_per_stage=1`` this is a ResNet-8
    (1 stem conv + 3 blocks x 2 convs + 1 linear). Stages after the first
    halve the resolution, so 8x8 inputs end at 2x2 and 28x28 at 7x7 before the
    adaptive pool.

    Parameters
    ----------
    in_channels : int, default 1
        Input channels.
    num_classes : int, default 10
        Number of outputs.
    widths : sequence of int, default (16, 32, 64)
        Channels of each stage (the stem uses ``widths[0]``).
    blocks_per_stage : int, default 1
        Basic blocks per stage.

    Attributes
    ----------
    stem : nn.Sequential
        ``Conv2d 3x3 -> BatchNorm2d -> ReLU``.
    stages : nn.Sequential
        One ``nn.Sequential`` of blocks per stage.
    pool : nn.AdaptiveAvgPool2d
    flatten : nn.Flatten
    fc : nn.Linear
        Output layer.

    Notes
    -----
    Input ``float32 [B, in_channels, H, W]`` (any H, W >= 1); output logits
    ``float32 [B, num_classes]``.
    """

    arch = "resnet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ):
        super().__init__()
        self._remember(
            in_channels=in_channels,
            num_classes=num_classes,
            widths=list(widths),
            blocks_per_stage=blocks_per_stage,
        )
        if not widths or blocks_per_stage < 1:
            raise XpruneError("ResNet needs at least one stage (widths) and blocks_per_stage >= 1")
        c = int(widths[0])
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        stages = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c, int(width), stride))
                c = int(width)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))
