r"""The ``"lrp"`` and ``"pbe"`` criteria: PXP (Hatefi et al. 2024) and Pruning by Explaining (Yeom et al. 2021).

A unit's score is the LRP relevance arriving at it, read at the output of the
layers that produce it (for a layer followed by a BatchNorm: after the
BatchNorm, which the canonizer merges into the layer), aggregated over the
reference samples:

- ``aggregate="pxp"`` (default; Hatefi et al., "Pruning by Explaining
  Revisited", arXiv:2408.12568, 2024): per sample the absolute value of the
  relevance summed over positions, summed over samples,
  :math:`s_c = \sum_n |\sum_{p} R_{n,p,c}|` (conv: positions = space; linear
  on token sequences: per token, :math:`\sum_{n,t} |R_{n,t,c}|` as there are
  no positions to sum first).
- ``aggregate="yeom"`` (Yeom et al., "Pruning by explaining: a novel
  criterion for deep neural network pruning", Pattern Recognition 115, 2021,
  arXiv:1912.08881): the relevance summed, *signed*, over samples and
  positions, :math:`s_c = \sum_{n,p} R_{n,p,c}` (their code:
  ``torch.sum(R, dim=0).sum(dim=2).sum(dim=3)`` per conv layer,
  github.com/seulkiyeom/LRP_Pruning; ``torch.sum(R, dim=0)`` per dense layer
  in the toy study). Their per-layer normalisation (``R / sum of the layer's
  R``) is the core's ``normalize="l1"``; the ``"pbe"`` criterion applies it
  by default.
- ``aggregate="abs"``: :math:`s_c = \sum_{n,p} |R_{n,p,c}|`, the sum of
  absolute relevances (named ``"yeom"`` before; it is not theirs: positive and
  negative contributions of a unit do not cancel here).

Units coupled across layers (channels joined by a residual sum) add the
scores read at each producing layer (see
:class:`~xprune.criteria.base.HookedCriterion`); with the norm rule on the
sum, the relevance of the sum's output is split over the producers, so the
total is what flows through the coupled channel.

For single weights (unit kind ``"weights"``) the score is
:math:`|\sum_n R_{w}|`, the absolute batch-summed share of relevance flowing
through each weight (:func:`xprune.lrp.weight_relevance`); per-sample
absolute values would need one backward pass per sample, so ``"pxp"`` and
``"abs"`` use this form for weights, ``"yeom"`` the signed sum
:math:`\sum_n R_{w}`.

Options
-------
composite : str, dict, (str, dict) or Composite
    LRP rules (default: the unit kind's, ``"epsilon-plus"`` for channels and
    ``"attnlrp"`` for heads and neurons); a dict of layer groups gives the
    PXP layer-group composite (see :func:`xprune.lrp.composite`).
aggregate : {"pxp", "yeom", "abs"}
start : {"onehot", "logit"}
    Relevance 1 at the target logit (at each labelled token for labels per
    token; spread over the embedding :math:`e \cdot \hat e_0` for
    ``target="embedding"``), or the logit (objective) value itself.
canonizers : bool or list of Canonizer
    ``True`` (default): merge BatchNorm and give residual sums the norm rule;
    ``False``: none; or an explicit list.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .. import _inputs
from ..errors import XpruneError
from ..lrp import attribution, composite as resolve_composite
from ..lrp.canonizers import default_canonizers
from ..units import get_kind
from .base import HookedCriterion, Objective, reduces_sums, register, wide

__all__ = ["LRP", "PBE"]

#: How per-sample, per-position relevance becomes one score per unit (see the module docstring).
AGGREGATES = ("pxp", "yeom", "abs")


@register("lrp")
class LRP(HookedCriterion):
    """LRP relevance at each unit (Yeom et al. 2021; Hatefi et al. 2024)."""

    default_normalize: ClassVar[str | None] = None
    #: The composite used when none is given (None: the unit kind's default).
    composite_default: ClassVar[str | None] = None

    def __init__(
        self,
        composite: Any = None,
        aggregate: str = "pxp",
        start: str = "onehot",
        canonizers: bool | list = True,
    ):
        if aggregate not in AGGREGATES:
            raise XpruneError(f"aggregate must be 'pxp' or 'yeom' (or 'abs'); got {aggregate!r}")
        if start not in ("onehot", "logit"):
            raise XpruneError(f"start must be 'onehot' or 'logit'; got {start!r}")
        # None: the unit kind's default (epsilon-plus for channels, AttnLRP for heads and neurons)
        self._kind_default = composite is None and self.composite_default is None
        if composite is None and self.composite_default is not None:
            composite = self.composite_default
        self.composite = resolve_composite("epsilon-plus" if composite is None else composite)
        self._defaults = {"epsilon-plus": self.composite}
        self.aggregate = aggregate
        self.start = start
        if canonizers is True:
            self.canonizers = default_canonizers()
        elif canonizers is False or canonizers is None:
            self.canonizers = []
        else:
            self.canonizers = list(canonizers)

    def context(self, model):
        return attribution(model, self.composite, self.canonizers)

    def _streams(self) -> bool:
        # reduce each layer's relevance as its gradient arrives (HookedCriterion): the LRP engine's
        # torch-function modes live inside module forwards only, never during the backward pass
        return True

    def composite_for(self, kind):
        """The composite used on units of ``kind`` (the kind's default unless one was given)."""
        if not self._kind_default:
            return self.composite
        if kind.default_composite not in self._defaults:
            self._defaults[kind.default_composite] = resolve_composite(kind.default_composite)
        return self._defaults[kind.default_composite]

    def context_for(self, model, kind):
        return kind.lrp_context(model, self.composite_for(kind), self.canonizers)

    def contribution(self, signal):
        a, g = signal.activation, signal.grad
        if a.shape[3] == 1:
            return super().contribution(signal)
        r = wide(a) * wide(g)  # [N, S, C, W]: a head's W = query heads x head_dim features
        if self.aggregate == "abs":
            return r.abs().sum((0, 1, 3)).double(), 1.0
        if self.aggregate == "yeom":  # signed: everything that flows through the head
            return r.sum((0, 1, 3)).double(), 1.0
        # PXP on heads: |relevance summed over each query head's features| per token, summed
        n, s, c, w = r.shape
        per_head = r.reshape(n, s, c, signal.subunits, w // signal.subunits).sum(-1)
        return per_head.abs().sum((0, 1, 3)).double(), 1.0

    def seed(self, output: torch.Tensor, objective) -> torch.Tensor:
        seed = super().seed(output, objective)
        if self.start == "onehot":  # relevance = output * seed sums to 1 at each explained position
            # divided by the explained value there (the target logit; e . e0/|e0| for an embedding);
            # 0 where that is 0 or its reciprocal overflows (no relevance rather than Inf/NaN)
            value = (output.detach() * seed).sum(-1, keepdim=True)
            seed = torch.nan_to_num(seed / value, nan=0.0, posinf=0.0, neginf=0.0)
        return seed

    def reduce(self, activation: torch.Tensor, grad: torch.Tensor | None, unit_dim: int) -> torch.Tensor:
        assert grad is not None  # LRP needs the backward pass (needs_grad)
        # in float32 (bf16/fp16 widened by wide(); float32 sums are pairwise, hence accurate, and a float64
        # accumulator is 4-5x slower on CPU); float64 for the totals over batches
        r = wide(activation) * wide(grad)  # [N, S, C]
        if self.aggregate == "yeom":  # signed sum over samples and positions
            return r.sum((0, 1)).double()
        if self.aggregate == "pxp" and unit_dim == 1:  # conv channel: |sum over space| per sample
            return r.sum(1).abs().sum(0).double()
        return r.abs().sum((0, 1)).double()

    @reduces_sums
    def compute_weights(self, model, units, data, *, target="label"):
        from .. import distributed

        names = [g.name for g in units]
        modules = dict(model.named_modules())
        totals = {n: torch.zeros(modules[n].weight.shape, dtype=torch.float64) for n in names}
        kind = get_kind(units.kind)  # its context: the attention rules on Hugging Face attention
        for inputs, labels in data:
            with kind.lrp_context(model, self.composite_for(kind), self.canonizers, weight_relevance=names) as attr:
                with torch.enable_grad():
                    objective = Objective.of(target, _inputs.call(model, inputs), labels, inputs=inputs, model=model)
                    output = objective.output
                    leaves = [leaf for _, leaf in attr.weight_leaves]
                    grads = torch.autograd.grad(output, leaves, self.seed(output, objective), allow_unused=True)
                rel = attr.weight_relevance_from(grads)
            for n, r in rel.items():
                totals[n] += r.detach().double().cpu()
        totals, _ = distributed.all_reduce_sums(totals)  # over all ranks' shards, before the abs
        if self.aggregate == "yeom":  # signed, as for units with outputs
            return {n: t.reshape(-1) for n, t in totals.items()}
        return {n: t.abs().reshape(-1) for n, t in totals.items()}

    def __repr__(self) -> str:
        return f"LRP(composite={self.composite!r}, aggregate={self.aggregate!r}, start={self.start!r})"


@register("pbe")
class PBE(LRP):
    r"""Pruning by Explaining as published (Yeom et al., Pattern Recognition 115, 2021, arXiv:1912.08881).

    The ``"lrp"`` criterion with the authors' settings:

    - rules: composite ``"pbe"`` (:mod:`xprune.lrp.composites`): z+ (= alpha1-beta0 after ReLU) on conv and
      linear layers, biases left out, as in their VGG and toy-MLP code; BatchNorm merged into the
      preceding conv (the default canonizers). ``composite=("pbe", {"linear": "epsilon"})`` puts epsilon
      1e-6 on the linear layers (their ResNet setting, whose only linear layer is the classifier).
    - start: relevance 1 at the true class's logit (``T[i, label[i]] = 1``, their
      ``train_batch``/``backward_lrp``); ``start="logit"`` starts from the logit value, as their toy
      study does (``output * T``).
    - score: the relevance arriving at the unit, summed signed over space and reference samples
      (``aggregate="yeom"``), then divided per layer by the sum of that layer's scores
      (``normalize="l1"``; their ``normalize_ranks_per_layer``, ``v / torch.sum(v)``), and ranked
      globally (``select(..., scope="global")``, the default). xprune divides by the sum of absolute
      values: the same whenever the layer's relevance is non-negative, which z+ with a positive start
      guarantees; where an epsilon rule makes some of it negative their division by a signed sum could
      flip the layer's order, this one cannot.

    The paper prunes conv filters (and, in its toy study, MLP neurons). On attention units (heads,
    transformer neurons: unit kinds whose default composite is not ``"epsilon-plus"``) the rules default
    to the kind's own composite (AttnLRP), an extrapolation the paper does not cover.

    Their schedule: :data:`xprune.schedules.YEOM`.
    """

    default_normalize: ClassVar[str | None] = "l1"
    composite_default: ClassVar[str | None] = "pbe"

    def __init__(
        self, composite: Any = None, aggregate: str = "yeom", start: str = "onehot", canonizers: bool | list = True
    ):
        super().__init__(composite=composite, aggregate=aggregate, start=start, canonizers=canonizers)
        self._preset = composite is None

    def composite_for(self, kind):
        # the paper defines rules for conv and dense layers only; attention units (heads, transformer neurons)
        # keep their kind's composite (AttnLRP), the rest of the method (signed sum, L1, global) unchanged
        if self._preset and kind.default_composite != "epsilon-plus":
            if kind.default_composite not in self._defaults:
                self._defaults[kind.default_composite] = resolve_composite(kind.default_composite)
            return self._defaults[kind.default_composite]
        return super().composite_for(kind)

    def __repr__(self) -> str:
        return f"PBE(composite={self.composite!r}, aggregate={self.aggregate!r}, start={self.start!r})"
