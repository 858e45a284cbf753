"""Apply a plan: physically remove units, or mask them (zeros, same shapes).

The work itself belongs to the plan's unit kind (:meth:`xprune.units.UnitKind.apply`):
channels prune through Torch-Pruning's dependency graph so every coupled layer
shrinks consistently, heads and neurons slice their projections, single
weights are masked. This module validates the plan against the model first,
works on a copy (or, with ``inplace=True``, on a scratch copy first so that a
failure never leaves the caller's model half-changed), and records the plans
applied to a model (:func:`history`, what :func:`xprune.save` stores).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .errors import XpruneError
from .kinds.channels import mask_groups
from .plan import Plan
from .units import get_kind

__all__ = ["apply", "history", "mask_groups", "HISTORY"]

#: Attribute holding the plans applied to a pruned model (what :func:`xprune.save` records).
HISTORY = "_xprune_history"


def apply(
    model: nn.Module,
    plan: Plan,
    mode: str = "remove",
    *,
    example_inputs: Any = None,
    inplace: bool = False,
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
    """
    if not isinstance(plan, Plan):
        raise XpruneError(f"apply() expects a Plan from xprune.select(), got {type(plan).__name__}")
    if mode not in ("remove", "mask"):
        raise XpruneError(f"mode must be 'remove' or 'mask', got {mode!r}")
    history = list(getattr(model, HISTORY, [])) + [{"mode": mode, "plan": plan.to_dict()}]
    pruned = _apply(model, plan, mode, example_inputs, inplace)
    setattr(pruned, HISTORY, history)
    return pruned


def history(model: nn.Module) -> list[tuple[str, Plan]]:
    """The ``(mode, plan)`` pairs applied to ``model`` by :func:`apply`, oldest first."""
    return [(h["mode"], Plan.from_dict(h["plan"])) for h in getattr(model, HISTORY, [])]


def _apply(model, plan, mode, example_inputs, inplace):
    kind = get_kind(plan.kind)
    kind.validate(model, plan, mode)  # before the first tensor changes
    target = copy.deepcopy(model)
    kind.apply(target, plan, mode, example_inputs)
    if not inplace:
        return target
    # in place: the scratch copy above took every check, now the same edit on the caller's model
    kind.apply(model, plan, mode, example_inputs)
    return model
