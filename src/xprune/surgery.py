"""Apply a plan: physically remove units, or mask them (zeros, same shapes).

The work itself belongs to the plan's unit kind (:meth:`xprune.units.UnitKind.apply`):
channels prune through Torch-Pruning's dependency graph so every coupled layer
shrinks consistently, heads and neurons slice their projections, single
weights are masked. This module validates the plan against the model first,
works on a copy (or, with ``inplace=True``, on a scratch copy first so that a
failure never leaves the caller's model half-changed), and records the plans
applied to a model (:func:`history`, what :func:`xprune.save` stores).

Masking computes what removal computes except where a layer reads across the
masked units (a LayerNorm over channels, ...): :func:`inexact_masks` finds
those, :func:`apply` refuses to mask them unless ``exact=False``, and
:func:`evaluation_mode` tells the evaluators (curves, tuning, rate choice)
when to remove instead.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .errors import XpruneError
from .kinds.channels import mask_groups
from .plan import Plan
from .units import get_kind

__all__ = [
    "apply",
    "blamed_modules",
    "evaluation_meta",
    "evaluation_mode",
    "history",
    "inexact_masks",
    "mask_groups",
    "HISTORY",
]

#: Attribute holding the plans applied to a pruned model (what :func:`xprune.save` records).
HISTORY = "_xprune_history"


def apply(
    model: nn.Module,
    plan: Plan,
    mode: str = "remove",
    *,
    example_inputs: Any = None,
    inplace: bool = False,
    exact: bool = True,
) -> nn.Module:
    """Apply ``plan`` to ``model`` and return the pruned model.

    Parameters
    ----------
    model : nn.Module
        The model the plan was made for. Untouched unless ``inplace=True``.
    plan : Plan
        From :func:`xprune.select`.
    mode : "remove" or "mask"
        Physically remove the units (smaller tensors) or zero them in place of
        removal (same shapes). Single weights (kind ``"weights"``) can only be masked.
    example_inputs : optional
        Inputs to trace the model; default: zeros shaped as recorded in the plan.
    inplace : bool
        Modify ``model`` itself instead of a deep copy. Even then, the plan is
        validated completely before the first tensor changes.
    exact : bool
        With ``mode="mask"``: refuse (:class:`~xprune.errors.XpruneError`) a
        plan whose masking would not compute what its removal computes (a
        LayerNorm/GroupNorm or a softmax/mean across the pruned channels, see
        :func:`inexact_masks`). ``exact=False`` masks anyway.
    """
    if not isinstance(plan, Plan):
        raise XpruneError(f"apply() expects a Plan from xprune.select(), got {type(plan).__name__}")
    if mode not in ("remove", "mask"):
        raise XpruneError(f"mode must be 'remove' or 'mask', got {mode!r}")
    history = [*getattr(model, HISTORY, []), {"mode": mode, "plan": plan.to_dict()}]
    pruned = _apply(model, plan, mode, example_inputs, inplace, exact)
    setattr(pruned, HISTORY, history)
    return pruned


def inexact_masks(model: nn.Module, units: Any, example_inputs: Any = None) -> dict[str, list[str]]:
    """``{group: [module, ...]}``: the groups of ``units`` (a UnitSet, Scores or Plan) whose masking differs
    from their removal, with the modules reading across their units; empty when masking is exact.

    Kinds without such a check (single weights: masking is their removal;
    heads and neurons: no norm reads across them) give an empty dict.
    """
    check = getattr(get_kind(getattr(units, "kind", "channels")), "inexact_masks", None)
    return {} if check is None else check(model, units, example_inputs)


def evaluation_mode(mode: str, plan: Plan, inexact: dict[str, list[str]]) -> str:
    """The mode that measures ``plan`` as asked: ``"remove"`` where ``mode="mask"`` would touch a group of
    ``inexact`` (from :func:`inexact_masks`), else ``mode``."""
    if mode == "mask" and any(plan.remove.get(name) for name in inexact):
        return "remove"
    return mode


def evaluation_meta(modes: list, default: str, blamed: list[str] | None = None) -> dict[str, Any]:
    """How a series of plans was measured, for a result's ``meta``: ``mode`` (the modes used, joined by
    ``"+"``; ``default`` when nothing was removed), ``modes`` (per plan, ``None`` for an empty plan) and,
    when some masking was inexact, ``inexact_mask`` (the modules ``blamed``)."""
    used = sorted({m for m in modes if m is not None})
    meta: dict[str, Any] = {"mode": "+".join(used) if used else default, "modes": list(modes)}
    if blamed:
        meta["inexact_mask"] = list(blamed)
    return meta


def blamed_modules(inexact: dict[str, list[str]]) -> list[str]:
    """The modules named in :func:`inexact_masks`'s result, sorted, each once."""
    return sorted({m for ms in inexact.values() for m in ms})


def history(model: nn.Module) -> list[tuple[str, Plan]]:
    """The ``(mode, plan)`` pairs applied to ``model`` by :func:`apply`, oldest first."""
    return [(h["mode"], Plan.from_dict(h["plan"])) for h in getattr(model, HISTORY, [])]


def _apply(model, plan, mode, example_inputs, inplace, exact=True):
    kind = get_kind(plan.kind)
    kind.validate(model, plan, mode)  # before the first tensor changes
    # kinds that check whether masking is exact take the caller's choice
    extra = {"exact": exact} if mode == "mask" and hasattr(kind, "inexact_masks") else {}
    target = copy.deepcopy(model)
    kind.apply(target, plan, mode, example_inputs, **extra)
    if not inplace:
        return target
    # in place: the scratch copy above took every check, now the same edit on the caller's model
    kind.apply(model, plan, mode, example_inputs, **extra)
    return model
