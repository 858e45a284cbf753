"""Activation criterion ``"activation"``: mean |a| at the unit's output.

The mean absolute output of the unit over samples and positions (read at the
producing layer's output, before BatchNorm/activation); for heads and
neurons where the output projection reads them, and for linear layers on
token sequences, padding tokens (``attention_mask`` 0) excluded. It reads no
labels and no target.
"""

from __future__ import annotations

from typing import ClassVar

from .base import HookedCriterion, register, wide


@register("activation")
class Activation(HookedCriterion):
    """mean |activation| over samples and positions."""

    default_normalize: ClassVar[str | None] = "mean"  # see xprune.score: fair global ranking

    needs_grad: ClassVar[bool] = False

    def reduce(self, activation, grad, unit_dim):
        return wide(activation).abs().sum(dim=1).double().sum(0)

    def contribution(self, signal):
        # per sample a sum over positions and features in the tensor's dtype, then over samples in float64;
        # padding tokens are zero in the signal and not counted (signal.positions)
        a = wide(signal.activation).abs()  # [N, S, C, W]
        return a.sum(dim=(1, 3)).double().sum(0), signal.positions * a.shape[3]

    def finalize(self, total, count):
        return total / count
