r"""The ``"integrated-gradients"`` criterion: input integrated gradients read at each unit.

Integrated gradients (Sundararajan, Taly and Yan, "Axiomatic Attribution for
Deep Networks", ICML 2017) attribute the change of the target logit between a
baseline input :math:`x'` and the input :math:`x` along the straight path
:math:`x(t) = x' + t\,(x - x')`. Read at a hidden unit instead of the input
(the share of the integrated gradients that flows through the unit, called
*conductance* by Dhamdhere, Yan and Sundararajan, ICLR 2019), the attribution
of unit :math:`c` with activation :math:`z_c` is

.. math::

    A_{n,c} = \int_0^1 \sum_p \frac{\partial O_n}{\partial z_{p,c}}\big(x(t)\big)\,
              \frac{d z_{p,c}(x(t))}{dt}\, dt
    \approx \sum_{k=0}^{K-1} \sum_p \big(z_{p,c}(t_{k+1}) - z_{p,c}(t_k)\big)\,
              \bar G_{k,p,c}, \qquad t_k = k / K,

with :math:`\bar G_k = G(t_k)` (``rule="left"``, the rule of captum's
``LayerConductance`` with ``method="riemann_trapezoid"``) or
:math:`\bar G_k = (G(t_k) + G(t_{k+1}))/2` (``rule="trapezoid"``, default,
second-order accurate). Both take :math:`K + 1` forward+backward passes per
batch. :math:`p` runs over positions (conv: space).

Completeness: when every path from the input to the output goes through the
group's layer (a cut), :math:`\sum_c A_{n,c} \to O_n(x) - O_n(x')` as K grows
(chain rule; the sum telescopes in the limit).

Score: :math:`s_c = |\sum_n A_{n,c}|` (``aggregate="sum"``, default) or
:math:`s_c = \sum_n |A_{n,c}|` (``aggregate="abs"``).
:meth:`IntegratedGradients.attributions` returns the signed per-sample values.
Coupled producers of one group add their attributions
(:meth:`~xprune.units.UnitGroup.units_of`).

Options
-------
n_steps : int, default 16
    K, the number of intervals of the path.
baseline : "zeros", float, Tensor or callable, default "zeros"
    The baseline input: zeros, a constant, a tensor broadcastable to a batch
    of inputs, or ``baseline(inputs) -> tensor``. For a tuple or dict of input
    tensors the same rule applies to each floating-point tensor.
rule : {"trapezoid", "left"}
objective : {"logit", "loss"}
aggregate : {"sum", "abs"}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..units import UnitSet, captured_call, get_kind
from .base import Criterion, Objective, _positions_mask, flatten_units, register

__all__ = ["IntegratedGradients"]


@register("integrated-gradients")
class IntegratedGradients(Criterion):
    """|Integrated gradients of the target, input baseline, read at each unit| (Sundararajan et al. 2017)."""

    default_normalize: ClassVar[str | None] = "mean"  # see xprune.score: fair global ranking

    def __init__(
        self,
        n_steps: int = 16,
        baseline: Any = "zeros",
        rule: str = "trapezoid",
        objective: str = "logit",
        aggregate: str = "sum",
    ):
        if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
            raise XpruneError(f"n_steps must be a positive int, got {n_steps!r}")
        if rule not in ("trapezoid", "left"):
            raise XpruneError(f"rule must be 'trapezoid' or 'left', got {rule!r}")
        if objective not in ("logit", "loss"):
            raise XpruneError(f"objective must be 'logit' or 'loss', got {objective!r}")
        if aggregate not in ("sum", "abs"):
            raise XpruneError(f"aggregate must be 'sum' or 'abs', got {aggregate!r}")
        if not (
            baseline == "zeros"
            if isinstance(baseline, str)
            else isinstance(baseline, (int, float, torch.Tensor)) or callable(baseline)
        ):
            raise XpruneError(f"baseline must be 'zeros', a number, a tensor or a callable(inputs); got {baseline!r}")
        self.n_steps, self.baseline, self.rule = n_steps, baseline, rule
        self.objective, self.aggregate = objective, aggregate
        self.passes = 0

    # ------------------------------------------------------------------ path

    def _baseline_of(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_floating_point():
            raise DataError(
                f"integrated-gradients interpolates the inputs, which must be floating point; got {x.dtype}. "
                "For token inputs use criterion 'singe' (gates on the units, not the inputs)"
            )
        b = self.baseline
        if isinstance(b, str):
            return torch.zeros_like(x)
        if callable(b) and not isinstance(b, torch.Tensor):
            b = b(x)
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        try:
            return torch.broadcast_to(b, x.shape).clone()
        except RuntimeError:
            raise DataError(
                f"the baseline of shape {tuple(b.shape)} does not broadcast to inputs {tuple(x.shape)}"
            ) from None

    def _interpolate(self, inputs: Any, baselines: Any, t: float) -> Any:
        if isinstance(inputs, torch.Tensor):
            return baselines + t * (inputs - baselines) if inputs.is_floating_point() else inputs
        if isinstance(inputs, dict):
            return {k: self._interpolate(v, baselines[k], t) for k, v in inputs.items()}
        if isinstance(inputs, (tuple, list)):
            return type(inputs)(self._interpolate(v, b, t) for v, b in zip(inputs, baselines, strict=True))
        return inputs

    def _baselines(self, inputs: Any) -> Any:
        if isinstance(inputs, torch.Tensor):
            return self._baseline_of(inputs) if inputs.is_floating_point() else inputs
        if isinstance(inputs, dict):
            return {k: self._baselines(v) for k, v in inputs.items()}
        if isinstance(inputs, (tuple, list)):
            return type(inputs)(self._baselines(v) for v in inputs)
        return inputs

    # ------------------------------------------------------------------ compute

    def compute(self, model, units, data, *, target="label"):
        from .. import distributed

        # per-unit sums over samples of A (aggregate "sum") or |A| ("abs"), batch by batch
        totals = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
        for batch in self._batches(model, units, data, target):
            for name, a in batch.items():
                totals[name] += a.sum(0) if self.aggregate == "sum" else a.abs().sum(0)
        totals, _ = distributed.all_reduce_sums(totals)  # over all ranks' shards, before the abs of the sum
        return {k: v.abs() for k, v in totals.items()} if self.aggregate == "sum" else totals

    def distributed_sums(self, kind: str) -> bool:
        return kind == "channels"

    def attributions(
        self, model: nn.Module, units: UnitSet, data: Iterable, *, target: Any = "label"
    ) -> dict[str, torch.Tensor]:
        """Signed attributions :math:`A_{n,c}`, ``[samples, units]`` per group (float64)."""
        chunks: dict[str, list[torch.Tensor]] = {g.name: [] for g in units}
        for batch in self._batches(model, units, data, target):
            for name, a in batch.items():
                chunks[name].append(a)
        return {k: torch.cat(v) if v else torch.zeros(0, units[k].size, dtype=torch.float64) for k, v in chunks.items()}

    def _batches(self, model, units, data, target):
        """Per batch, ``{group name: A [batch samples, units]}`` for the groups the model reaches."""
        if units.kind != "channels":  # checked at once, not at the first batch
            raise XpruneError(
                f"criterion 'integrated-gradients' supports unit kind 'channels', not {units.kind!r}"
                + ("; use 'taylor' for single weights" if units.kind == "weights" else "")
            )
        return self._per_batch(model, units, data, target)

    def _per_batch(self, model, units, data, target):
        names = dict(model.named_modules())
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        kind = get_kind(units.kind)
        groups = {g.name: g for g in units}
        copy_keys: set = set()  # producers whose output a later in-place op overwrites (copied once known)
        self.passes = 0
        for inputs, labels in data:
            inputs = _inputs.to_device(inputs, device)
            mask = _inputs.token_mask(inputs)
            baselines = self._baselines(inputs)
            classes = None
            prev_z = prev_g = None
            batch = {g.name: None for g in units}
            for k in range(self.n_steps, -1, -1):  # from the input (t = 1) down to the baseline
                t = k / self.n_steps

                def forward(inputs=inputs, baselines=baselines, t=t):
                    with torch.enable_grad():
                        return _inputs.call(model, self._interpolate(inputs, baselines, t))

                with captured_call(kind, model, units, forward, copy_keys) as (sig, raw), torch.enable_grad():
                    if classes is None:  # the first pass is at the input itself: read the target there
                        classes = Objective.of(target, raw, labels, inputs=inputs, model=model)
                    sites = [(key, j) for key, calls in sig.captured.items() for j in range(len(calls))]
                    grads = torch.autograd.grad(
                        classes.value(classes.read(raw), self.objective),
                        [sig.captured[key][j] for key, j in sites],
                        allow_unused=True,
                    )
                self.passes += 1
                z = {}
                g = {}
                for (key, j), grad in zip(sites, grads, strict=True):
                    dim = groups[key[0]].unit_dim(names[key[1]])
                    act = sig.captured[key][j].detach()
                    z[key, j] = flatten_units(act, dim).double()
                    g[key, j] = (
                        torch.zeros_like(z[key, j]) if grad is None else flatten_units(grad.detach(), dim).double()
                    )
                    m = _positions_mask(mask, act, z[key, j]) if dim == -1 else None
                    if m is not None:  # linear layers on tokens: padding tokens carry no attribution
                        g[key, j] = g[key, j] * m[..., None].to(g[key, j].dtype)
                if prev_z is not None:
                    for site in z:
                        (name, p), _ = site
                        group = groups[name]
                        # interval [t_k, t_k+1]: z(t_k+1) = prev_z, G(t_k) = g
                        gbar = g[site] if self.rule == "left" else 0.5 * (prev_g[site] + g[site])
                        contrib = ((prev_z[site] - z[site]) * gbar).sum(1).cpu()  # [N, channels]
                        acc = batch[name]
                        if acc is None:
                            acc = batch[name] = torch.zeros(contrib.shape[0], group.size, dtype=torch.float64)
                        group.scatter_add(acc, p, contrib)
                prev_z, prev_g = z, g
            yield {name: a for name, a in batch.items() if a is not None}

    def __repr__(self) -> str:
        return (
            f"IntegratedGradients(n_steps={self.n_steps}, rule={self.rule!r}, objective={self.objective!r}, "
            f"aggregate={self.aggregate!r})"
        )
