"""Gradient-based criteria: ``"gradient"`` and ``"taylor"``.

Both differentiate an *objective* with respect to each unit's output: by
default the logit of the target class (the same signal LRP starts from, so
criteria are compared on equal terms); ``objective="loss"`` uses the
cross-entropy loss instead (as in Molchanov et al. 2017). With labels per
token the objective sums over the labelled tokens, and
``target="embedding"`` differentiates the similarity to the original
embedding (see :class:`~xprune.criteria.base.Objective`). Means are over
samples and positions, padding tokens not counted.

- ``"gradient"``: ``|mean over samples and positions of dO/da|`` (Yeom et al.
  2021, baseline "gradient").
- ``"taylor"``: ``|mean over samples and positions of a * dO/da|``, the
  first-order Taylor estimate of the change of the objective when the unit is
  zeroed (Molchanov et al., "Pruning Convolutional Neural Networks for
  Resource Efficient Inference", ICLR 2017). Molchanov et al. L2-normalise per
  layer; that is this criterion's default normalisation.

For single weights (kind ``"weights"``) the same formulas are applied to the
weight and the gradient at the weight: ``|mean dO/dw|`` and ``|w * sum dO/dw|``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .. import _inputs
from ..errors import XpruneError
from .base import HookedCriterion, Objective, reduces_sums, register, wide


class _Objective(HookedCriterion):
    def __init__(self, objective: str = "logit"):
        if objective not in ("logit", "loss"):
            raise XpruneError(f"objective must be 'logit' or 'loss', got {objective!r}")
        self.objective = objective

    def seed(self, output, objective):
        # "loss": d/d(logits) of the summed cross-entropy, with the sign of -loss so that
        # both objectives point the same way ("more of the right class").
        return objective.gradient(self.objective)

    @reduces_sums
    def compute_weights(self, model, units, data, *, target="label"):
        from .. import distributed

        names = dict(model.named_modules())
        weights = [names[g.name].weight for g in units]
        totals = [torch.zeros_like(w, dtype=torch.float64) for w in weights]
        n = 0
        for inputs, labels in data:
            with torch.enable_grad():
                objective = Objective.of(target, _inputs.call(model, inputs), labels, inputs=inputs, model=model)
                output = objective.output
                grads = torch.autograd.grad(
                    output, weights, grad_outputs=self.seed(output, objective), allow_unused=True
                )
            for t, g in zip(totals, grads):
                if g is not None:
                    t += g.double()
            n += output.shape[0]
        # sums over all ranks' shards before the (non-linear) finalisation; a no-op outside distributed scoring
        summed, counts = distributed.all_reduce_sums({g.name: t for g, t in zip(units, totals)},
                                                     {g.name: n for g in units})
        return {
            g.name: self.weight_finalize(w.detach().double(), summed[g.name], counts[g.name]).reshape(-1).cpu()
            for g, w in zip(units, weights)
        }


@register("gradient")
class MeanGradient(_Objective):
    """|mean gradient of the objective at the unit's output|."""

    def reduce(self, activation, grad, unit_dim):
        return wide(grad).sum(dim=1).double().sum(0)  # over positions in the tensor's dtype, samples in float64

    def contribution(self, signal):
        g = wide(signal.grad)  # [N, S, C, W]: a sum over S and W per sample, then over samples in float64
        return g.sum(dim=(1, 3)).double().sum(0), signal.positions * g.shape[3]

    def finalize(self, total, count):
        return (total / count).abs()

    def weight_finalize(self, weight, grad_sum, n):
        return (grad_sum / n).abs()


@register("taylor")
class Taylor(_Objective):
    """|mean of activation x gradient| at the unit's output (Molchanov et al. 2017)."""

    default_normalize: ClassVar[str | None] = "l2"

    def reduce(self, activation, grad, unit_dim):
        return (wide(activation) * wide(grad)).sum(dim=1).double().sum(0)

    def contribution(self, signal):
        # the features of a unit (a head's width) are one unit: the mean is over samples and positions only,
        # so the score is |dO/dg| / (N S) for a gate g on the unit (Michel et al. 2019 for heads).
        # Per sample the products are summed over positions and features in the tensors' dtype (float32:
        # no float64 copy of the big tensors), then the [N, C] sums are accumulated in float64.
        a, g = wide(signal.activation), wide(signal.grad)
        return (a * g).sum(dim=(1, 3)).double().sum(0), signal.positions

    def finalize(self, total, count):
        return (total / count).abs()

    def weight_finalize(self, weight, grad_sum, n):
        return (weight * grad_sum / n).abs()
