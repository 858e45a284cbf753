"""The ``"weights"`` unit kind: single weights of conv and linear layers (unstructured pruning).

One group per layer; unit ``i`` is ``weight.view(-1)[i]``. Weights can only be
masked: tensors keep their shape. Hugging Face's ``Conv1D`` (GPT-2's linear
layer, weight ``[in, out]``) counts as a linear layer.

The output layer (left out unless ``include_output=True``) is found on the
dependency graph when the model returns a tensor; when it returns an output
object or a tuple (Hugging Face models), by walking the autograd graph back
from the logits (every returned tensor when there are none) to the first
conv/linear layers on each path.

LRP on a model with Hugging Face attention runs in the heads kind's context
(:func:`xprune.transformers.attnlrp`, reached through the kind registry): the
attention function and the gated MLP products get the rules of the composite
(``"attnlrp"`` or ``"cp-lrp"``), as for heads and neurons.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import NothingToPrune, XpruneError
from ..layers import is_conv1d
from ..plan import Plan
from ..units import PRODUCER_TYPES, UnitGroup, UnitKind, UnitSet, build_graph, forward_order, get_kind
from .channels import _output_modules, check_plan

__all__ = ["WeightsKind", "discover_weights"]


def discover_weights(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Every weight of every conv and linear layer outside the output layer, one group per layer."""
    if options:
        raise XpruneError(f"unknown options for kind 'weights': {sorted(options)}")
    graph = None
    if include_output:
        outputs: set[nn.Module] = set()
    else:
        with _inputs.preserved_state(model), torch.no_grad():
            tensor_output = isinstance(_inputs.call(model, example_inputs), torch.Tensor)
        if tensor_output:
            graph = build_graph(model, example_inputs)
            outputs = _output_modules(graph)
        else:
            outputs = _output_layers(model, example_inputs)
    order = forward_order(model, example_inputs, graph)
    groups = []
    for name, module in model.named_modules():
        if not _is_layer(module) or module in ignore or module in outputs:
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


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, PRODUCER_TYPES) or is_conv1d(module)


def _returned_tensors(output: Any) -> list[torch.Tensor]:
    """The logits of a model output, or every tensor in it (nested tuples, lists, dicts, output objects)."""
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return [found]
    if isinstance(output, torch.Tensor):
        return [output]
    items = output.values() if isinstance(output, Mapping) else output if isinstance(output, (tuple, list)) else ()
    return [t for item in items for t in _returned_tensors(item)]


def _output_layers(model: nn.Module, example_inputs: Any) -> set[nn.Module]:
    """Conv/linear layers whose outputs reach the model's returned tensors without passing another such layer.

    Each layer's output is replaced, for one forward pass, by a fresh leaf that
    requires grad: the walk back along ``grad_fn.next_functions`` ends at those
    leaves, whatever the parameters' ``requires_grad``.
    """
    leaves: dict[int, nn.Module] = {}

    def cut(module, args, out):
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            return out
        leaf = out.detach().requires_grad_(True)
        leaves[id(leaf)] = module
        keep.append(leaf)
        return leaf

    keep: list[torch.Tensor] = []  # the leaves, alive (their ids stay unique) until the walk ends
    handles = [m.register_forward_hook(cut) for m in model.modules() if _is_layer(m)]
    try:
        with _inputs.preserved_state(model), torch.enable_grad():
            output = _inputs.call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    returned = _returned_tensors(output)
    found = {leaves[id(t)] for t in returned if id(t) in leaves}  # a layer's output returned as it is
    stack: list[Any] = [t.grad_fn for t in returned if t.grad_fn is not None]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad of a leaf
        if variable is not None:
            if id(variable) in leaves:
                found.add(leaves[id(variable)])
            continue
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return found


class WeightsKind(UnitKind):
    """Single weights: no outputs to read signals at; masking only."""

    name = "weights"
    has_outputs = False

    def discover(self, model, example_inputs, *, include_output=False, ignore=(), **options):
        return discover_weights(model, example_inputs, include_output=include_output, ignore=ignore, **options)

    def lrp_context(self, model, composite, canonizers, **options):
        """LRP with the composite's rules; on Hugging Face attention the heads kind's AttnLRP / CP-LRP context."""
        if _hf_attention(model):
            return get_kind("heads").lrp_context(model, composite, canonizers, **options)
        return super().lrp_context(model, composite, canonizers, **options)

    def validate(self, model, plan, mode):
        if mode == "remove":
            raise XpruneError(
                "single weights cannot be removed physically (tensors keep their shape); "
                "use mode='mask' for unstructured pruning, or units='channels' for a smaller model"
            )
        check_plan(model, plan)

    def apply(self, model, plan, mode, example_inputs=None):
        _mask_weights(model, plan)


def _hf_attention(model: nn.Module) -> bool:
    """Whether ``model`` holds a Hugging Face module whose attention function follows its config."""
    return any(hasattr(getattr(m, "config", None), "_attn_implementation_internal") for m in model.modules())


@torch.no_grad()
def _mask_weights(model: nn.Module, plan: Plan) -> None:
    modules = dict(model.named_modules())
    for name, idxs in plan.remove.items():
        if idxs:
            w = modules[name].weight
            w.view(-1)[torch.as_tensor(idxs, dtype=torch.long, device=w.device)] = 0.0
