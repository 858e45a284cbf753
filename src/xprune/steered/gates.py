r"""Learned channel gates and a differentiable, exact MACs model.

Gates (:class:`GateGenerator`, :class:`ChannelGates`)
------------------------------------------------------
One gate per unit of every channel group (groups of one unit are never
gated). The gate multiplies the unit's output at the sites of
:func:`xprune.gates.sites_of` (``"after-norm"``: after the
BatchNorm that follows a producer, so a closed gate is exactly the unit's
removal), every coupled producer of a group sharing the group's gate through
:meth:`~xprune.units.UnitGroup.units_of`. A *generator* produces one logit
:math:`a = \ell + b` per gate (:math:`\ell` generated, :math:`b` a fixed
offset, ``base``); in training a relaxed sample

.. math:: z = \operatorname{sigmoid}\big((a + \epsilon) / \tau\big),

made hard by the straight-through estimator (forward :math:`\mathbb 1[z > 1/2]`,
backward :math:`\partial z`), Bengio et al. 2013; Jang et al., Maddison et
al. 2017. The noise :math:`\epsilon` is *logistic*,
:math:`\log U - \log(1 - U)` (binary concrete, :math:`P(\text{open}) =
\operatorname{sigmoid}(a)`; the free gates), or *Gumbel*,
:math:`-\log(-\log U)` (what ``Models/hypernet.py`` of the authors' code
draws, :math:`P(\text{open}) = 1 - \exp(-e^{a})`; the hypernetwork of
:mod:`xprune.steered.generator`). At evaluation the gates are deterministic
and hard, :math:`\mathbb 1[a > t]` (threshold :math:`t = 0`), and
:meth:`GateGenerator.plan` removes exactly the units whose gate is closed.
:class:`ChannelGates` (``generator="free"``) learns :math:`a` directly, one
free logit per gate (the authors' ``Simplified_Gate``).

MACs (:class:`MacsModel`)
-------------------------
With :math:`r_n` units removed from group :math:`n`, the MACs of the model
counted by Torch-Pruning's counter (1 multiply-add = 1 MAC) are a polynomial
of degree two: a convolution or linear layer costs
(its kept inputs) x (its kept outputs) x const, a norm, activation or pool
(its kept channels) x const (:class:`xprune.costs.CostModel`, built from one
trace of the model). Hence exactly

.. math:: \mathrm{MACs}(r) = M_0 - \sum_n c_n r_n + \sum_{n < m} b_{nm} r_n r_m,

where :math:`c_n` is the saving of one unit of group :math:`n`
(:func:`xprune.unit_costs`) and :math:`b_{nm}` counts the MACs of the layers
reading group :math:`n` and writing group :math:`m` (or the reverse) that both
savings claim. The per-unit costs alone are the tangent at the full model and
over-estimate the saving of large prunings (removing half the inputs and half
the outputs of a convolution saves 75% of its MACs, not 100%). Under
independent gates :math:`\mathbb E[r_n r_m] = \mathbb E[r_n]\,\mathbb E[r_m]`
for :math:`n \ne m`, so the expected MACs are the same polynomial at
:math:`\mathbb E[r_n] = \sum_i (1 - P_i(\text{open}))`,
differentiable in the gate probabilities. Groups spanning unequal branches
of a concatenation use their mean unit; :meth:`MacsModel.of_plan` is exact
for any plan and :meth:`MacsModel.check` compares with a measured count.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import XpruneError
from ..gates import sites_of
from ..plan import Plan
from ..scores import Scores
from ..select import select
from ..units import UnitSet

__all__ = ["GateGenerator", "ChannelGates", "MacsModel", "select_for_macs"]

_EPS = 1e-6


class _StraightThrough(torch.autograd.Function):
    """Forward ``1[z > 1/2]`` exactly, backward the identity (straight-through estimator)."""

    @staticmethod
    def forward(ctx, z):
        return (z > 0.5).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class GateGenerator(nn.Module):
    """What every gate generator shares: attaching, sampling, hard gates, plans (see the module docs).

    Subclasses define :meth:`raw_logits` (the generated :math:`\\ell`, one
    tensor per gated group, differentiable).

    Parameters
    ----------
    units : UnitSet
        Channel groups (kind ``"channels"``) of the model the gates attach to.
    temperature : float
        :math:`\\tau`.
    base : float
        :math:`b`, added to every generated logit.
    noise : "logistic" or "gumbel"
    per_sample : bool
        One gate sample per image (``True``) or one per batch, shared by its images.

    Attributes
    ----------
    names : list of str
        The gated groups (size >= 2), in forward order.
    """

    def __init__(
        self, units: UnitSet, temperature: float, base: float = 0.0, noise: str = "logistic", per_sample: bool = True
    ):
        super().__init__()
        if units.kind != "channels":
            raise XpruneError(f"steered gates prune channels; got units of kind {units.kind!r}")
        if temperature <= 0:
            raise XpruneError(f"temperature must be > 0, got {temperature!r}")
        if noise not in ("logistic", "gumbel"):
            raise XpruneError(f"noise must be 'logistic' or 'gumbel', got {noise!r}")
        self.units = units
        self.temperature = float(temperature)
        self.base = float(base)
        self.noise = noise
        self.per_sample = bool(per_sample)
        self.names = [g.name for g in units if g.size >= 2]
        if not self.names:
            raise XpruneError("no channel group has two or more units to gate")
        self._values: dict[str, torch.Tensor] | None = None
        self._handles: list = []

    def raw_logits(self) -> list[torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def gate_logits(self) -> list[torch.Tensor]:
        """:math:`a = \\ell + b` per gated group, differentiable (higher = keep; open at evaluation when > 0)."""
        return [a + self.base for a in self.raw_logits()] if self.base else list(self.raw_logits())

    # ---------------------------------------------------------------- attaching
    def attach(self, model: nn.Module, gate_at: str = "after-norm", like: nn.Module | None = None) -> GateGenerator:
        """Hook the gates into ``model``.

        ``like`` is the model ``units`` was discovered on, when ``model`` is a
        copy of it: the gate sites (the BatchNorm after each producer) are
        found in ``like``'s dependency graph and hooked into ``model`` by name.
        """
        self.detach()
        like = model if like is None else like
        graph = self.units.graph
        modules = dict(like.named_modules())
        if graph is not None and not any(modules.get(n) in graph.module2node for n in self.names):
            raise XpruneError("these units were found on another model; attach(copy, like=original_model)")
        names = {m: n for n, m in like.named_modules()}
        target = dict(model.named_modules())
        for name in self.names:
            group = self.units[name]
            for site in sites_of(like, self.units, group, gate_at):
                module = target.get(names.get(site.module, ""))
                if module is None:
                    raise XpruneError(
                        f"the model has no layer {names.get(site.module)!r} to gate; is it a copy of `like`?"
                    )
                self._handles.append(site.attach(group, self._gate(group.name), module=module))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _gate(self, name: str):
        return lambda: None if self._values is None else self._values.get(name)

    # ---------------------------------------------------------------- states
    def open(self) -> None:
        """All gates open (the model as it is)."""
        self._values = None

    def _noise(self, shape, generator, device) -> torch.Tensor:
        u = torch.rand(shape, generator=generator).clamp(_EPS, 1 - _EPS).to(device)
        if self.noise == "gumbel":
            return -torch.log(-torch.log(u))
        return torch.log(u) - torch.log1p(-u)

    def relaxed(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Relaxed samples :math:`z` per group, ``[n, size]`` (``[1, size]`` when not ``per_sample``)."""
        rows = n if self.per_sample else 1
        return {
            name: torch.sigmoid((a + self._noise((rows, a.numel()), generator, a.device)) / self.temperature)
            for name, a in zip(self.names, self.gate_logits(), strict=True)
        }

    def sample(self, n: int, generator: torch.Generator | None = None, hard: bool = True) -> None:
        """Draw gates for a batch of ``n`` (straight-through hard when ``hard``)."""
        z = self.relaxed(n, generator)
        self._values = {k: _StraightThrough.apply(v) if hard else v for k, v in z.items()}

    def set_hard(self, threshold: float = 0.0) -> None:
        """Deterministic hard gates :math:`1[a > t]` (evaluation)."""
        self._values = {
            n: (a.detach() > threshold).float()[None] for n, a in zip(self.names, self.gate_logits(), strict=True)
        }

    def set_values(self, values: Mapping[str, torch.Tensor]) -> None:
        """Fixed gate values (1-D per group, 1 = open); groups not given stay open."""
        self._values = {n: torch.as_tensor(v, dtype=torch.float32).reshape(1, -1) for n, v in values.items()}

    def probabilities(self) -> dict[str, torch.Tensor]:
        """Probability that each sampled hard gate is open.

        :math:`\\operatorname{sigmoid}(a)` (logistic noise) or :math:`1 - e^{-e^a}` (Gumbel noise).
        """
        if self.noise == "gumbel":
            return {n: -torch.expm1(-torch.exp(a)) for n, a in zip(self.names, self.gate_logits(), strict=True)}
        return {n: torch.sigmoid(a) for n, a in zip(self.names, self.gate_logits(), strict=True)}

    def hard_removed(self, threshold: float = 0.0) -> dict[str, torch.Tensor]:
        r"""Removed counts of the deterministic hard gates, with the gradient of :meth:`expected_removed`.

        Straight-through: the value is :math:`\sum_i \mathbb 1[a_i \le t]` (what
        :meth:`plan` removes), the gradient that of :math:`\sum_i (1 - P_i(\text{open}))`.
        """
        soft = self.expected_removed()
        return {
            n: (a.detach() <= threshold).sum().to(soft[n].dtype) + soft[n] - soft[n].detach()
            for n, a in zip(self.names, self.gate_logits(), strict=True)
        }

    def expected_removed(self) -> dict[str, torch.Tensor]:
        """:math:`\\mathbb E[r_n] = \\sum_i (1 - P_i(\\text{open}))` per gated group (differentiable)."""
        return {n: (1 - p).sum() for n, p in self.probabilities().items()}

    def sampled_removed(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Removed counts of one fresh straight-through hard sample (value hard, gradient of the relaxed sample).

        What the authors' ``resource_output()`` feeds the FLOPs constraint (``Models/hypernet.py``).
        """
        return {n: (1 - _StraightThrough.apply(z[0])).sum() for n, z in self.relaxed(1, generator).items()}

    # ---------------------------------------------------------------- outputs
    def plan(self, threshold: float = 0.0) -> Plan:
        """The plan removing every unit whose gate is closed (:math:`a \\le t`); each group keeps >= 1 unit."""
        remove: dict[str, list[int]] = {g.name: [] for g in self.units}
        with torch.no_grad():
            logits = self.gate_logits()
        for n, a in zip(self.names, logits, strict=True):
            closed = (a <= threshold).nonzero().flatten().tolist()
            if len(closed) == a.numel():
                closed.remove(int(a.argmax()))
            remove[n] = sorted(closed)
        u = self.units
        return Plan(
            "channels",
            remove,
            {g.name: g.size for g in u},
            {g.name: list(g.members) for g in u},
            {g.name: g.root for g in u},
            u.example,
            {"criterion": "steered", "threshold": threshold, "min_keep": 1},
        )

    def scores(self) -> Scores:
        """Gate logits :math:`a` as :class:`~xprune.Scores` (higher = keep).

        Ungated one-unit groups get the maximum + 1.
        """
        with torch.no_grad():
            values = {n: a.double() for n, a in zip(self.names, self.gate_logits(), strict=True)}
        top = max(float(v.max()) for v in values.values()) + 1.0
        full = {g.name: values.get(g.name, torch.full((g.size,), top, dtype=torch.float64)) for g in self.units}
        return Scores.from_units(full, self.units, criterion="steered", meta={"scores": "gate logits"})


class ChannelGates(GateGenerator):
    """One free, learnable logit per prunable channel of ``units`` (``generator="free"``; see the module docs).

    The authors' ``Simplified_Gate`` (``Models/hypernet.py``): the logits are
    the parameters. Logistic noise, one sample per image.

    Parameters
    ----------
    units : UnitSet
        Channel groups (kind ``"channels"``) of the model the gates attach to.
    init : float, default 3.0
        Initial logit (``sigmoid(3) = 0.95``: nearly all open); plays the
        role of the authors' ``base``.
    temperature : float, default 0.5
        :math:`\\tau`.
    init_noise : float, default 0.5
        Standard deviation of Gaussian noise added to the initial logits. It
        breaks the ties between gates that receive the same gradient (Adam
        moves every logit by about the same step, so identical gates would
        open and close all together and the hard MACs could only jump
        between coarse levels).
    seed : int, default 0
        Seeds that noise.

    Attributes
    ----------
    logits : nn.ParameterList
        :math:`a` of each gated group.
    """

    def __init__(
        self, units: UnitSet, init: float = 3.0, temperature: float = 0.5, init_noise: float = 0.5, seed: int = 0
    ):
        super().__init__(units, temperature, 0.0, "logistic", per_sample=True)
        g = torch.Generator().manual_seed(int(seed))
        self.logits = nn.ParameterList(
            [
                nn.Parameter(float(init) + float(init_noise) * torch.randn(units[n].size, generator=g))
                for n in self.names
            ]
        )

    def raw_logits(self) -> list[torch.Tensor]:
        return list(self.logits)


class MacsModel:
    """Exact MACs of ``model`` after removing ``r_n`` units of each group (see the module docs).

    A view of :class:`xprune.costs.CostModel` (one trace of the model) in
    terms of removed counts, differentiable in them.

    Parameters
    ----------
    model : nn.Module
    units : UnitSet
        Channel groups of ``model``.
    example_inputs : optional
        One sample (default: zeros shaped as recorded in ``units.example``).

    Attributes
    ----------
    base : float
        MACs of the full model.
    costs : dict
        :math:`c_n` from :func:`xprune.unit_costs` (``inf`` for one-unit groups).
    pairs : dict
        :math:`b_{nm}` for the interacting pairs ``(n, m)``.
    model_costs : CostModel
        The exact model, per unit (what :func:`xprune.select` budgets with).
    """

    def __init__(self, model: nn.Module, units: UnitSet, example_inputs: Any = None):
        from ..costs import CostModel

        self.model_costs = CostModel(model, units, example_inputs)
        self.sizes = dict(self.model_costs.sizes)
        self.base = float(self.model_costs.base["macs"])
        self.costs = self.model_costs.unit_costs("macs")
        self.pairs = self.model_costs.pairs("macs")

    def macs(self, removed: Mapping[str, Any]) -> Any:
        """MACs with ``removed[n]`` units gone from group ``n`` (numbers or tensors; missing groups: 0)."""
        return self.model_costs.of_counts(dict(removed), "macs")

    def of_plan(self, plan: Plan) -> float:
        """MACs of the model pruned by ``plan`` (exact, unit by unit)."""
        return self.model_costs.of_plan(plan, "macs")

    def expected(self, gates: GateGenerator, straight_through: bool = False) -> torch.Tensor:
        """Expected MACs under ``gates`` (differentiable in the logits).

        ``straight_through=True``: the value is the MACs of the deterministic
        hard gates (what will be removed), the gradient that of the expectation.
        """
        return self.macs(gates.hard_removed() if straight_through else gates.expected_removed())

    def sampled(self, gates: GateGenerator, generator: torch.Generator | None = None) -> torch.Tensor:
        """MACs of one fresh straight-through hard sample of ``gates`` (:meth:`GateGenerator.sampled_removed`)."""
        return self.macs(gates.sampled_removed(generator))

    def check(self, model: nn.Module, plan: Plan, example_inputs: Any = None) -> tuple[float, float]:
        """``(predicted, measured)`` MACs of ``model`` pruned by ``plan``."""
        from ..measure import count
        from ..surgery import apply

        example = example_inputs if example_inputs is not None else _inputs.from_spec(plan.example)
        return self.of_plan(plan), float(count(apply(model, plan, "remove", example_inputs=example), example)["macs"])


def select_for_macs(scores: Scores, macs: MacsModel, reduction: float, **select_options: Any) -> Plan:
    """The plan of :func:`xprune.select` removing ``reduction`` of the model's MACs (``by="macs"``).

    :func:`xprune.select` counts MACs exactly (:class:`xprune.costs.CostModel`);
    this reuses ``macs``'s model. The plan records ``macs_reduction``
    (achieved) and ``macs_target`` in its ``meta``. Any other option of
    ``select`` (``scope``, ``min_keep``, ``normalize``) is passed on.
    """
    if not 0 <= reduction < 1:
        raise XpruneError(f"reduction must be in [0, 1), got {reduction!r}")
    select_options.pop("tol", None)  # accepted for compatibility: the selection is exact
    plan = select(scores, reduction, by="macs", costs=macs.model_costs, **select_options)
    plan.meta["macs_target"] = reduction
    return plan
