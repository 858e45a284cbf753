"""From scores to a plan: which units go.

:func:`select` ranks units by score (lowest first) either across all layers
(``scope="global"``) or within each layer (``scope="local"``), removes a given
fraction of the units (or of the model's MACs or parameters, counted exactly
by :class:`xprune.costs.CostModel`), never empties a layer (``min_keep``), and
can round each layer's kept count to a multiple (``round_to=8`` keeps tensor
shapes friendly to vector units).
A :class:`Plan` lists exactly which units go; it is JSON-serialisable and
prints as a per-layer table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .checks import keep_floor, plan_warnings, warn_plan
from .costs import CostModel, budget_check, check_metric
from .errors import XpruneError
from .plan import Plan, check_ratio
from .scores import Scores, normalize as _normalize

_keep_floor = keep_floor  # units a group keeps at least under min_keep (see xprune.checks)


def select(
    scores: Scores,
    ratio: float,
    *,
    scope: str = "global",
    by: str = "units",
    costs: CostModel | None = None,
    model: Any = None,
    normalize: str | None = None,
    min_keep: int | float = 1,
    round_to: int | None = None,
    warn: bool = True,
) -> Plan:
    """Turn scores into a :class:`Plan` removing the least important units.

    Parameters
    ----------
    scores : Scores
        From :func:`xprune.score`.
    ratio : float in [0, 1)
        Fraction to remove: of the units (``by="units"``), or of the whole
        model's MACs or parameters (``by="macs"``/``"params"``).
    scope : "global" or "local"
        One ranking across all layers, or the same ratio within every layer.
        With ``by="macs"``/``"params"``, global takes units in score order while
        their exact saving fits the budget (a unit that does not fit closes its
        group, so every group loses its lowest-scored units); local removes the
        same fraction of every layer's lowest-scored units, the largest
        fraction whose saving fits the budget, then one more unit in the
        layers whose next unit still fits.
    by : "units", "macs" or "params"
        What ``ratio`` is a fraction of. MACs and parameters are those of
        Torch-Pruning's counter (1 multiply-add = 1 MAC) on the example inputs,
        predicted exactly for any set of removed units by a
        :class:`~xprune.costs.CostModel` (removing a channel saves MACs in the
        layer producing it and in the layer reading it, counted once). The
        plan removes at most ``ratio`` of them, as close as the granularity of
        the units allows, and records the predicted fraction in
        ``meta["macs_reduction"]`` (or ``"params_reduction"``).
    costs : CostModel, optional
        ``xprune.costs.CostModel(model, scores)``, for ``by="macs"``/``"params"``
        (reuse one across calls on the same model).
    model : nn.Module, optional
        Instead of ``costs``: the scored model, traced once to build the cost model.
    normalize : None, "l1", "l2" or "max"
        Per-layer normalisation applied before ranking (on top of any done when scoring).
    min_keep : int or float
        Units every layer keeps at least: a count, or a fraction of the layer
        (float in (0, 1)). Never below 1: no layer is emptied.
    round_to : int, optional
        Round each pruned layer's kept count to the nearest multiple of this
        (at least one multiple); a layer smaller than that multiple, or one that
        would round up to its full size, keeps all its units.
        Rounding may move the achieved ratio slightly away from ``ratio``.

    Ties are broken by forward order then unit index, so the selection is
    deterministic and, without rounding, the removed sets for growing ratios
    are nested.

    Returns
    -------
    Plan
        The plan; ``plan.warnings()`` (also ``plan.meta["warnings"]``) lists
        what looks degenerate, each also emitted as a
        :class:`~xprune.errors.DegenerateResult` warning: nothing removed
        although ``ratio > 0`` (with the reason: local rounding, ``min_keep``,
        ``round_to``, a budget below one unit), less than half the ratio
        removed, or a group of 8 or more units left with 1-2 (see
        :func:`xprune.checks.plan_warnings`). ``min_keep`` holds for every
        ``by`` and ``scope``.

    Other parameters
    ----------------
    warn : bool, default True
        Emit the plan's warnings; sweeps over many rates (curves, calibration,
        tuning) pass ``False`` and keep them in ``plan.meta["warnings"]``.
    """
    if not isinstance(scores, Scores):
        raise XpruneError(f"select() expects Scores from xprune.score(), got {type(scores).__name__}")
    check_ratio(ratio)
    if scope not in ("global", "local"):
        raise XpruneError(f"scope must be 'global' or 'local', got {scope!r}")
    if by not in ("units", "macs", "params"):
        raise XpruneError(f"by must be 'units', 'macs' or 'params', got {by!r}")
    if by != "units" and costs is None and model is None:
        raise XpruneError(
            f"by={by!r} needs the model to count its {by}: select(scores, ratio, by={by!r}, model=model) "
            "(or costs=xprune.costs.CostModel(model, scores))"
        )
    if by == "macs" and scores.kind == "weights":
        raise XpruneError(
            "masking single weights removes no counted MAC; use by='params' or 'units' for them, "
            "or units='channels' to save MACs"
        )
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise XpruneError(f"round_to must be a positive int, got {round_to!r}")
    if scores.kind == "weights" and round_to:
        raise XpruneError("round_to applies to channels, not single weights")

    names = list(scores)
    nan = [n for n in names if torch.isnan(scores[n]).any()]
    if nan:
        raise XpruneError(
            f"the scores of {nan[:5]} contain NaN, which cannot be ranked; recompute them "
            "(xprune.score refuses NaN inputs and scores) or drop the damaged scores file"
        )
    values = {n: _normalize(scores[n], normalize) for n in names}
    sizes = {n: values[n].numel() for n in names}
    caps = {n: sizes[n] - _keep_floor(sizes[n], min_keep) for n in names}
    if by != "units":
        check_metric(by)
        if costs is None:
            costs = CostModel(model, scores)
        budget_check(costs, sizes)

    if scope == "local" and by == "units":
        removed = _local(values, caps, scores.parts, lambda n: math.floor(ratio * sizes[n] + 1e-9))
    elif scope == "local":
        assert costs is not None  # built above for every by != "units"
        removed = _local_by_cost(values, sizes, caps, scores.parts, costs, by, ratio)
    elif by == "units":
        guard = _PartGuard(scores.parts)
        removed = {n: [] for n in names}
        budget, spent = ratio * sum(sizes.values()), 0
        for n, i in _global_order(values):
            if len(removed[n]) >= caps[n]:
                continue
            if spent + 1 > budget + 1e-9:
                break
            if not guard.take(n, i):
                continue
            removed[n].append(i)
            spent += 1
        removed = {n: sorted(v) for n, v in removed.items()}
    else:
        assert costs is not None
        removed = _global_by_cost(values, caps, scores.parts, costs, by, ratio)

    before_rounding = sum(len(v) for v in removed.values())
    if round_to:
        # a part short of the whole group is a concatenated branch (a producer covering every unit, as the
        # convs of a group split into conv-group blocks do, is no constraint)
        if any(len(set(p)) < sizes.get(n, 0) for n, plist in scores.parts.items() for p in plist):
            raise XpruneError("round_to is not supported for models with concatenated channel groups")
        removed = {n: _round(values[n], removed[n], sizes[n], round_to, _keep_floor(sizes[n], min_keep)) for n in names}
    meta = {
        "criterion": scores.criterion,
        "ratio": ratio,
        "scope": scope,
        "by": by,
        "normalize": normalize,
        "min_keep": min_keep,
        "round_to": round_to,
    }
    if by != "units":
        assert costs is not None
        meta[f"{by}_reduction"] = costs.reduction(removed, by)
        meta[f"{by}_before"] = costs.base[by]
    plan = Plan(scores.kind, removed, sizes, dict(scores.members), dict(scores.roots), scores.example, meta)
    cause = None
    if ratio > 0 and not plan.n_removed and any(caps.values()):
        if round_to and before_rounding:
            cause = (
                f"round_to={round_to} rounded every pruned group back to its full size; use a larger ratio "
                "or a smaller round_to"
            )
        elif by != "units":
            assert costs is not None
            cause = _cheapest(costs, caps, by, ratio)
    plan.meta["warnings"] = plan_warnings(plan, cause=cause)
    if warn:
        warn_plan(plan.meta["warnings"], stacklevel=2)
    return plan


def _cheapest(costs: CostModel, caps: Mapping[str, int], by: str, ratio: float) -> str | None:
    """Why a MAC / parameter budget removed nothing: the smallest saving of one removable unit exceeds it."""
    ri, ro = costs.empty()
    least = min(
        (costs.marginal(n, i, ri, ro, by) for n, cap in caps.items() if cap for i in range(costs.sizes[n])),
        default=float("inf"),
    )
    share = least / costs.base[by] if costs.base[by] else float("inf")
    if share <= ratio:
        return None  # a unit fitted, other constraints kept it: the plan's checks say which
    return (
        f"removing any single unit saves at least {100 * share:.3g}% of the model's {by}, more than the "
        f"{100 * ratio:.3g}% asked; use a ratio >= {share:.3g}"
    )


def _global_order(values: Mapping[str, torch.Tensor]):
    """``(group, unit)`` pairs, lowest score first; ties by forward order, then unit index."""
    names = list(values)
    if not names:
        return
    flat = torch.cat([values[n] for n in names]).numpy()
    owner = np.concatenate([np.full(values[n].numel(), i) for i, n in enumerate(names)])
    local = np.concatenate([np.arange(values[n].numel()) for n in names])
    for pos in np.argsort(flat, kind="stable"):
        yield names[owner[pos]], int(local[pos])


def _local(values, caps, parts, k_of) -> dict[str, list[int]]:
    """The ``k_of(group)`` lowest-scored units of every group (within its floor and part guards)."""
    guard = _PartGuard(parts)
    removed: dict[str, list[int]] = {}
    for n, v in values.items():
        k, removed[n] = min(caps[n], k_of(n)), []
        for i in np.argsort(v.numpy(), kind="stable").tolist():
            if len(removed[n]) >= k:
                break
            if guard.take(n, i):
                removed[n].append(i)
        removed[n].sort()
    return removed


def _local_by_cost(values, sizes, caps, parts, costs: CostModel, by: str, ratio: float) -> dict[str, list[int]]:
    """The largest common fraction of every group's units whose exact saving is at most ``ratio`` of the model's."""
    target = ratio * costs.base[by]
    # the fractions at which some group's count steps up; the saving grows with the fraction
    steps = sorted({j / sizes[n] for n in values for j in range(caps[n] + 1)})

    def removal(q):
        return _local(values, caps, parts, lambda n: math.floor(q * sizes[n] + 1e-9))

    tol = 1e-9 * max(costs.base[by], 1.0)
    lo, hi = 0, len(steps) - 1  # steps[lo] fits (q = 0 saves nothing)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if costs.base[by] - costs.value(removal(steps[mid]), by) <= target + tol:
            lo = mid
        else:
            hi = mid - 1
    removed = removal(steps[lo])
    # then one more unit in some groups (their next-lowest first) while it fits: every layer's fraction
    # stays within one unit of the common one, and the saving gets within one unit of the budget
    guard = _PartGuard(parts)
    ri, ro = costs.empty()
    for n, idxs in removed.items():
        for i in idxs:
            guard.take(n, i)
            costs.take(n, i, ri, ro)
    saved = costs.base[by] - costs.value(removed, by)
    nxt = []
    for n, v in values.items():
        if len(removed[n]) < caps[n]:
            gone = set(removed[n])
            rest = [i for i in np.argsort(v.numpy(), kind="stable").tolist() if i not in gone]
            if rest:
                nxt.append((float(v[rest[0]]), n, rest[0]))
    for _, n, i in sorted(nxt, key=lambda t: t[0]):  # stable: ties in forward order
        gain = costs.marginal(n, i, ri, ro, by)
        if saved + gain <= target + tol and guard.take(n, i):
            costs.take(n, i, ri, ro)
            removed[n] = sorted(removed[n] + [i])
            saved += gain
    return removed


def _global_by_cost(values, caps, parts, costs: CostModel, by: str, ratio: float) -> dict[str, list[int]]:
    """Units in score order while their exact marginal saving fits ``ratio`` of the model's MACs/params.

    A unit that does not fit closes its group: later (higher-scored) units of
    that group are not taken even if other removals made them cheaper, so each
    group loses a prefix of its ranking.
    """
    guard = _PartGuard(parts)
    target = ratio * costs.base[by]
    tol = 1e-9 * max(costs.base[by], 1.0)
    removed: dict[str, list[int]] = {n: [] for n in values}
    closed: set[str] = set()
    ri, ro = costs.empty()
    saved = 0.0
    for n, i in _global_order(values):
        if n in closed or len(removed[n]) >= caps[n]:
            continue
        gain = costs.marginal(n, i, ri, ro, by)
        if saved + gain > target + tol:
            closed.add(n)
            continue
        if not guard.take(n, i):
            continue
        costs.take(n, i, ri, ro)
        removed[n].append(i)
        saved += gain
    return {n: sorted(v) for n, v in removed.items()}


class _PartGuard:
    """Refuses to remove the last unit of any part of a group (e.g. a concatenated branch)."""

    def __init__(self, parts: Mapping[str, list[list[int]]]):
        self.left = {}
        self.member_of: dict[tuple[str, int], list[tuple[str, int]]] = {}
        for name, plist in parts.items():
            for j, part in enumerate(plist):
                part = sorted(set(part))  # a unit made of several channels of one producer counts once
                self.left[(name, j)] = len(part)
                for u in part:
                    self.member_of.setdefault((name, u), []).append((name, j))

    def take(self, name: str, unit: int) -> bool:
        keys = self.member_of.get((name, unit), ())
        if any(self.left[k] <= 1 for k in keys):
            return False
        for k in keys:
            self.left[k] -= 1
        return True


def _round(values: torch.Tensor, removed: list[int], size: int, multiple: int, floor: int) -> list[int]:
    if not removed:
        return []
    kept = size - len(removed)
    target = max(round(kept / multiple) * multiple, multiple, floor)
    if target >= size:
        return []
    order = np.argsort(values.numpy(), kind="stable").tolist()  # lowest first
    return sorted(order[: size - target])
