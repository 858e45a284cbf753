"""Weight-magnitude criteria: ``"weight"`` (L1) and ``"l2"``.

The weights of a unit are the rows of the layers that *produce* it (a conv
filter ``W[c]``, a linear neuron's incoming weights ``W[c, :]``); for a group
of coupled producers (e.g. both branches of a residual sum) the rows of every
producer count. Neither BatchNorm parameters nor the consumers' input weights
are included. Reference: Li et al., "Pruning Filters for Efficient ConvNets"
(ICLR 2017) for the L1 filter norm; Yeom et al. (2021) use it as the
"weight" baseline.
"""

from __future__ import annotations

from typing import ClassVar

from .base import WeightCriterion, register


class _Magnitude(WeightCriterion):
    default_normalize: ClassVar[str | None] = "mean"  # see xprune.score: fair global ranking

    def default_normalize_for(self, kind: str) -> str | None:
        """``"mean"`` per layer for units; none for single weights (global magnitude pruning, Han et al. 2015)."""
        return None if kind == "weights" else self.default_normalize


@register("weight")
class WeightL1(_Magnitude):
    """Sum of |w| over the unit's weights (summed over coupled producers).

    For single weights (kind ``"weights"``): |w|.
    """

    def channel_score(self, rows):
        return rows.abs().sum(dim=1)

    def weight_score(self, weight):
        return weight.abs()


@register("l2")
class WeightL2(_Magnitude):
    """Euclidean norm of the unit's weights (all coupled producers' rows together).

    For single weights (kind ``"weights"``): |w|.
    """

    def channel_score(self, rows):
        return rows.pow(2).sum(dim=1)

    def combine_finish(self, s):
        return s.sqrt()

    def weight_score(self, weight):
        return weight.abs()
