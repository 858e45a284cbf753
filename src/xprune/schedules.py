"""Schedules: when to score, remove and fine-tune.

- :func:`one_shot`: score once, remove ``ratio`` of the units, optionally fine-tune.
- :func:`iterative`: the schedule of Pruning by Explaining (Yeom et al. 2021):
  remove a fraction ``step`` of the *remaining* units per step, recomputing the
  scores on the pruned model each time, with an optional fine-tuning hook
  between steps, until ``ratio`` of the original units are gone.

Both return a :class:`ScheduleResult` with the pruned model and the plans
applied, in order (replaying them on the original model gives the same model;
for single weights each plan holds every weight masked so far).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .errors import XpruneError
from .scores import score
from .select import Plan, select
from .surgery import apply

FineTune = Callable[[nn.Module], "nn.Module | None"]


@dataclass
class ScheduleResult:
    """Outcome of a schedule: the pruned model, the plans applied in order, and per-step records."""

    model: nn.Module
    plans: list[Plan] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def removed(self) -> int:
        """Units removed in all (for single weights, plans are cumulative: the last one counts)."""
        if self.plans and self.plans[-1].kind == "weights":
            return self.plans[-1].n_removed
        return sum(p.n_removed for p in self.plans)


def _tune(model: nn.Module, fine_tune: FineTune | None) -> nn.Module:
    if fine_tune is None:
        return model
    out = fine_tune(model)
    return model if out is None else out


def _check_ratio(ratio: float) -> None:
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise XpruneError(f"ratio must be a number in [0, 1), got {ratio!r}")


def one_shot(
    model: nn.Module,
    data: Any,
    criterion: Any = "lrp",
    ratio: float = 0.5,
    *,
    units: str = "channels",
    scope: str = "global",
    fine_tune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    **options: Any,
) -> ScheduleResult:
    """Score once, remove ``ratio`` of the units, then fine-tune once (if a hook is given)."""
    _check_ratio(ratio)
    scores = score(model, data, criterion, units, **options)
    plan = select(scores, ratio, scope=scope)
    pruned = _tune(apply(model, plan, "mask" if plan.kind == "weights" else "remove"), fine_tune)
    record = {"step": 1, "removed": plan.n_removed, "total": plan.n_total}
    if evaluate is not None:
        record["accuracy"] = evaluate(pruned)
    return ScheduleResult(pruned, [plan], [record])


def iterative(
    model: nn.Module,
    data: Any,
    criterion: Any = "lrp",
    ratio: float = 0.5,
    *,
    step: float = 0.05,
    units: str = "channels",
    scope: str = "global",
    fine_tune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = False,
    **options: Any,
) -> ScheduleResult:
    """Prune in steps of ``step`` x the remaining units, rescoring after each step.

    Parameters
    ----------
    ratio : float
        Fraction of the *original* units removed at the end.
    step : float in (0, 1)
        Fraction of the remaining units removed per step (Yeom et al. use 5%).
    fine_tune : callable, optional
        ``fine_tune(model)`` after each step (e.g. a few epochs on the training
        data); may return a new model.
    evaluate : callable, optional
        ``evaluate(model) -> float`` recorded after each step (e.g. test accuracy).
    **options :
        Passed to :func:`xprune.score`.
    """
    _check_ratio(ratio)
    if not 0 < step < 1:
        raise XpruneError(f"step must be in (0, 1), got {step!r}")
    current = model
    result = ScheduleResult(model)
    original_total = None
    target = None
    bar = None
    while True:
        scores = score(current, data, criterion, units, **options)
        if original_total is None:
            original_total = scores.total
            target = math.floor(ratio * original_total + 1e-9)
            if progress:
                from rich.progress import Progress

                bar = Progress(transient=True)
                bar.start()
                task = bar.add_task(f"iterative pruning ({scores.criterion})", total=target)
        left = target - result.removed
        if left <= 0:
            break
        k = min(left, max(1, math.ceil(step * scores.total)))
        if scores.kind == "weights":
            # masked weights stay in the model: rank them first so each step masks k new ones
            for name, idxs in (result.plans[-1].remove.items() if result.plans else ()):
                scores[name][idxs] = -float("inf")
            plan = select(scores, (result.removed + k) / scores.total, scope=scope)
            new = plan.n_removed - result.removed
        else:
            plan = select(scores, k / scores.total, scope=scope)
            new = plan.n_removed
        if new <= 0:  # every layer at its floor
            break
        current = _tune(apply(current, plan, "mask" if plan.kind == "weights" else "remove"), fine_tune)
        result.plans.append(plan)
        record = {"step": len(result.plans), "removed": result.removed, "total": original_total,
                  "ratio": result.removed / original_total}
        if evaluate is not None:
            record["accuracy"] = evaluate(current)
        result.history.append(record)
        if bar is not None:
            bar.update(task, completed=result.removed)
    if bar is not None:
        bar.stop()
    result.model = current
    return result
