"""Gradient-based criteria: ``"gradient"``, ``"taylor"`` and ``"taylor-mean"``.

Each differentiates an *objective* with respect to each unit's output:
``objective="logit"`` is the logit of the target class (the signal LRP starts
from), ``objective="loss"`` the cross-entropy of the target (Molchanov et al.
2017). With labels per token the objective sums over the labelled tokens, and
``target="embedding"`` differentiates the similarity to the original
embedding (see :class:`~xprune.criteria.base.Objective`). Padding tokens are
not counted.

- ``"taylor"`` (objective ``"loss"`` by default; under ``target="embedding"``,
  which has no classes, the default explains the similarity instead):
  Molchanov et al., "Pruning Convolutional Neural Networks for Resource
  Efficient Inference" (ICLR 2017), Sec. 2.2, eq. (8): for each sample,
  ``|1/M sum over the M positions of a * dC/da|`` (the first-order change of
  the cost C when the feature map is zeroed), then averaged over the samples
  ("computed for each example separately and averaged"), and L2-normalised
  per layer (eq. 9), this criterion's default normalisation. For an attention
  head (the features of a unit taken together) the per-sample value is
  ``|dC/dxi| / M`` for a gate ``xi`` on the head's output, Michel et al.,
  "Are Sixteen Heads Really Better than One?" (NeurIPS 2019), Sec. 4.1,
  divided by the sample's number of tokens M (Molchanov's 1/M; with samples
  of equal length the ranking is Michel's). The absolute value is taken per
  sample, so samples whose first-order terms have opposite signs do not cancel.
- ``"taylor-mean"`` (objective ``"logit"`` by default): ``|mean over samples and
  positions of a * dO/da|``, the absolute value taken *after* averaging over
  the samples (xprune's ``"taylor"`` before issue 19); L2-normalised per
  layer. With ``objective="loss"`` it is the Taylor baseline of Yeom et al.
  (2021) as their code computes it (github.com/seulkiyeom/LRP_pruning,
  ``modules/prune_vgg.py``, ``method_type == 'ICLR'``: the batch-summed
  ``activation * grad`` of the cross-entropy divided by N H W, accumulated
  signed over batches, then |.| and L2 per layer).
- ``"gradient"`` (objective ``"logit"`` by default): ``|mean over samples and
  positions of dO/da|``, the form of Yeom et al.'s "gradient" baseline (their
  ``method_type == 'grad'``, citing Sun et al., ICML 2017). Their code
  differentiates the cross-entropy and L2-normalises per layer:
  ``xprune.score(..., "gradient", objective="loss", normalize="l2")``; this
  criterion's defaults are the logit (the signal LRP starts from) and
  ``"mean"`` (see :func:`xprune.score`).

For single weights (kind ``"weights"``) the same formulas are applied to the
weight and the batch gradient at the weight (no per-sample split):
``|mean dO/dw|`` for ``"gradient"`` and ``|w * mean dO/dw|`` for both Taylor forms.
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
            for t, g in zip(totals, grads, strict=True):
                if g is not None:
                    t += g.double()
            n += output.shape[0]
        # sums over all ranks' shards before the (non-linear) finalisation; a no-op outside distributed scoring
        summed, counts = distributed.all_reduce_sums(
            {g.name: t for g, t in zip(units, totals, strict=True)}, {g.name: n for g in units}
        )
        return {
            g.name: self.weight_finalize(w.detach().double(), summed[g.name], counts[g.name]).reshape(-1).cpu()
            for g, w in zip(units, weights, strict=True)
        }


class _LossByDefault(str):
    """The string ``"loss"`` as Taylor's default (told apart from a ``"loss"`` the user passes)."""


#: Taylor's default objective: the loss, or under ``target="embedding"`` (no classes) the embedding similarity
LOSS_BY_DEFAULT = _LossByDefault("loss")


@register("gradient")
class MeanGradient(_Objective):
    """|mean gradient of the objective at the unit's output| (the form of Yeom et al. 2021's gradient baseline)."""

    default_normalize: ClassVar[str | None] = "mean"

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
    """Per sample |mean over positions of activation x dLoss/dactivation|, averaged (Molchanov et al. 2017)."""

    default_normalize: ClassVar[str | None] = "l2"  # Molchanov et al. 2017, eq. (9)

    def __init__(self, objective: str = LOSS_BY_DEFAULT):
        super().__init__(objective)

    def seed(self, output, objective):
        if self.objective is LOSS_BY_DEFAULT and objective.classes is None:  # target="embedding": no cross-entropy,
            return objective.gradient("logit")  # the similarity to the original embedding is what is explained
        return objective.gradient(self.objective)

    def contribution(self, signal):
        # per sample: the products summed over positions and the unit's features in the tensors' dtype (float32,
        # no float64 copy of the big tensors), |.| of that sum divided by the sample's number of positions
        # (tokens under a padding mask); then summed over samples in float64. count = samples.
        a, g = wide(signal.activation), wide(signal.grad)
        per_sample = (a * g).sum(dim=(1, 3)).double()  # [N, C]
        if signal.token_mask is not None:
            positions = signal.token_mask.sum(dim=1).double()
            counted = positions > 0
            per_sample, positions = per_sample[counted], positions[counted]
        else:
            positions = torch.full(
                (per_sample.shape[0],), float(a.shape[1]), dtype=torch.float64, device=per_sample.device
            )
        return (per_sample.abs() / positions[:, None]).sum(0), float(per_sample.shape[0])

    def finalize(self, total, count):
        return total / count if count else total

    def weight_finalize(self, weight, grad_sum, n):
        return (weight * grad_sum / n).abs()


@register("taylor-mean")
class TaylorMean(_Objective):
    """|mean over samples and positions of activation x gradient| (the form of Yeom et al. 2021's Taylor baseline)."""

    default_normalize: ClassVar[str | None] = "l2"

    def reduce(self, activation, grad, unit_dim):
        return (wide(activation) * wide(grad)).sum(dim=1).double().sum(0)

    def contribution(self, signal):
        # the features of a unit (a head's width) are one unit: the mean is over samples and positions only.
        # Per sample the products are summed over positions and features in the tensors' dtype, then the
        # [N, C] sums are accumulated in float64; |.| only after the mean over samples (signs cancel).
        a, g = wide(signal.activation), wide(signal.grad)
        return (a * g).sum(dim=(1, 3)).double().sum(0), signal.positions

    def finalize(self, total, count):
        return (total / count).abs()

    def weight_finalize(self, weight, grad_sum, n):
        return (weight * grad_sum / n).abs()
