"""The ``"weights"`` unit kind: single weights of conv and linear layers (unstructured pruning).

One group per layer; unit ``i`` is ``weight.view(-1)[i]``. Weights can only be
masked: tensors keep their shape.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _inputs
from ..errors import NothingToPrune, XpruneError
from ..plan import Plan
from ..units import PRODUCER_TYPES, UnitGroup, UnitKind, UnitSet, build_graph, forward_order
from .channels import _output_modules, check_plan

__all__ = ["WeightsKind", "discover_weights"]


def discover_weights(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Every weight of every conv and linear layer outside the output layer, one group per layer."""
    if options:
        raise XpruneError(f"unknown options for kind 'weights': {sorted(options)}")
    order = forward_order(model, example_inputs)
    graph = build_graph(model, example_inputs)
    outputs = set() if include_output else _output_modules(graph)
    groups = []
    for name, module in model.named_modules():
        if not isinstance(module, PRODUCER_TYPES) or module in ignore or module in outputs:
            continue
        if name not in order:
            continue  # never called: removing its weights cannot matter
        groups.append(UnitGroup(name, "weights", module.weight.numel(), (name,), (name,), name))
    groups.sort(key=lambda g: order[g.name])
    if not groups:
        raise NothingToPrune(
            "the model has no prunable weights: no conv or linear layer outside the "
            "output layer (pass include_output=True to allow the classifier)"
        )
    return UnitSet("weights", groups, _inputs.spec(example_inputs), graph)


class WeightsKind(UnitKind):
    """Single weights: no outputs to read signals at; masking only."""

    name = "weights"
    has_outputs = False

    def discover(self, model, example_inputs, *, include_output=False, ignore=(), **options):
        return discover_weights(model, example_inputs, include_output=include_output, ignore=ignore, **options)

    def validate(self, model, plan, mode):
        if mode == "remove":
            raise XpruneError(
                "single weights cannot be removed physically (tensors keep their shape); "
                "use mode='mask' for unstructured pruning, or units='channels' for a smaller model"
            )
        check_plan(model, plan)

    def apply(self, model, plan, mode, example_inputs=None):
        _mask_weights(model, plan)


@torch.no_grad()
def _mask_weights(model: nn.Module, plan: Plan) -> None:
    modules = dict(model.named_modules())
    for name, idxs in plan.remove.items():
        if idxs:
            w = modules[name].weight
            w.view(-1)[torch.as_tensor(idxs, dtype=torch.long, device=w.device)] = 0.0
