"""Schedules: when to score, remove and fine-tune.

- :func:`one_shot`: score once, remove ``ratio`` of the units, optionally fine-tune.
- :func:`iterative`: remove a fraction ``step`` of the remaining (or of the
  original) units per step, recomputing the scores on the pruned model each
  time, with an optional fine-tuning hook between steps, until ``ratio`` of
  the original units are gone. ``iterative(model, data, ratio=..., **YEOM)``
  is the schedule of Pruning by Explaining (Yeom et al. 2021), see :data:`YEOM`.
- :func:`entwined`: SInGE's schedule (Yvinec et al. 2022): alternate small
  pruning steps (by units or by exactly counted MACs) with fine-tuning, a fixed total
  fine-tuning budget split over the steps; checkpointed and resumable.

All return a :class:`ScheduleResult` with the pruned model and the plans
applied, in order (replaying them on the original model gives the same model;
for single weights each plan holds every weight masked so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ._checkpoints import (
    load_model as _load_model,
    resume_state as _resume_state,
    run_settings as _settings,
    save_checkpoint as _save_checkpoint,
    seeded as _seeded,
)
from .errors import XpruneError
from .pipeline import default_mode
from .plan import Plan, check_ratio
from .scores import score
from .select import select
from .surgery import apply

FineTune = Callable[[nn.Module], "nn.Module | None"]

YEOM: dict[str, Any] = {"criterion": "pbe", "step": 0.05, "steps_of": "original"}
"""The schedule of Pruning by Explaining (Yeom et al., Pattern Recognition 115, 2021, arXiv:1912.08881).

``xprune.schedules.iterative(model, data, ratio=0.9, fine_tune=..., **YEOM)``: the ``"pbe"``
criterion; each step removes 5% of the model's *original* number of units, globally ranked, with the
relevance recomputed on the pruned model before every step and the caller's fine-tuning between steps.
Their code (github.com/seulkiyeom/LRP_Pruning, ``PruningFineTuner.prune``) fixes the count once,
``int(number_of_filters * pr_step)`` with ``pr_step=0.05``, and runs ``int(1 / pr_step * total_pr)``
steps; the ``ratio`` here is their ``total_pr`` (the paper prunes up to about 90% of the filters). Their
headline setting is without fine-tuning and with few reference samples (e.g. 10 per class): leave
``fine_tune`` out for it.
"""


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
    check_ratio(ratio)
    scores = score(model, data, criterion, units, **options)
    plan = select(scores, ratio, scope=scope)
    pruned = _tune(apply(model, plan, default_mode(plan)), fine_tune)
    record: dict[str, float] = {"step": 1, "removed": plan.n_removed, "total": plan.n_total}
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
    steps_of: str = "remaining",
    units: str = "channels",
    scope: str = "global",
    fine_tune: FineTune | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = False,
    checkpoint_dir: Any = None,
    resume: bool = False,
    seed: int | None = None,
    **options: Any,
) -> ScheduleResult:
    """Prune in steps of ``step`` x the remaining (or original) units, rescoring after each step.

    Yeom et al.'s schedule is ``iterative(model, data, ratio=..., **YEOM)`` (:data:`YEOM`:
    criterion ``"pbe"``, ``step=0.05``, ``steps_of="original"``).

    Parameters
    ----------
    ratio : float
        Fraction of the *original* units removed at the end.
    step : float in (0, 1)
        Fraction of units removed per step (Yeom et al.: 5% of the original units).
    steps_of : {"remaining", "original"}
        What ``step`` is a fraction of: the units left before the step
        (default; steps shrink as the model does), or the model's original
        units (a fixed count per step, as in Yeom et al.'s code).
    fine_tune : callable, optional
        ``fine_tune(model)`` after each step (e.g. a few epochs on the training
        data); may return a new model.
    evaluate : callable, optional
        ``evaluate(model) -> float`` recorded after each step (e.g. test accuracy).
    checkpoint_dir : str or path, optional
        After every step the model (``torch.save`` of the whole module,
        ``model-stepN.pt``) and a JSON state (``iterative.json``: step, plans,
        history, settings) are written there atomically, the model first (as
        :func:`entwined` does).
    resume : bool
        Continue the run saved in ``checkpoint_dir`` from its last complete
        step (the settings must match); with no saved run, start afresh.
        Without ``resume`` an existing run there is an error, never overwritten.
    seed : int, optional
        Seed torch's global random state before every step (criteria such as
        ``"random"`` and the fine-tuning draw from it; the caller's random
        state is left as it was). With a seed, and a ``fine_tune`` that keeps
        no state between calls, a resumed run gives the same model as an
        uninterrupted one.
    **options :
        Passed to :func:`xprune.score`.

    Notes
    -----
    Determinism: on the CPU the same model, data and seed give bit-identical
    scores, plans and pruned models. On GPUs some cuDNN/cuBLAS kernels and
    atomic additions in backward passes are not deterministic, so scores may
    differ in their last bits between runs (and near-ties may rank
    differently); ``torch.use_deterministic_algorithms(True)`` with
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` makes GPU runs reproducible.
    """
    from pathlib import Path

    check_ratio(ratio)
    if not isinstance(step, (int, float)) or not 0 < step < 1:
        raise XpruneError(f"step must be in (0, 1), got {step!r}")
    if steps_of not in ("remaining", "original"):
        raise XpruneError(f"steps_of must be 'remaining' or 'original', got {steps_of!r}")
    if resume and checkpoint_dir is None:
        raise XpruneError("resume=True needs the checkpoint_dir of the run to continue")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    extra = {} if steps_of == "remaining" else {"steps_of": steps_of}  # earlier checkpoints still match
    settings = _settings(criterion, options, ratio=ratio, step=step, units=units, scope=scope, seed=seed, **extra)
    current = model
    result = ScheduleResult(model)
    original_total = None
    target = None
    bar = None
    state = _resume_state(folder, _ITERATIVE, settings, resume, "an iterative")
    if state is not None:
        current = _load_model(folder, state)
        result.plans = [Plan.from_dict(p) for p in state["plans"]]
        result.history = list(state["history"])
        original_total, target = state["units0"], state["target"]
    try:
        while True:
            with _seeded(seed, len(result.plans) + 1):
                scores = score(current, data, criterion, units, **options)
                if original_total is None:
                    original_total = scores.total
                    target = math.floor(ratio * original_total + 1e-9)
                if progress and bar is None:
                    from ._progress import Progress

                    bar = Progress(transient=True)
                    bar.start()
                    task = bar.add_task(
                        f"iterative pruning ({scores.criterion})", total=target, completed=result.removed, unit="units"
                    )
                assert target is not None  # set with original_total on the first step
                left = target - result.removed
                if left <= 0:
                    break
                if steps_of == "original":  # a fixed count, int(total * step) as in Yeom et al.'s code
                    k = min(left, max(1, math.floor(step * original_total + 1e-9)))
                else:
                    k = min(left, max(1, math.ceil(step * scores.total)))
                if scores.kind == "weights":
                    # masked weights stay in the model: rank them first so each step masks k new ones
                    for name, idxs in result.plans[-1].remove.items() if result.plans else ():
                        scores[name][idxs] = -float("inf")
                    plan = select(scores, (result.removed + k) / scores.total, scope=scope)
                    new = plan.n_removed - result.removed
                else:
                    plan = select(scores, k / scores.total, scope=scope)
                    new = plan.n_removed
                if new <= 0:  # every layer at its floor
                    break
                current = _tune(apply(current, plan, default_mode(plan)), fine_tune)
                result.plans.append(plan)
                record = {
                    "step": len(result.plans),
                    "removed": result.removed,
                    "total": original_total,
                    "ratio": result.removed / original_total,
                }
                if evaluate is not None:
                    record["accuracy"] = evaluate(current)
                result.history.append(record)
            if folder is not None:
                _save_checkpoint(
                    folder,
                    _ITERATIVE,
                    len(result.plans),
                    current,
                    {
                        "settings": settings,
                        "units0": original_total,
                        "target": target,
                        "plans": [p.to_dict() for p in result.plans],
                        "history": result.history,
                    },
                )
            if bar is not None:
                bar.update(task, completed=result.removed)
    finally:
        if bar is not None:
            bar.stop()
    result.model = current
    return result


_ITERATIVE = "iterative.json"


# --------------------------------------------------------------------------- entwined

FineTuneSteps = Callable[[nn.Module, int], "nn.Module | None"]
_STATE = "entwined.json"


def _budget_shares(budget: int, steps: int) -> list[int]:
    """Split ``budget`` fine-tuning steps over ``steps`` pruning steps (sums exactly to ``budget``)."""
    return [budget * i // steps - budget * (i - 1) // steps for i in range(1, steps + 1)]


def _macs(model: nn.Module, example: Any) -> int:
    import torch_pruning as tp

    from . import _inputs

    with _inputs.preserved_state(model):
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def entwined(
    model: nn.Module,
    data: Any,
    criterion: Any = "singe",
    ratio: float = 0.5,
    *,
    by: str = "units",
    steps: int = 5,
    fine_tune_budget: int = 0,
    fine_tune: FineTuneSteps | None = None,
    units: str = "channels",
    scope: str = "global",
    evaluate: Callable[[nn.Module], float] | None = None,
    progress: bool = False,
    checkpoint_dir: Any = None,
    resume: bool = False,
    seed: int = 0,
    **options: Any,
) -> ScheduleResult:
    """Prune and fine-tune in alternation: score, remove a little, fine-tune briefly, repeat.

    The "entwined" schedule of SInGE (Yvinec et al., "SInGE: Sparsity via
    Integrated Gradients Estimation of Neuron Relevance", NeurIPS 2022). Step
    ``i`` of ``steps`` (i = 1..S) scores the current model, removes units until
    ``i/S`` of the target is reached, then fine-tunes for its share
    :math:`n_i = \\lfloor B i / S \\rfloor - \\lfloor B (i-1) / S \\rfloor` of the
    fixed total budget :math:`B` = ``fine_tune_budget`` (so :math:`\\sum_i n_i = B`
    exactly). Special cases, for comparisons at an equal budget:
    ``steps=1`` is one-shot pruning followed by all :math:`B` fine-tuning
    steps; ``fine_tune_budget=0`` is iterative pruning without fine-tuning.

    The paper's method section (its split of pruning and fine-tuning steps)
    was not available to us: ``steps=5`` and the even split of the budget are
    xprune's choices, not the paper's constants. The default criterion
    ``"singe"`` integrates every unit on its own path (see ``docs/singe.md``):
    each step costs :math:`1 + \\lceil (K-1) U / R \\rceil` passes of R copies
    of the batch; ``criterion="singe-fast"`` is the cheaper shared-path
    simplification.

    Parameters
    ----------
    model : nn.Module
        Not modified; the pruned model is in the result.
    data : (X, y), iterable of batches or Split
        Reference samples for scoring (the fine-tuning data is the
        ``fine_tune`` callable's business).
    criterion : str, Criterion class or instance
        Any criterion (default ``"singe"``).
    ratio : float in [0, 1)
        With ``by="units"``: fraction of the original units removed
        (:math:`\\lfloor \\text{ratio} \\cdot U_0 \\rfloor` exactly, unless every
        layer is at its floor). With ``by="macs"``: the model's MACs (measured
        with Torch-Pruning's counter on the example inputs) end at most
        ``(1 - ratio)`` of the original; each step prunes until its measured
        target is met (per-unit MAC costs are estimates, so selection is
        repeated with a corrected ratio until it is).
    by : {"units", "macs"}
    steps : int >= 1
        Number of prune (+ fine-tune) steps S.
    fine_tune_budget : int >= 0
        Total fine-tuning steps B, split over the steps as above.
    fine_tune : callable ``fine_tune(model, n_steps) -> model or None``
        Trains ``model`` (in place, or returns a new one) for ``n_steps``
        optimiser steps. Required when ``fine_tune_budget > 0``. For resumed
        runs to equal uninterrupted ones it must not keep state between calls
        (create its optimiser inside); its global torch random state is seeded
        per step.
    units, scope : str
        Unit kind (structured kinds only: units are removed) and ranking
        scope, as in :func:`xprune.select`.
    evaluate : callable, optional
        ``evaluate(model) -> float`` recorded after every step.
    progress : bool
        Show the progress over the steps on stderr (see :mod:`xprune._progress`).
    checkpoint_dir : str or path, optional
        After every step the model (``torch.save`` of the whole module) and a
        JSON state (``entwined.json``: step, plans, history, settings) are
        written there atomically, the model first.
    resume : bool
        Continue the run saved in ``checkpoint_dir`` from its last complete
        step (the settings must match); with no saved run, start afresh.
        Without ``resume`` an existing run there is an error, never overwritten.
    seed : int
        Seeds torch's global random state at every step (criteria such as
        ``"random"`` and the fine-tuning draw from it), so a resumed run
        gives the same model as an uninterrupted one.
    **options :
        Passed to :func:`xprune.score` (criterion options, ``normalize``, ``target``, ...).

    Returns
    -------
    ScheduleResult
        ``history`` has one record per step: ``removed``, ``ratio`` (of the
        original units), ``macs``, ``macs_reduction``, ``fine_tune_steps``
        (this step's share) and ``fine_tune_total`` (used so far), and
        ``accuracy`` when ``evaluate`` is given.
    """
    import warnings
    from pathlib import Path

    from . import _inputs

    check_ratio(ratio)
    if by not in ("units", "macs"):
        raise XpruneError(f"by must be 'units' or 'macs', got {by!r}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise XpruneError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(fine_tune_budget, int) or isinstance(fine_tune_budget, bool) or fine_tune_budget < 0:
        raise XpruneError(f"fine_tune_budget must be an int >= 0 (optimiser steps), got {fine_tune_budget!r}")
    if fine_tune_budget > 0 and fine_tune is None:
        raise XpruneError("fine_tune_budget > 0 needs fine_tune=callable(model, n_steps) to spend it")
    if units == "weights":
        raise XpruneError("entwined removes units; for single weights use schedules.iterative(units='weights')")
    if resume and checkpoint_dir is None:
        raise XpruneError("resume=True needs the checkpoint_dir of the run to continue")

    settings = _settings(
        criterion,
        options,
        ratio=ratio,
        by=by,
        steps=steps,
        fine_tune_budget=fine_tune_budget,
        units=units,
        scope=scope,
        seed=seed,
    )
    shares = _budget_shares(fine_tune_budget, steps)
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    import copy

    current = copy.deepcopy(model)  # fine-tuning trains in place: never the caller's model
    result = ScheduleResult(model)
    start = 1
    state: dict[str, Any] = _resume_state(folder, _STATE, settings, resume, "an entwined") or {}
    if state:
        current = _load_model(folder, state)
        result.plans = [Plan.from_dict(p) for p in state["plans"]]
        result.history = list(state["history"])
        start = state["step"] + 1

    bar = task = None
    if progress:
        from ._progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"entwined ({settings['criterion']})", total=steps, completed=start - 1)
    try:
        for i in range(start, steps + 1):
            with _seeded(seed, i):
                scores = score(current, data, criterion, units, **options)
                example = _inputs.from_spec(scores.example)
                if not state:
                    state = {"units0": scores.total, "macs0": _macs(current, example), "fine_tune_used": 0}
                removed_before = result.removed
                macs_before = _macs(current, example)
                plan = None
                if by == "units":
                    k = math.floor(ratio * state["units0"] * i / steps + 1e-9) - removed_before
                    if k > 0:
                        plan = select(scores, k / scores.total, scope=scope)
                        current = apply(current, plan) if plan.n_removed else current
                else:
                    goal = state["macs0"] * (1 - ratio * i / steps)
                    if macs_before > goal:
                        plan, current = _prune_to_macs(current, scores, goal, macs_before, scope, example)
                if plan is not None and plan.n_removed:
                    result.plans.append(plan)
                n = shares[i - 1]
                if n > 0 and fine_tune is not None:  # shares are all 0 without fine_tune (checked above)
                    out = fine_tune(current, n)
                    current = current if out is None else out
                state["fine_tune_used"] += n
                macs = _macs(current, example)
                record = {
                    "step": i,
                    "removed": result.removed,
                    "total": state["units0"],
                    "ratio": result.removed / state["units0"],
                    "macs": macs,
                    "macs_reduction": 1 - macs / state["macs0"],
                    "fine_tune_steps": n,
                    "fine_tune_total": state["fine_tune_used"],
                }
                if evaluate is not None:
                    record["accuracy"] = evaluate(current)
                result.history.append(record)
            if folder is not None:
                state.update(settings=settings, plans=[p.to_dict() for p in result.plans], history=result.history)
                _save_checkpoint(folder, _STATE, i, current, state)
            if bar is not None and task is not None:
                bar.update(
                    task,
                    completed=i,
                    description=(
                        f"entwined ({settings['criterion']}): removed {100 * record['ratio']:.0f}% units, "
                        f"MACs -{100 * record['macs_reduction']:.0f}%"
                    ),
                )
    finally:
        if bar is not None:
            bar.stop()
    last = result.history[-1] if result.history else None
    if last is not None:
        reached = (
            (last["macs_reduction"] >= ratio - 1e-9)
            if by == "macs"
            else (last["removed"] >= math.floor(ratio * last["total"] + 1e-9))
        )
        if not reached:
            warnings.warn(
                f"entwined stopped short of ratio {ratio} ({by}): every layer is at its floor (last record {last})",
                stacklevel=2,
            )
    result.model = current
    return result


def _prune_to_macs(model, scores, goal, macs_before, scope, example, tries: int = 30):
    """Remove the lowest-scored units until the model's MACs are <= ``goal``.

    :func:`select` counts MACs exactly (:class:`xprune.costs.CostModel`, one
    trace) and removes *at most* the requested fraction; when unit granularity
    leaves it short of ``goal``, the fraction is raised until the goal is met
    (or nothing more can go).
    """
    from .costs import CostModel

    costs = CostModel(model, scores, example)
    base = costs.base["macs"]
    need = macs_before - goal
    r = min(need / base, 0.999) if base > 0 else 0.0
    step = 0.0
    plan = None
    for _ in range(tries):
        plan = select(scores, min(r + step, 0.999), scope=scope, by="macs", costs=costs)
        saved = base - costs.of_plan(plan, "macs")
        if saved >= need - 1e-6 or r + step >= 0.999:
            break
        step = max(2 * step, (need - saved) / base)
    assert plan is not None  # tries >= 1
    return plan, (apply(model, plan) if plan.n_removed else model)
