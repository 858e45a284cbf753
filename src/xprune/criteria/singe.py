r"""The ``"singe"`` and ``"singe-fast"`` criteria: integrated gradients along the path that removes a unit.

SInGE (Yvinec et al., "SInGE: Sparsity via Integrated Gradients Estimation of
Neuron Relevance", NeurIPS 2022, arXiv 2207.04089): the relevance of a unit is
the integral of the gradient along a path towards that unit's removal.
``"singe"`` moves every unit :math:`c` on its own: a multiplicative gate
:math:`g_c` on the unit goes from 1 to 0 along the geometric path
:math:`a_k = \mu^k` while every other unit stays at 1, and the score integrates
the per-sample gradient magnitude of the loss along that path,

.. math:: s_c = \sum_{k=0}^{K-1} w_k \,\frac1N \sum_n
          \Big|\frac{\partial L_n}{\partial g_c}(a_k)\Big|,
          \qquad w_k = \mu^k - \mu^{k+1}\ (w_{K-1} = \mu^{K-1}).

Since :math:`w_k = (1-\mu)\,a_k` for :math:`k < K-1`, each term is
:math:`(1-\mu)` times the per-sample first-order Taylor criterion
:math:`|a_k\,\partial L_n/\partial g_c|` (Molchanov et al. 2017, ``"taylor"``) of
the unit *scaled to* :math:`a_k`: the Taylor criterion summed over the points of
the path that shrinks the unit geometrically to zero (``aggregate="path"``).
Why the magnitude is taken at each point: the signed integral of one gate is,
by the fundamental theorem of calculus, exactly
:math:`L_n(c\ \text{removed}) - L_n(\text{present})`, i.e. ablation of the unit
(``aggregate="sample"`` gives its quadrature, :math:`\frac1N\sum_n|\mathrm{IG}_{n,c}|`),
which needs no path at all; the path only adds information through the
gradient's variation along it.

Where the constants come from: the paper's method section was not available
to us (only its abstract: relevance = "the integral of the gradient variation
on a path towards this neuron removal"). That the path is per unit, geometric,
and that the objective is the loss is the reading of the paper reported in
xprune's issue 20; the number of points ``n_steps=10``, the ratio
:math:`\mu = 0.01^{1/K}`, the last point covering :math:`[0, \mu^{K-1}]` and
the magnitude taken per sample and per point are xprune's choices, not taken
from the paper.

``"singe-fast"`` is xprune's earlier simplification, kept under its own name:
all units of a layer move together on a uniform path, the objective is the
target logit and the score is :math:`|\sum_n \mathrm{IG}_{n,c}|`. Its
distance to ``"singe"`` is measured in ``benchmarks/singe_agreement.py``.

The exact mode batches units: the reference batch is replicated R times
(``unit_batch``) and copy r moves one (unit, path point) pair with per-sample
gates ``[R*N, C]``, so one forward+backward integrates R pairs. Gates sit
where the unit kind says (:meth:`xprune.units.UnitKind.gate_sites`). The
definition, quadrature, gate sites and costs are in ``docs/singe.md``.

Options
-------
n_steps : int, default 10
    K, the number of points of the quadrature.
path : {"geometric", "uniform"}
    Default ``"geometric"`` (``"uniform"`` for ``"singe-fast"``).
mu : float in (0, 1), optional
    Ratio of the geometric path (default :math:`0.01^{1/K}`).
mode : {"exact", "fast"}
    Each unit on its own path (exact, default) or all units of a group
    together (fast, ``"singe-fast"``).
scope : {"layer", "network"}
    Only for ``mode="fast"``.
objective : {"loss", "logit"}, optional
    Minus the cross-entropy (default for class targets; with
    ``target="embedding"``, which has no classes, the default is the
    similarity objective ``"logit"``), or the target logits (see
    :class:`~xprune.criteria.base.Objective`).
aggregate : {"path", "sample", "batch"}
    ``"path"`` (default): the integral of the per-sample
    :math:`|\partial L_n/\partial g_c|` above; ``"sample"``:
    :math:`\frac1N\sum_n |\mathrm{IG}_{n,c}|` (the quadrature of the per-sample
    ablation effect); ``"batch"``: :math:`|\sum_n \mathrm{IG}_{n,c}|` (``"singe-fast"``).
unit_batch : int, optional
    Exact mode: copies of the batch per pass, each moving one unit to one
    path point (default ``max(1, 256 // N)``).
gate_at : {"after-norm", "output"}
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from .. import _inputs
from ..errors import XpruneError
from ..gates import GateSite, sites_of
from ..units import UnitGroup, UnitSet
from .base import Criterion, Objective, register

__all__ = ["SInGE", "SInGEFast", "GateSite", "gate_sites", "gated", "path_points", "objective_value"]


def gate_sites(model: nn.Module, units: UnitSet, group: UnitGroup, gate_at: str = "after-norm") -> list[GateSite]:
    """The :class:`~xprune.gates.GateSite` list of ``group``, from its unit kind."""
    if group.kind == "weights":
        raise XpruneError(
            "criterion 'singe' gates unit outputs and does not score single weights; "
            "use units='channels', or criterion 'taylor' for weights"
        )
    return sites_of(model, units, group, gate_at)


# --------------------------------------------------------------------------- gating


class _Gates:
    """The gates of a model: per group, the current 1-D gate tensor (``None`` = not gated, i.e. 1).

    Sites are gated by forward hooks multiplying the site's output. With
    ``fold=True`` a site that is an affine BatchNorm is gated instead by
    scaling its weight and bias (``g (gamma x_hat + beta) = (g gamma) x_hat + g beta``),
    passed to :func:`torch.func.functional_call` through :meth:`params`: the
    same function without an extra pass over the activations.
    """

    def __init__(
        self,
        model: nn.Module,
        units: UnitSet,
        gate_at: str,
        groups: Iterable[UnitGroup] | None = None,
        fold: bool = False,
    ):
        self.values: dict[str, torch.Tensor | None] = {}
        self.handles = []
        self.folded: list[tuple[UnitGroup, GateSite, str]] = []
        names = {m: n for n, m in model.named_modules()}
        for group in units if groups is None else groups:
            self.values[group.name] = None
            for site in gate_sites(model, units, group, gate_at):
                m = site.module
                if fold and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m in names:
                    self.folded.append((group, site, names[m]))
                else:
                    self.handles.append(self._attach(site, group))

    def _attach(self, site: GateSite, group: UnitGroup):
        """Hook ``site`` with the group's current gate; per-sample gates follow rows that fold the batch."""
        name = group.name
        if site.on_input:

            def pre_hook(mod, args):
                g = self.values.get(name)
                if g is None:
                    return None
                u = site.units_view(args[0], group)
                return (site._scale_units(u, _rows(g, u.shape[0], name)).reshape(args[0].shape), *args[1:])

            return site.module.register_forward_pre_hook(pre_hook, prepend=True)

        def hook(mod, args, out):
            g = self.values.get(name)
            return None if g is None else site.scale(out, group, _rows(g, out.shape[0], name))

        return site.module.register_forward_hook(hook)

    def params(self) -> dict[str, torch.Tensor]:
        """Scaled affine parameters of the folded BatchNorm sites, for ``functional_call``."""
        out = {}
        for group, site, name in self.folded:
            g = self.values.get(group.name)
            if g is None:
                continue
            bn = site.module
            assert isinstance(bn, nn.modules.batchnorm._BatchNorm)  # __init__ folds only affine BatchNorm sites
            out[name + ".weight"] = site.scale(bn.weight, group, g)
            out[name + ".bias"] = site.scale(bn.bias, group, g)
        return out

    def call(self, model: nn.Module, inputs: Any) -> Any:
        """Run ``model`` on ``inputs`` with the current gates."""
        params = self.params()
        if not params:
            return _inputs.call(model, inputs)
        if isinstance(inputs, dict):
            return torch.func.functional_call(model, params, (), inputs, strict=False)
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        return torch.func.functional_call(model, params, args, strict=False)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def _rows(g: torch.Tensor, rows: int, name: str) -> torch.Tensor:
    """Per-sample gates ``[N, C]`` for a tensor of ``rows`` rows: N samples, or N samples' windows, sample-major.

    Models that fold windows or crops into the batch (Swin's attention windows:
    ``[N * windows, ...]``, sample-major) get each sample's gate on each of its rows.
    """
    if g.dim() < 2 or g.shape[0] == rows:
        return g
    if rows % g.shape[0]:
        raise XpruneError(
            f"criterion 'singe': the gate site of {name!r} sees {rows} rows for a batch of "
            f"{g.shape[0]} samples; per-sample gates need rows = samples x k (sample-major). "
            "Use criterion 'singe-fast' (one gate for the batch) on this model"
        )
    return g.repeat_interleave(rows // g.shape[0], 0)


@contextlib.contextmanager
def gated(
    model: nn.Module, units: UnitSet, values: Mapping[str, torch.Tensor], *, gate_at: str = "after-norm"
) -> Iterator[nn.Module]:
    """Context manager running ``model`` with fixed gates on some groups.

    ``values`` maps group names to 1-D tensors of ``group.size`` gates
    (1 = unit as is, 0 = unit switched off). Used to check completeness, or
    to see what switching units off softly does.
    """
    _check_gate_at(gate_at)
    groups = [units[name] for name in values]
    gates = _Gates(model, units, gate_at, groups)
    for name, v in values.items():
        v = torch.as_tensor(v, dtype=torch.float32)
        if v.numel() != units[name].size:
            raise XpruneError(f"gated: {name!r} has {units[name].size} units, got {v.numel()} gate values")
        gates.values[name] = v.reshape(-1)
    try:
        yield model
    finally:
        gates.remove()


def objective_value(output: torch.Tensor, classes: torch.Tensor | Objective, objective: str = "logit") -> torch.Tensor:
    """The objective summed over the batch: target logits, or minus the summed cross-entropy.

    ``classes``: one class per sample ``[N]`` (for outputs ``[N, ..., C]``,
    token sequences, the last position is explained), or an
    :class:`~xprune.criteria.base.Objective` of the batch (labels per token,
    padding, ``target="embedding"``), evaluated at ``output``.
    """
    if isinstance(classes, Objective):
        return classes.value(output, objective)
    out = output.reshape(output.shape[0], -1, output.shape[-1])[:, -1]
    if objective == "logit":
        return out.gather(1, classes.view(-1, 1)).sum()
    return -torch.nn.functional.cross_entropy(out, classes, reduction="sum")


def path_points(n_steps: int, path: str = "uniform", mu: float | None = None) -> tuple[list[float], list[float]]:
    """Points :math:`a_k` (from 1 down) and weights :math:`w_k` (summing to 1) of the gate path."""
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise XpruneError(f"n_steps must be a positive int, got {n_steps!r}")
    if path == "uniform":
        return [1.0 - k / n_steps for k in range(n_steps)], [1.0 / n_steps] * n_steps
    if path == "geometric":
        if mu is None:
            mu = 0.01 ** (1.0 / n_steps)
        if not 0 < mu < 1:
            raise XpruneError(f"mu must be in (0, 1), got {mu!r}")
        points = [mu**k for k in range(n_steps)]
        weights = [points[k] - (points[k + 1] if k + 1 < n_steps else 0.0) for k in range(n_steps)]
        return points, weights
    raise XpruneError(f"path must be 'uniform' or 'geometric', got {path!r}")


def _check_gate_at(gate_at: str) -> None:
    if gate_at not in ("after-norm", "output"):
        raise XpruneError(f"gate_at must be 'after-norm' or 'output', got {gate_at!r}")


# --------------------------------------------------------------------------- criterion


def _repeat(x: Any, r: int) -> Any:
    """Inputs with every batched tensor repeated ``r`` times along dim 0 (copy-major)."""
    if isinstance(x, torch.Tensor):
        return x.repeat(r, *([1] * (x.dim() - 1))) if x.dim() else x
    if isinstance(x, Mapping):
        return {k: _repeat(v, r) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_repeat(v, r) for v in x)
    return x


def _repeat_objective(obj: Objective, r: int, inputs: Any) -> Objective:
    """The objective of the batch repeated ``r`` times (classes and seeds of the present model)."""
    if r == 1:
        return obj
    classes = None if obj.classes is None else _repeat(obj.classes, r)
    if obj.is_embedding:
        return Objective(
            _repeat(obj.output.detach(), r), _repeat(obj.seed, r), None, lambda raw: _inputs.embedding(raw, inputs)
        )
    return Objective(_repeat(obj.output.detach(), r), _repeat(obj.seed, r), classes)


@register("singe")
class SInGE(Criterion):
    """The per-sample loss-gradient magnitude on a unit's gate, integrated as the unit alone shrinks 1 -> 0 (SInGE).

    See the module documentation for the formula, the constants and the
    modes. After :meth:`compute`, ``passes`` holds the number of
    forward+backward passes made (summed over batches).
    """

    default_normalize: ClassVar[str | None] = "mean"  # see xprune.score: fair global ranking

    def __init__(
        self,
        n_steps: int = 10,
        path: str = "geometric",
        mu: float | None = None,
        mode: str = "exact",
        scope: str = "layer",
        objective: str | None = None,
        aggregate: str = "path",
        unit_batch: int | None = None,
        gate_at: str = "after-norm",
    ):
        self.points, self.weights = path_points(n_steps, path, mu)
        if mode not in ("fast", "exact"):
            raise XpruneError(f"mode must be 'fast' or 'exact', got {mode!r}")
        if scope not in ("layer", "network"):
            raise XpruneError(f"scope must be 'layer' or 'network', got {scope!r}")
        if objective not in (None, "logit", "loss"):
            raise XpruneError(f"objective must be 'loss' or 'logit', got {objective!r}")
        if aggregate not in ("path", "sample", "batch"):
            raise XpruneError(
                f"aggregate must be 'path' (integral of the per-sample |gradient|), 'sample' (mean of "
                f"per-sample |IG|) or 'batch' (|sum of IG|), got {aggregate!r}"
            )
        if unit_batch is not None and (
            not isinstance(unit_batch, int) or isinstance(unit_batch, bool) or unit_batch < 1
        ):
            raise XpruneError(
                f"unit_batch must be a positive int (copies of the batch per pass) or None, got {unit_batch!r}"
            )
        _check_gate_at(gate_at)
        self.n_steps, self.path, self.mu = n_steps, path, mu
        self.mode, self.scope, self.objective, self.gate_at = mode, scope, objective, gate_at
        self.aggregate, self.unit_batch = aggregate, unit_batch
        self.passes = 0

    def compute(self, model, units, data, *, target="label"):
        signed, absolute, count = self._accumulate(
            model, units, data, target, self.aggregate != "batch", pointwise_abs=self.aggregate == "path"
        )
        if self.aggregate == "batch":
            return {k: v.abs() for k, v in signed.items()}
        return {k: v / max(count[k], 1.0) for k, v in absolute.items()}

    def integrals(
        self, model: nn.Module, units: UnitSet, data: Iterable, *, target: Any = "label"
    ) -> dict[str, torch.Tensor]:
        """Signed :math:`\\sum_n \\mathrm{IG}_{n,c}`, keyed by group name (float64)."""
        return self._accumulate(model, units, data, target, False)[0]

    def per_sample(
        self, model: nn.Module, units: UnitSet, inputs: Any, labels: Any = None, *, target: Any = "label"
    ) -> dict[str, torch.Tensor]:
        """Signed :math:`\\mathrm{IG}_{n,c}` of one batch, ``[N, size]`` per group (float64)."""
        dtype, device = self._dtype_device(model, units)
        gates = _Gates(model, units, self.gate_at, fold=False)
        self.passes = 0
        try:
            return self._batch(
                model, units, gates, _inputs.to_device(inputs, device), labels, target, dtype, device, True
            )
        finally:
            gates.remove()

    def distributed_sums(self, kind: str) -> bool:
        # per-sample sums (signed, or of |IG_n|) and the sample count are reduced before the final |.| or mean
        return True

    def _dtype_device(self, model, units):
        for group in units:
            gate_sites(model, units, group, self.gate_at)  # fail early on unsupported kinds
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return dtype, device

    def _accumulate(self, model, units, data, target, need_samples, pointwise_abs=False):
        dtype, device = self._dtype_device(model, units)
        signed = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
        absolute = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
        count = 0.0
        # per-sample gates (exact mode, or the sample aggregate) go through hooks; shared ones fold into BatchNorm
        per_sample = need_samples or self.mode == "exact"
        gates = _Gates(model, units, self.gate_at, fold=not per_sample)
        self.passes = 0
        try:
            for inputs, labels in data:
                inputs = _inputs.to_device(inputs, device)
                ig = self._batch(model, units, gates, inputs, labels, target, dtype, device, per_sample, pointwise_abs)
                for name, v in ig.items():
                    signed[name] += v.sum(0) if per_sample else v
                    if need_samples:
                        absolute[name] += v.abs().sum(0)
                if need_samples and ig:
                    count += next(iter(ig.values())).shape[0]
        finally:
            gates.remove()
        from .. import distributed  # sums over all ranks' shards, before the final |.| or mean

        totals = dict({"s:" + k: v for k, v in signed.items()}, **{"a:" + k: v for k, v in absolute.items()})
        totals, counts = distributed.all_reduce_sums(totals, {"a:" + k: count for k in absolute})
        signed = {g.name: totals["s:" + g.name] for g in units}
        absolute = {g.name: totals["a:" + g.name] for g in units}
        return signed, absolute, {g.name: float(counts["a:" + g.name]) for g in units}

    def _objective(self, classes: Objective) -> str:
        if self.objective is not None:
            return self.objective
        return "logit" if classes.is_embedding else "loss"

    # one forward+backward with the given gates; d objective / d gate for the wanted groups
    def _pass(self, model, gates, values, wanted, inputs, classes, labels=None, target=None):
        gates.values.update(values)
        leaves = [values[n] for n in wanted]
        with torch.enable_grad():
            for t in leaves:
                t.requires_grad_(True)
            raw = gates.call(model, inputs)
            if classes is None:  # the first pass is the present model: the target is read there
                classes = Objective.of(target, raw, labels, inputs=inputs, model=model)
            value = classes.value(classes.read(raw), self._objective(classes))
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
        self.passes += 1
        return {
            n: (torch.zeros_like(values[n]) if g is None else g.detach()) for n, g in zip(wanted, grads, strict=True)
        }, classes

    def _batch(self, model, units, gates, inputs, labels, target, dtype, device, per_sample, pointwise_abs=False):
        """Signed IG of one batch per group: ``[N, size]`` per sample, or the batch sum ``[size]``.

        ``pointwise_abs``: the integral of the per-sample :math:`|\\partial L_n / \\partial g_c|` instead
        (``aggregate="path"``; needs ``per_sample``).
        """
        f = (lambda t: t.abs()) if pointwise_abs else (lambda t: t)
        names = [g.name for g in units]
        n = None
        if per_sample:  # the sample count, from the first tensor of the inputs
            first = next(t for t in _leaves(inputs) if t.dim())
            n = first.shape[0]

        def ones(g, a=1.0):
            shape = (n, g.size) if per_sample else (g.size,)
            return torch.full(shape, a, dtype=dtype, device=device)

        # a_0 = 1 for every rule: the present model, shared by all groups, units and scopes
        first, classes = self._pass(model, gates, {g.name: ones(g) for g in units}, names, inputs, None, labels, target)
        if per_sample and classes.output.shape[0] != n:
            raise XpruneError(
                f"criterion 'singe' read {n} samples from the inputs' first tensor but the model "
                f"output has {classes.output.shape[0]}; put a batched tensor first in the inputs"
            )
        ig = {k: self.weights[0] * f(first[k].double().cpu()) for k in names}
        rest = list(zip(self.points[1:], self.weights[1:], strict=True))
        if rest and self.mode == "exact":
            self._exact(model, units, gates, inputs, classes, rest, ig, n, dtype, device, f)
        elif rest and self.scope == "network":
            for a, w in rest:
                grads, _ = self._pass(model, gates, {g.name: ones(g, a) for g in units}, names, inputs, classes)
                for k in names:
                    ig[k] += w * f(grads[k].double().cpu())
        elif rest:
            for group in units:
                base = {g.name: None for g in units if g.name != group.name}  # others ungated (= 1)
                for a, w in rest:
                    grad, _ = self._pass(
                        model, gates, dict(base, **{group.name: ones(group, a)}), [group.name], inputs, classes
                    )
                    ig[group.name] += w * f(grad[group.name].double().cpu())
        gates.values.update(dict.fromkeys(names))
        return ig

    def _exact(self, model, units, gates, inputs, classes, rest, ig, n, dtype, device, f=lambda t: t):
        """Every (unit, path point) pair on its own copy of the batch, ``unit_batch`` copies per pass."""
        pairs = [(group, c, a, w) for group in units for c in range(group.size) for a, w in rest]
        r_max = self.unit_batch or max(1, 256 // max(n, 1))
        cache: dict[int, tuple[Any, Objective]] = {}
        for start in range(0, len(pairs), r_max):
            chunk = pairs[start : start + r_max]
            r = len(chunk)
            if r not in cache:
                rep = _repeat(inputs, r)
                cache = {r: (rep, _repeat_objective(classes, r, rep))}
            rep, obj = cache[r]
            by_group: dict[str, list[tuple[int, int, float, float]]] = {}
            for i, (group, c, a, w) in enumerate(chunk):
                by_group.setdefault(group.name, []).append((i, c, a, w))
            values: dict[str, torch.Tensor | None] = {g.name: None for g in units}
            index = {}
            for name, items in by_group.items():
                rows = torch.tensor([i for i, _, _, _ in items])
                cols = torch.tensor([c for _, c, _, _ in items])
                v = torch.ones(r, n, units[name].size, dtype=dtype, device=device)
                v[rows, :, cols] = torch.tensor([a for _, _, a, _ in items], dtype=dtype, device=device)[:, None]
                values[name] = v.reshape(r * n, -1)
                index[name] = (rows, cols, torch.tensor([w for _, _, _, w in items], dtype=torch.float64))
            grads, _ = self._pass(model, gates, values, list(by_group), rep, obj)
            for name, (rows, cols, w) in index.items():
                g = f(grads[name].reshape(r, n, -1)[rows.to(device), :, cols.to(device)].double().cpu())  # [m, N]
                ig[name].index_add_(1, cols, (g * w[:, None]).T)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(n_steps={self.n_steps}, path={self.path!r}, mode={self.mode!r}, "
            f"scope={self.scope!r}, objective={self.objective!r}, aggregate={self.aggregate!r}, "
            f"gate_at={self.gate_at!r})"
        )


def _leaves(x: Any) -> Iterator[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, Mapping):
        for v in x.values():
            yield from _leaves(v)
    elif isinstance(x, (tuple, list)):
        for v in x:
            yield from _leaves(v)


@register("singe-fast")
class SInGEFast(SInGE):
    """xprune's shared-path simplification of SInGE: a layer's units together, uniform path, logit, |batch sum|.

    ``"singe"`` with ``mode="fast", scope="layer", path="uniform",
    objective="logit", aggregate="batch"`` as defaults: :math:`1 + (K-1)L`
    passes instead of :math:`1 + (K-1)U`. Not the paper's criterion; its
    agreement with ``"singe"`` is measured in ``benchmarks/singe_agreement.py``.
    """

    def __init__(
        self,
        n_steps: int = 10,
        path: str = "uniform",
        mu: float | None = None,
        mode: str = "fast",
        scope: str = "layer",
        objective: str | None = "logit",
        aggregate: str = "batch",
        unit_batch: int | None = None,
        gate_at: str = "after-norm",
    ):
        super().__init__(
            n_steps=n_steps,
            path=path,
            mu=mu,
            mode=mode,
            scope=scope,
            objective=objective,
            aggregate=aggregate,
            unit_batch=unit_batch,
            gate_at=gate_at,
        )
