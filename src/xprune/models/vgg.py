"""Small VGG-style convolutional network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import XpruneError
from ._base import Configurable, image_hw


class VGG(Configurable):
    """VGG-style CNN: stages of ``[Conv3x3 -> BatchNorm2d -> ReLU] * convs_per_stage -> MaxPool2d``.

    After the stages: ``Flatten -> Linear(hidden) -> ReLU -> Linear(num_classes)``.
    A stage pools (2x2, stride 2) only while the feature map is at least 2x2,
    so three stages work on 8x8 (8 -> 4 -> 2 -> 1) as well as 28x28
    (28 -> 14 -> 7 -> 3) inputs.

    Parameters
    ----------
    in_channels : int, default 1
        Input channels.
    num_classes : int, default 10
        Number of outputs.
    widths : sequence of int, default (16, 32, 64)
        Output channels of each stage.
    image_size : int or (int, int), default 28
        Input height and width; fixes the classifier's input size.
    convs_per_stage : int, default 1
        Convolutions per stage (2 gives the classic VGG pattern).
    hidden : int, default 128
        Width of the hidden classifier layer.
    batch_norm : bool, default True
        Put ``BatchNorm2d`` after each convolution.
    dropout : float, default 0.0
        Dropout before each classifier Linear (no module is added when 0).

    Attributes
    ----------
    features : nn.Sequential
        Convolution stages.
    flatten : nn.Flatten
    classifier : nn.Sequential
        ``[Dropout] Linear ReLU [Dropout] Linear``; ``classifier[-1]`` is the output layer.

    Notes
    -----
    Input ``float32 [B, in_channels, H, W]`` with ``(H, W) == image_size``;
    output logits ``float32 [B, num_classes]``.
    """

    arch = "vgg"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        widths: Sequence[int] = (16, 32, 64),
        image_size: int | Sequence[int] = 28,
        convs_per_stage: int = 1,
        hidden: int = 128,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        self._remember(
            in_channels=in_channels,
            num_classes=num_classes,
            widths=list(widths),
            image_size=image_size,
            convs_per_stage=convs_per_stage,
            hidden=hidden,
            batch_norm=batch_norm,
            dropout=dropout,
        )
        if not widths or convs_per_stage < 1:
            raise XpruneError("VGG needs at least one stage (widths) and convs_per_stage >= 1")
        h, w = image_hw(image_size)
        layers: list[nn.Module] = []
        c = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(c, int(width), kernel_size=3, padding=1, bias=not batch_norm))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(width)))
                layers.append(nn.ReLU())
                c = int(width)
            if h >= 2 and w >= 2:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                h, w = h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        head: list[nn.Module] = []
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(c * h * w, hidden), nn.ReLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))
