"""Small modules that make otherwise functional operations visible to hooks, and layer-type tests.

LRP canonizers, unit discovery and hooks can only see ``nn.Module`` calls; a
residual ``a + b`` or an attention ``q @ k.T`` written inline is invisible to
them. The reference architectures in :mod:`xprune.models` therefore route
these operations through the modules below.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import XpruneError


class Add(nn.Module):
    """Element-wise sum of any number of tensors (residual connections)."""

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if not tensors:
            raise XpruneError("Add needs at least one tensor")
        out = tensors[0]
        for t in tensors[1:]:
            out = out + t
        return out


class MatMul(nn.Module):
    """Batched matrix product ``a @ b`` (attention scores and weighted values)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)


class Concat(nn.Module):
    """Concatenation along ``dim`` (dense connections)."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return torch.cat(tensors, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def is_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is a Hugging Face ``Conv1D`` (GPT-2's linear layer, weight ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")
