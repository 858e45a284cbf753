"""Activation criterion ``"activation"``: mean |a| at the unit's output.

The mean absolute output of the unit over samples and positions (read at the
producing layer's output, before BatchNorm/activation); for heads and
neurons where the output projection reads them, padding tokens excluded.
"""

from __future__ import annotations

from typing import ClassVar

from .base import HookedCriterion, register, wide


@register("activation")
class Activation(HookedCriterion):
    """mean |activation| over samples and positions."""

    needs_grad: ClassVar[bool] = False

    def reduce(self, activation, grad, unit_dim):
        return wide(activation).abs().sum(dim=1).double().sum(0)

    def contribution(self, signal):
        # per sample a sum over positions and features in the tensor's dtype, then over samples in float64
        a = wide(signal.activation).abs()  # [N, S, C, W]
        mask = signal.token_mask
        if mask is not None and mask.shape == a.shape[:2]:  # padding tokens do not count
            a = a * mask.to(a.dtype)[..., None, None]
            return a.sum(dim=(1, 3)).double().sum(0), float(mask.sum()) * a.shape[3]
        return a.sum(dim=(1, 3)).double().sum(0), float(a.shape[0] * a.shape[1] * a.shape[3])

    def finalize(self, total, count):
        return total / count
