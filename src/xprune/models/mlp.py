"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import XpruneError
from ._base import Configurable, prod


class MLP(Configurable):
    """Fully connected classifier: ``Flatten -> [Linear -> ReLU] * len(hidden) -> Linear``.

    Parameters
    ----------
    in_features : int or sequence of int
        Input size; a shape such as ``(1, 8, 8)`` is flattened (its product
        is used), so the model also takes images ``[B, C, H, W]``.
    hidden : sequence of int, default (64, 64)
        Widths of the hidden layers (may be empty for logistic regression).
        The toy study of Pruning by Explaining uses ``(1000, 1000, 1000)``.
    num_classes : int, default 10
        Number of outputs.

    Attributes
    ----------
    flatten : nn.Flatten
        Turns ``[B, *in_shape]`` into ``[B, in_features]``.
    features : nn.Sequential
        The hidden ``Linear``/``ReLU`` pairs (``features[2 * i]`` is the i-th Linear).
    classifier : nn.Linear
        Output layer, ``[B, hidden[-1]] -> [B, num_classes]``.

    Notes
    -----
    Input ``float32 [B, in_features]`` (or any shape with that many elements
    per sample); output logits ``float32 [B, num_classes]``.
    """

    arch = "mlp"

    def __init__(
        self,
        in_features: int | Sequence[int] = 784,
        hidden: Sequence[int] = (64, 64),
        num_classes: int = 10,
    ):
        super().__init__()
        self._remember(in_features=in_features, hidden=list(hidden), num_classes=num_classes)
        n_in = prod(in_features)
        if n_in < 1 or num_classes < 1 or any(int(h) < 1 for h in hidden):
            raise XpruneError(
                f"MLP sizes must be positive; got in_features={in_features}, hidden={hidden}, num_classes={num_classes}"
            )
        self.flatten = nn.Flatten()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.flatten(x)))
