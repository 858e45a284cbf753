"""Activation criterion ``"activation"``: mean |a| at the unit's output.

The mean absolute output of the unit over samples and positions (read at the
producing layer's output, before BatchNorm/activation). Channels only.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import HookedCriterion, register


@register("activation")
class Activation(HookedCriterion):
    """mean |activation| over samples and positions."""

    needs_grad: ClassVar[bool] = False

    def reduce(self, activation, grad, unit_dim):
        return activation.double().abs().sum(dim=(0, 1))

    def finalize(self, total, count):
        return total / count
