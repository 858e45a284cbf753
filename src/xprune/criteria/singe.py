r"""The ``"singe"`` criterion: integrated gradients along the path that removes a unit.

SInGE (Yvinec et al., "SInGE: Sparsity via Integrated Gradients Estimation of
Neuron Relevance", NeurIPS 2022, arXiv 2207.04089): the score of unit
:math:`c` is :math:`|\mathrm{IG}_c| = |\int_0^1 \partial O/\partial g_c(\gamma(a))\,da|`,
the integrated gradient of the objective on a multiplicative gate of the unit
(baseline 0), approximated with ``n_steps`` points. Gates sit where the unit
kind says (:meth:`xprune.units.UnitKind.gate_sites`). The definition, the
quadrature rules, the gate sites and the cost of each mode are in
``docs/singe.md``.

Options
-------
n_steps : int, default 10
    K, the number of points of the quadrature.
path : {"uniform", "geometric"}
mu : float in (0, 1), optional
    Ratio of the geometric path (default :math:`0.01^{1/K}`).
mode : {"fast", "exact"}
    All units of a group move together (fast) or each on its own path (exact).
scope : {"layer", "network"}
    Only for ``mode="fast"``.
objective : {"logit", "loss"}
    The target logits (with labels per token: at every labelled token;
    ``target="embedding"``: the similarity to the original embedding, see
    :class:`~xprune.criteria.base.Objective`), or minus the cross-entropy.
gate_at : {"after-norm", "output"}
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterable, Iterator, Mapping

import torch
from torch import nn

from .. import _inputs
from ..errors import XpruneError
from ..gates import GateSite, sites_of
from ..units import UnitGroup, UnitSet
from .base import Criterion, Objective, register

__all__ = ["SInGE", "GateSite", "gate_sites", "gated", "path_points", "objective_value"]


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

    def __init__(self, model: nn.Module, units: UnitSet, gate_at: str, groups: Iterable[UnitGroup] | None = None,
                 fold: bool = False):
        self.values: dict[str, torch.Tensor | None] = {}
        self.handles = []
        self.folded: list[tuple[UnitGroup, GateSite, str]] = []
        names = {m: n for n, m in model.named_modules()}
        for group in (units if groups is None else groups):
            self.values[group.name] = None
            for site in gate_sites(model, units, group, gate_at):
                m = site.module
                if fold and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and m in names:
                    self.folded.append((group, site, names[m]))
                else:
                    self.handles.append(site.attach(group, lambda n=group.name: self.values.get(n)))

    def params(self) -> dict[str, torch.Tensor]:
        """Scaled affine parameters of the folded BatchNorm sites, for ``functional_call``."""
        out = {}
        for group, site, name in self.folded:
            g = self.values.get(group.name)
            if g is None:
                continue
            out[name + ".weight"] = site.scale(site.module.weight, group, g)
            out[name + ".bias"] = site.scale(site.module.bias, group, g)
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


@contextlib.contextmanager
def gated(model: nn.Module, units: UnitSet, values: Mapping[str, torch.Tensor], *, gate_at: str = "after-norm") -> Iterator[nn.Module]:
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


def objective_value(output: torch.Tensor, classes: "torch.Tensor | Objective", objective: str = "logit") -> torch.Tensor:
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


@register("singe")
class SInGE(Criterion):
    """|integrated gradient of the objective on each unit's gate, path 1 -> 0| (Yvinec et al. 2022).

    See the module documentation for the formula, the quadrature and the
    modes. After :meth:`compute`, ``passes`` holds the number of
    forward+backward passes made (summed over batches).
    """

    default_normalize: ClassVar[str | None] = "mean"  # see xprune.score: fair global ranking

    def __init__(
        self,
        n_steps: int = 10,
        path: str = "uniform",
        mu: float | None = None,
        mode: str = "fast",
        scope: str = "layer",
        objective: str = "logit",
        gate_at: str = "after-norm",
    ):
        self.points, self.weights = path_points(n_steps, path, mu)
        if mode not in ("fast", "exact"):
            raise XpruneError(f"mode must be 'fast' or 'exact', got {mode!r}")
        if scope not in ("layer", "network"):
            raise XpruneError(f"scope must be 'layer' or 'network', got {scope!r}")
        if objective not in ("logit", "loss"):
            raise XpruneError(f"objective must be 'logit' or 'loss', got {objective!r}")
        _check_gate_at(gate_at)
        self.n_steps, self.path, self.mu = n_steps, path, mu
        self.mode, self.scope, self.objective, self.gate_at = mode, scope, objective, gate_at
        self.passes = 0

    def compute(self, model, units, data, *, target="label"):
        return {k: v.abs() for k, v in self.integrals(model, units, data, target=target).items()}

    def integrals(self, model: nn.Module, units: UnitSet, data: Iterable, *, target: Any = "label") -> dict[str, torch.Tensor]:
        """Signed :math:`\\mathrm{IG}_c` summed over the samples, keyed by group name (float64)."""
        for group in units:
            gate_sites(model, units, group, self.gate_at)  # fail early on unsupported kinds
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        totals = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
        gates = _Gates(model, units, self.gate_at, fold=True)
        self.passes = 0
        try:
            for inputs, labels in data:
                inputs = _inputs.to_device(inputs, device)
                self._batch(model, units, gates, inputs, labels, target, totals, dtype, device)
        finally:
            gates.remove()
        from .. import distributed  # signed sums over all ranks' shards, before compute() takes |.|

        totals, _ = distributed.all_reduce_sums(totals)
        return totals

    def distributed_sums(self, kind: str) -> bool:
        # IG_c is a sum over samples of per-sample gate gradients: the signed sums are reduced, then |.|
        return True

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
            value = classes.value(classes.read(raw), self.objective)
            grads = torch.autograd.grad(value, leaves, allow_unused=True)
        self.passes += 1
        return {n: (torch.zeros_like(values[n]) if g is None else g.detach()) for n, g in zip(wanted, grads)}, classes

    def _batch(self, model, units, gates, inputs, labels, target, totals, dtype, device):
        names = [g.name for g in units]
        ones = lambda g: torch.ones(g.size, dtype=dtype, device=device)  # noqa: E731
        # a_0 = 1 for every rule: the present model, shared by all groups, units and scopes
        first, classes = self._pass(model, gates, {g.name: ones(g) for g in units}, names, inputs, None, labels, target)
        for n in names:
            totals[n] += self.weights[0] * first[n].double().cpu()
        rest = list(zip(self.points[1:], self.weights[1:]))
        if not rest:
            return
        if self.mode == "fast" and self.scope == "network":
            for a, w in rest:
                grads, _ = self._pass(model, gates, {g.name: a * ones(g) for g in units}, names, inputs, classes)
                for n in names:
                    totals[n] += w * grads[n].double().cpu()
            return
        for group in units:
            base = {g.name: None for g in units if g.name != group.name}  # others ungated (= 1)
            if self.mode == "fast":
                for a, w in rest:
                    values = dict(base, **{group.name: a * ones(group)})
                    grad, _ = self._pass(model, gates, values, [group.name], inputs, classes)
                    totals[group.name] += w * grad[group.name].double().cpu()
            else:
                for c in range(group.size):
                    for a, w in rest:
                        g = ones(group)
                        g[c] = a
                        grad, _ = self._pass(model, gates, dict(base, **{group.name: g}), [group.name], inputs, classes)
                        totals[group.name][c] += w * float(grad[group.name][c])

    def __repr__(self) -> str:
        return (f"SInGE(n_steps={self.n_steps}, path={self.path!r}, mode={self.mode!r}, scope={self.scope!r}, "
                f"objective={self.objective!r}, gate_at={self.gate_at!r})")
