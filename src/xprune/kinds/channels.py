"""The ``"channels"`` unit kind: conv output channels and linear neurons, coupled by the dependency graph.

Channels are coupled: removing output channel ``c`` of a conv also removes
channel ``c`` of the BatchNorm after it, input channel ``c`` of the next conv,
and, across a residual addition, channel ``c`` of every branch feeding the sum.
Torch-Pruning's dependency graph finds these couplings; each coupled set
becomes one :class:`~xprune.units.UnitGroup` whose ``size`` units are scored
and removed together.

``mode="remove"`` prunes through the graph on the model (every coupled layer
shrinks consistently); ``mode="mask"`` keeps every shape and zeroes what the
removed units contribute: the producing rows (and biases) of conv/linear
layers, the affine parameters of the norms that follow them (so a BatchNorm
cannot turn a zeroed channel back into a constant), and the consumers' input
weights. In eval mode the masked and the removed model compute the same
function, except where a norm normalises *across* units (LayerNorm/GroupNorm
over the pruned dimension), whose statistics differ.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .. import _inputs
from ..errors import NothingToPrune, XpruneError
from ..gates import GateSite
from ..plan import Plan
from ..units import (PRODUCER_TYPES, Signals, UnitGroup, UnitKind, UnitSet, _is_depthwise, build_graph,
                     forward_order)

__all__ = ["ChannelsKind", "check_plan", "discover_channels", "mask_groups", "pruning_group", "weight_slices"]

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _output_modules(graph: tp.DependencyGraph) -> set[nn.Module]:
    """Conv/linear layers whose output channels reach the model output.

    Walks back from the graph's terminal nodes (those whose result is not used
    by another node, i.e. the model outputs) through every node that keeps the
    channel count (activations, norms, reshapes, ...) to the first conv or
    linear layers: removing their output channels would change the output width.
    """
    stop = (tp.ops.OPTYPE.CONV, tp.ops.OPTYPE.LINEAR)
    stack = [n for n in graph.module2node.values() if not n.outputs]
    seen, found = set(), set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type in stop:
            found.add(node.module)
            continue
        stack.extend(node.inputs)
    return found


def _output_coupled(graph: tp.DependencyGraph, group, outputs: set[nn.Module]) -> bool:
    return any(
        dep.target.module in outputs and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group
    )


def _fixed_coupled(group) -> bool:
    """True when the group's channels meet a tensor xprune cannot shrink (the model input, a buffer).

    E.g. a residual block whose skip path starts at the input image: its
    channels are added to the input's, which has a fixed number of channels;
    or a depthwise conv applied to the input image.
    In the traced graph such an operand has no ``grad_fn`` (``None`` among
    the operation's ``next_functions``).
    """
    for item in group:
        node = item.dep.target
        nexts = getattr(node.grad_fn, "next_functions", ())
        if node.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT):
            if len(nexts) >= 2 and any(f is None for f, _ in nexts):
                return True
        elif _is_depthwise(node.module) and nexts and nexts[0][0] is None:
            return True  # a depthwise conv ties its output channels to its input's
    return False


_MATMUL = re.compile(r"^(Mm|Bmm|Addmm|Baddbmm|MatMul|Einsum|Convolution|Linear)Backward")
_SHAPE_ONLY = re.compile(r"^(T|Transpose|Permute|View|Reshape|Unsqueeze|Squeeze|Expand|Clone|ToCopy)Backward")


def _matmul_parameters(group) -> list[nn.Parameter]:
    """Bare parameters (not owned by a conv/linear/norm layer) that the group's channels reach through a
    matrix product or convolution: Torch-Pruning guesses which dimension of them to cut, and for a
    custom layer computing ``x @ self.w.T`` that guess breaks the model.
    """
    found = []
    for item in group:
        node = item.dep.target
        if not isinstance(node.module, nn.Parameter):
            continue
        stack, seen = [(node, 0)], set()
        while stack:
            n, depth = stack.pop()
            if id(n) in seen or depth > 3:
                continue
            seen.add(id(n))
            for o in n.outputs:
                op = type(o.grad_fn).__name__ if o.grad_fn is not None else ""
                if _MATMUL.match(op):
                    found.append(node.module)
                    stack = []
                    break
                if _SHAPE_ONLY.match(op):
                    stack.append((o, depth + 1))
    return found



def discover_channels(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Conv output channels and linear neurons, coupled into groups by the dependency graph."""
    if options:
        raise XpruneError(f"unknown options for kind 'channels': {sorted(options)}")
    order = forward_order(model, example_inputs)
    graph = build_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    outputs = _output_modules(graph)
    owner = {id(p): (n.rpartition(".")[0], n) for n, p in model.named_parameters()}
    ignored_names = {names[m] for m in ignore if m in names}
    unsupported: dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=list(ignore), root_module_types=PRODUCER_TYPES):
        if not include_output and _output_coupled(graph, group, outputs):
            continue
        if _fixed_coupled(group):
            continue
        bare = [owner[id(p)] for p in _matmul_parameters(group) if id(p) in owner]
        if any(layer in ignored_names or any(layer.startswith(i + ".") for i in ignored_names if i)
               for layer, _ in bare):
            continue  # the user excluded the unsupported layer: leave every channel reaching it alone
        if bare:
            for layer, param in bare:
                unsupported.setdefault(layer, f"{layer or '<model>'} ({type(model.get_submodule(layer)).__name__}, "
                                              f"parameter {param})")
            continue
        producers, members, index = [], [], {}
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module) or module not in names:
                continue
            name = names[module]
            if name not in members:
                members.append(name)
            if isinstance(module, PRODUCER_TYPES) and graph.is_out_channel_pruning_fn(handler):
                if name not in producers:
                    producers.append(name)
                    local = list(item.idxs)
                    root_idxs = list(item.root_idxs)
                    n_out = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
                    if local != root_idxs or len(local) != len(group[0].idxs) or n_out != len(local):
                        mapping = [-1] * (max(local) + 1)
                        for j, r in zip(local, root_idxs):
                            mapping[j] = r
                        index[name] = tuple(mapping)
        if not producers:
            continue
        producers.sort(key=lambda n: order.get(n, 1 << 30))
        members.sort(key=lambda n: order.get(n, 1 << 30))
        size = len(group[0].idxs)
        root = names[group[0].dep.target.module]
        groups.append(
            UnitGroup(producers[0], "channels", size, tuple(producers), tuple(members), root, index)
        )
    if unsupported:
        raise XpruneError(
            f"the model has layers xprune cannot prune through: {'; '.join(unsupported.values())}. They use "
            "their own parameters in a matrix product or convolution, so removing the channels they receive "
            "would break them. Exclude them with ignore=" + repr(sorted(unsupported)) + " (the channels "
            "reaching them then stay), or write them with nn.Linear / nn.Conv layers"
        )
    groups.sort(key=lambda g: order.get(g.name, 1 << 30))
    if not groups:
        recurrent = [n for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
        raise NothingToPrune(
            "the model has no prunable channels: no conv or linear layer whose output "
            "channels can be removed without changing the model's output "
            "(pass include_output=True to allow pruning the classifier)"
            + (f"; its recurrent layers ({', '.join(recurrent)}: {type(model.get_submodule(recurrent[0])).__name__}) "
               "are not prunable in xprune (a hidden unit feeds the layer's own gates and recurrence); prune the "
               "conv/linear layers around them instead" if recurrent else "")
        )
    return UnitSet("channels", groups, _inputs.spec(example_inputs), graph)


def weight_slices(module: nn.Module) -> torch.Tensor:
    """A producer's weights as ``[out_channels, -1]`` (one row per output unit)."""
    w = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


class _ProducerSignals(Signals):
    """The output of every producer of every group, captured by forward hooks."""

    def __init__(self, model: nn.Module, units: UnitSet):
        super().__init__()
        self._dims: dict[tuple[str, str], int] = {}
        names = dict(model.named_modules())
        try:
            for group in units:
                for p in group.producers:
                    key = (group.name, p)
                    self._dims[key] = group.unit_dim(names[p])

                    def hook(mod, args, out, key=key):
                        self.captured.setdefault(key, []).append(out)

                    self._handles.append(names[p].register_forward_hook(hook))
        except BaseException:
            self.close()
            raise

    def unit_dim(self, key):
        return self._dims[key]


class ChannelsKind(UnitKind):
    """Conv output channels and linear neurons (see the module documentation)."""

    name = "channels"

    def discover(self, model, example_inputs, *, include_output=False, ignore=(), **options):
        return discover_channels(model, example_inputs, include_output=include_output, ignore=ignore, **options)

    def signals(self, model, units):
        return _ProducerSignals(model, units)

    def gate_sites(self, model, units, group, gate_at="after-norm"):
        """The producers' outputs; with ``gate_at="after-norm"`` the BatchNorm right after a producer."""
        modules = dict(model.named_modules())
        graph = units.graph
        sites = []
        for p in group.producers:
            producer = modules[p]
            site = producer
            if gate_at == "after-norm" and graph is not None and producer in graph.module2node:
                outs = graph.module2node[producer].outputs
                if len(outs) == 1 and isinstance(outs[0].module, nn.modules.batchnorm._BatchNorm):
                    site = outs[0].module
            sites.append(GateSite(site, p, group.unit_dim(producer)))
        return sites

    def weight_rows(self, model, group):
        modules = dict(model.named_modules())
        return [(p, weight_slices(modules[p])) for p in group.producers]

    def validate(self, model, plan, mode):
        check_plan(model, plan)

    def apply(self, model, plan, mode, example_inputs=None):
        if example_inputs is None:
            if plan.example is None:
                raise XpruneError("the plan records no example inputs; pass example_inputs=")
            example_inputs = _inputs.from_spec(plan.example)
        device = next((p.device for p in model.parameters()), None)
        _apply_groups(model, plan, _inputs.to_device(example_inputs, device), mode)


def _apply_groups(model: nn.Module, plan: Plan, example_inputs: Any, mode: str) -> None:
    """Prune (or mask) the plan's groups one after the other.

    Each group is taken from the graph right before it is pruned: removing one
    group shifts the indices other groups see through concatenations and
    flattening, which Torch-Pruning's index mapping updates only then.
    """
    graph = build_graph(model, example_inputs)
    for name in plan.remove:
        group = pruning_group(graph, model, plan, name)
        if group is not None:
            _apply_group(group, mode)


def pruning_group(graph, model: nn.Module, plan: Plan, name: str):
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


def mask_groups(model: nn.Module, graph, plan: Plan) -> None:
    """Mask the plan's channel groups in ``model`` in place through a dependency ``graph`` built on it.

    For callers that mask many plans into one reusable copy (rebuilding the graph once, not per plan).
    """
    for name in plan.remove:
        group = pruning_group(graph, model, plan, name)
        if group is not None:
            _mask_group(group)


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


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Refuse a plan that names layers the model lacks, indices out of range, or every unit of a group."""
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
