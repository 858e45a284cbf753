"""Apply a plan: physically remove units, or mask them (zeros, same shapes).

``mode="remove"`` uses Torch-Pruning's dependency graph on a copy of the model:
every coupled layer (BatchNorm, next conv, residual partner, the linear layer
after a flatten) shrinks consistently, so the result is a smaller model with
the same outputs as the masked one.

``mode="mask"`` keeps every shape and zeroes what the removed units contribute:
the producing rows (and biases) of conv/linear layers, the affine parameters
of the norms that follow them (so a BatchNorm cannot turn a zeroed channel
back into a constant), and the consumers' input weights. In eval mode the
masked and the removed model compute the same function, except where a norm
normalises *across* units (LayerNorm/GroupNorm over the pruned dimension),
whose statistics differ.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from . import _inputs
from .errors import XpruneError
from .select import Plan, select
from .units import build_graph

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)

#: Attribute holding the plans applied to a pruned model (what :func:`xprune.save` records).
HISTORY = "_xprune_history"

#: Surgery for unit kinds that are not channel groups of the dependency graph
#: (e.g. attention heads): ``fn(model, plan, mode) -> None`` edits ``model`` in place.
_KIND_SURGERY: dict[str, Callable[[nn.Module, Plan, str], None]] = {}


def register_surgery(kind: str) -> Callable:
    """Register how plans of unit kind ``kind`` are applied (remove and mask, in place on a copy)."""

    def deco(fn: Callable[[nn.Module, Plan, str], None]) -> Callable[[nn.Module, Plan, str], None]:
        _KIND_SURGERY[kind] = fn
        return fn

    return deco


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
    if plan.kind == "weights" and mode == "remove":
        raise XpruneError(
            "single weights cannot be removed physically (tensors keep their shape); "
            "use mode='mask' for unstructured pruning, or units='channels' for a smaller model"
        )
    history = list(getattr(model, HISTORY, [])) + [{"mode": mode, "plan": plan.to_dict()}]
    pruned = _apply(model, plan, mode, example_inputs, inplace)
    setattr(pruned, HISTORY, history)
    return pruned


def history(model: nn.Module) -> list[tuple[str, Plan]]:
    """The ``(mode, plan)`` pairs applied to ``model`` by :func:`apply`, oldest first."""
    return [(h["mode"], Plan.from_dict(h["plan"])) for h in getattr(model, HISTORY, [])]


def _apply(model, plan, mode, example_inputs, inplace):
    if plan.kind in _KIND_SURGERY:
        # validate on a scratch copy first so a failure never leaves the caller's model half-changed
        scratch = copy.deepcopy(model)
        _KIND_SURGERY[plan.kind](scratch, plan, mode)
        if not inplace:
            return scratch
        _KIND_SURGERY[plan.kind](model, plan, mode)
        return model
    _validate(model, plan)
    target = model if inplace else copy.deepcopy(model)
    if plan.kind == "weights":
        _mask_weights(target, plan)
        return target
    if example_inputs is None:
        if plan.example is None:
            raise XpruneError("the plan records no example inputs; pass example_inputs=")
        example_inputs = _inputs.from_spec(plan.example)
    device = next((p.device for p in target.parameters()), None)
    example_inputs = _inputs.to_device(example_inputs, device)
    if not inplace:
        _apply_groups(target, plan, example_inputs, mode)
        return target
    # In place: prune a scratch copy first, so a failure never leaves the caller's model half-pruned.
    _apply_groups(copy.deepcopy(model), plan, example_inputs, mode)
    _apply_groups(target, plan, example_inputs, mode)
    return target


def _apply_groups(model: nn.Module, plan: Plan, example_inputs: Any, mode: str) -> None:
    """Prune (or mask) the plan's groups one after the other.

    Each group is taken from the graph right before it is pruned: removing one
    group shifts the indices other groups see through concatenations and
    flattening, which Torch-Pruning's index mapping updates only then.
    """
    graph = build_graph(model, example_inputs)
    for name in plan.remove:
        group = _pruning_group(graph, model, plan, name)
        if group is not None:
            _apply_group(group, mode)


def _validate(model: nn.Module, plan: Plan) -> None:
    modules = dict(model.named_modules())
    for name, idxs in plan.remove.items():
        root = plan.roots.get(name, name)
        if root not in modules:
            raise XpruneError(f"the plan names layer {root!r}, which this model does not have; "
                              "was the plan made for another model?")
        size = plan.sizes[name]
        if any(i < 0 or i >= size for i in idxs):
            raise XpruneError(f"plan removes indices outside [0, {size}) from {name!r}")
        if len(set(idxs)) >= size and size:
            raise XpruneError(f"plan removes every unit of {name!r}; keep at least one")
        if plan.kind == "weights":
            w = getattr(modules[name], "weight", None)
            if w is None or w.numel() != size:
                raise XpruneError(f"layer {name!r} does not have {size} weights; the plan does not fit this model")


def _pruning_group(graph, model: nn.Module, plan: Plan, name: str):
    idxs = plan.remove[name]
    if not idxs:
        return None
    root = plan.roots.get(name, name)
    module = dict(model.named_modules())[root]
    pruner = graph.get_pruner_of_module(module)
    out_channels = pruner.get_out_channels(module) if pruner is not None else None
    if out_channels != plan.sizes[name]:
        raise XpruneError(
            f"layer {root!r} has {out_channels} output channels but the plan expects "
            f"{plan.sizes[name]}; the plan does not fit this model"
        )
    return graph.get_pruning_group(module, pruner.prune_out_channels, list(idxs))


def _apply_group(group, mode: str) -> None:
    if mode == "remove":
        group.prune(record_history=False)
    else:
        _mask_group(group)


@torch.no_grad()
def _mask_group(group) -> None:
    graph = group._DG
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        idxs = torch.as_tensor(list(item.idxs), dtype=torch.long)
        if not isinstance(module, nn.Module) or not len(idxs) or not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, _NORMS):
            _zero(getattr(module, "weight", None), 0, idxs)
            _zero(getattr(module, "bias", None), 0, idxs)
        elif isinstance(module, nn.modules.conv._ConvNd):
            transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
            out_dim, in_dim = (1, 0) if transposed else (0, 1)
            depthwise = module.groups == module.out_channels == module.in_channels and module.groups > 1
            if graph.is_out_channel_pruning_fn(handler) or depthwise:
                _zero(module.weight, out_dim, idxs)
                _zero(module.bias, 0, idxs)
            elif module.groups == 1:
                _zero(module.weight, in_dim, idxs)
            else:
                raise XpruneError(f"masking input channels of grouped conv {module} is not supported; use mode='remove'")
        elif isinstance(module, nn.Linear):
            if graph.is_out_channel_pruning_fn(handler):
                _zero(module.weight, 0, idxs)
                _zero(module.bias, 0, idxs)
            else:
                _zero(module.weight, 1, idxs)
        else:
            raise XpruneError(
                f"mask mode does not know how to zero units of {type(module).__name__}; use mode='remove'"
            )


def _zero(t: torch.Tensor | None, dim: int, idxs: torch.Tensor) -> None:
    if t is not None:
        t.index_fill_(dim, idxs.to(t.device), 0.0)


@torch.no_grad()
def _mask_weights(model: nn.Module, plan: Plan) -> None:
    modules = dict(model.named_modules())
    for name, idxs in plan.remove.items():
        if idxs:
            w = modules[name].weight
            w.view(-1)[torch.as_tensor(idxs, dtype=torch.long, device=w.device)] = 0.0


def unit_costs(model: nn.Module, scores_or_plan: Any, by: str = "macs", example_inputs: Any = None) -> dict[str, float]:
    """MACs (or parameters) saved by removing one unit of each group from the full model.

    First-order figures of :class:`xprune.costs.CostModel` (one trace of the
    model; ``inf`` for one-unit groups). Removing a channel saves MACs in the
    layer producing it and in the layer reading it, so these per-unit savings
    overlap between groups and their sum over all units is about twice the
    model's MACs: for budgets use ``select(..., by="macs", model=model)``,
    which counts exactly.
    """
    from .costs import CostModel, check_metric

    check_metric(by)
    return CostModel(model, scores_or_plan, example_inputs).unit_costs(by)


def default_mode(plan: Plan) -> str:
    """``"mask"`` for single weights (they cannot be removed physically), ``"remove"`` otherwise."""
    return "mask" if plan.kind == "weights" else "remove"


def prune(
    model: nn.Module,
    data: Any,
    criterion: Any = "lrp",
    ratio: float = 0.5,
    *,
    units: str = "channels",
    mode: str | None = None,
    scope: str = "global",
    target: Any = "label",
    normalize: Any = "default",
    min_keep: int | float = 1,
    round_to: int | None = None,
    inplace: bool = False,
    return_plan: bool = False,
    **options: Any,
):
    """Score, select and apply in one call.

    Equivalent to ``apply(model, select(score(model, data, criterion, units, ...), ratio, ...), mode)``.
    ``mode`` defaults to ``"remove"`` for channels and ``"mask"`` for single weights.
    Returns the pruned model, or ``(pruned, plan)`` with ``return_plan=True``.
    """
    from .scores import score

    scores = score(model, data, criterion, units, target=target, normalize=normalize, **options)
    plan = select(scores, ratio, scope=scope, min_keep=min_keep, round_to=round_to)
    if mode is None:
        mode = default_mode(plan)
    pruned = apply(model, plan, mode, inplace=inplace)
    return (pruned, plan) if return_plan else pruned
