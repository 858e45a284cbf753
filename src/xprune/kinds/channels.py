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
function, except where something reads *across* the units (a LayerNorm or
GroupNorm over the pruned dimension, a softmax or mean over it): masking such
a group is refused unless asked for (``exact=False``), and :func:`inexact_masks`
names those modules (see :mod:`xprune.kinds.masking`).

Grouped convolutions (``1 < groups != out_channels``, e.g. RegNet, ResNeXt)
and GroupNorms split the channels into blocks that must stay equally wide. As
Torch-Pruning does, one unit of such a group is the ``j``-th channel of every
block: ``j, j + w, j + 2w, ...`` (``w`` = channels / blocks, the group's
``size``), so the conv keeps its number of groups and any plan fits.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .. import _inputs
from ..errors import NothingToPrune, XpruneError
from ..gates import GateSite
from ..plan import Plan
from ..units import PRODUCER_TYPES, Signals, UnitGroup, UnitKind, UnitSet, _is_depthwise, build_graph, forward_order
from .masking import inexact_members, is_grouped, mask_group

__all__ = [
    "ChannelsKind",
    "check_plan",
    "discover_channels",
    "inexact_masks",
    "mask_groups",
    "pruning_group",
    "weight_slices",
]


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
    return any(dep.target.module in outputs and graph.is_out_channel_pruning_fn(dep.handler) for dep, _ in group)


def _fixed_coupled(group, graph=None) -> bool:
    """True when the group's channels meet a tensor xprune cannot shrink (the model input, a buffer).

    E.g. a residual block whose skip path starts at the input image: its
    channels are added to the input's, which has a fixed number of channels;
    or a depthwise conv applied to the input image.
    In the traced graph such an operand has no ``grad_fn`` (``None`` among
    the operation's ``next_functions``).
    """
    constant = getattr(graph, "constant_coupled", None)  # None: a graph not built by build_graph
    for item in group:
        node = item.dep.target
        nexts = getattr(node.grad_fn, "next_functions", ())
        if node.type in (tp.ops.OPTYPE.ELEMENTWISE, tp.ops.OPTYPE.CONCAT):
            # a constant operand of the units' width (not a scalar such as x - 0.2)
            if (
                len(nexts) >= 2
                and any(f is None for f, _ in nexts)
                and (constant is None or id(node.grad_fn) in constant)
            ):
                return True
        elif _is_depthwise(node.module) and nexts and nexts[0][0] is None:
            return True  # a depthwise conv ties its output channels to its input's
    return False


def _splits_units(group) -> bool:
    """True when a reshape in the group splits the units' dimension into several (heads x head_dim).

    Attention layers view the query/key/value channels as ``[..., heads,
    head_dim]`` with a fixed ``head_dim``: removing single channels would
    break that view. Those channels are units of the ``"heads"`` kind.
    """
    n = len(group[0].idxs)
    for item in group:
        node = item.dep.target
        if node.type != tp.ops.OPTYPE.RESHAPE or node.grad_fn is None:
            continue
        before = tuple(getattr(node.grad_fn, "_saved_self_sym_sizes", ()) or ())
        meta = getattr(node.grad_fn, "_input_metadata", ())
        after = tuple(meta[0].shape) if meta and hasattr(meta[0], "shape") else ()
        if not before or len(after) <= len(before):
            continue
        i = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), None)
        # the units are the last dimension (linear layers, tokens) or dimension 1 of a 4-D conv output
        if i is None or before[i] != n or i not in (len(before) - 1, 1 if len(before) == 4 else -1):
            continue
        tail = before[i + 1 :]
        middle = after[i : len(after) - len(tail)]
        # dimension i (the units) becomes several whose product is n; everything after it is unchanged
        if (
            tuple(after[len(after) - len(tail) :]) == tuple(tail)
            and math.prod(middle) == n
            and sum(1 for d in middle if d > 1) > 1
        ):  # a real split, not an added size-1 dimension
            return True
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


def _blocks(group, n_channels: int) -> int | None:
    """Into how many equally wide blocks the group's ``n_channels`` root channels are split.

    The least common multiple of the ``groups`` of the grouped convs and of the
    ``num_groups`` of the GroupNorms among the group's members (1 without any):
    every block must lose the same channels for these layers to stay valid.
    ``None`` where xprune cannot prune the group: a grouped transposed conv
    (Torch-Pruning slices its weight wrongly), or a grouped layer whose channels
    are not the root's one to one (reached through a concatenation).
    """
    blocks = 1
    for item in group:
        module = item.dep.target.module
        if is_grouped(module):
            out = group._DG.is_out_channel_pruning_fn(item.dep.handler)
            width, g = (module.out_channels if out else module.in_channels), module.groups
            if isinstance(module, nn.modules.conv._ConvTransposeNd):
                return None
        elif isinstance(module, nn.GroupNorm) and module.num_groups > 1:
            width, g = module.num_channels, module.num_groups
        else:
            continue
        if width != n_channels or list(item.idxs) != list(item.root_idxs):
            return None
        blocks = blocks * g // math.gcd(blocks, g)
    return blocks


def discover_channels(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Conv output channels and linear neurons, coupled into groups by the dependency graph."""
    if options:
        raise XpruneError(f"unknown options for kind 'channels': {sorted(options)}")
    graph = build_graph(model, example_inputs)
    order = forward_order(model, example_inputs, graph)  # recorded by the graph's traced pass
    names = {m: n for n, m in model.named_modules()}
    groups = []
    outputs = _output_modules(graph)
    owner = {id(p): (n.rpartition(".")[0], n) for n, p in model.named_parameters()}
    ignored_names = {names[m] for m in ignore if m in names}
    unsupported: dict[str, str] = {}
    for group in graph.get_all_groups(ignored_layers=list(ignore), root_module_types=PRODUCER_TYPES):
        if not include_output and _output_coupled(graph, group, outputs):
            continue
        if _fixed_coupled(group, graph) or _splits_units(group):
            continue
        bare = [owner[id(p)] for p in _matmul_parameters(group) if id(p) in owner]
        if any(
            layer in ignored_names or any(layer.startswith(i + ".") for i in ignored_names if i) for layer, _ in bare
        ):
            continue  # the user excluded the unsupported layer: leave every channel reaching it alone
        if bare:
            for layer, param in bare:
                unsupported.setdefault(
                    layer, f"{layer or '<model>'} ({type(model.get_submodule(layer)).__name__}, parameter {param})"
                )
            continue
        blocks = _blocks(group, len(group[0].idxs))
        if blocks is None:
            continue  # a grouped layer xprune cannot prune through (see _blocks): its channels stay
        width = len(group[0].idxs) // blocks  # units of the group: channel j of every block
        producers, members, index = [], [], {}
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            if not isinstance(module, nn.Module) or module not in names:
                continue
            name = names[module]
            if name not in members:
                members.append(name)
            if (
                isinstance(module, PRODUCER_TYPES)
                and graph.is_out_channel_pruning_fn(handler)
                and name not in producers
            ):
                producers.append(name)
                local = list(item.idxs)
                root_idxs = list(item.root_idxs)
                n_out = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
                if blocks > 1 or local != root_idxs or len(local) != len(group[0].idxs) or n_out != len(local):
                    mapping = [-1] * (max(local) + 1)
                    for j, r in zip(local, root_idxs, strict=True):
                        mapping[j] = r % width
                    index[name] = tuple(mapping)
        if not producers:
            continue
        producers.sort(key=lambda n: order.get(n, 1 << 30))
        members.sort(key=lambda n: order.get(n, 1 << 30))
        size = width
        root = names[group[0].dep.target.module]
        groups.append(UnitGroup(producers[0], "channels", size, tuple(producers), tuple(members), root, index))
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
            + (
                f"; its recurrent layers ({', '.join(recurrent)}: {type(model.get_submodule(recurrent[0])).__name__}) "
                "are not prunable in xprune (a hidden unit feeds the layer's own gates and recurrence); prune the "
                "conv/linear layers around them instead"
                if recurrent
                else ""
            )
        )
    return UnitSet("channels", groups, _inputs.spec(example_inputs), graph)


def weight_slices(module: nn.Module) -> torch.Tensor:
    """A producer's weights as ``[out_channels, -1]`` (one row per output unit)."""
    w = module.weight.detach()  # type: ignore[operator]  # nn.Module attributes are typed Tensor | Module
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
                        return self.keep(key, out)

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

    def apply(self, model, plan, mode, example_inputs=None, *, exact=True):
        """Remove or mask the plan's channels in ``model`` (in place).

        Masking a group whose channels something reads across (see
        :func:`inexact_masks`) raises :class:`~xprune.errors.XpruneError`
        before any tensor changes, unless ``exact=False``.
        """
        if example_inputs is None:
            if plan.example is None:
                raise XpruneError("the plan records no example inputs; pass example_inputs=")
            example_inputs = _inputs.from_spec(plan.example)
        device = next((p.device for p in model.parameters()), None)
        _apply_groups(model, plan, _inputs.to_device(example_inputs, device), mode, exact)

    def inexact_masks(self, model, units, example_inputs=None):
        """See :func:`inexact_masks`."""
        return inexact_masks(model, units, example_inputs)


def _apply_groups(model: nn.Module, plan: Plan, example_inputs: Any, mode: str, exact: bool = True) -> None:
    """Prune (or mask) the plan's groups one after the other.

    Each group is taken from the graph right before it is pruned: removing one
    group shifts the indices other groups see through concatenations and
    flattening, which Torch-Pruning's index mapping updates only then.
    """
    graph = build_graph(model, example_inputs)
    if mode == "mask":
        mask_groups(model, graph, plan, exact=exact)
        return
    for name in plan.remove:
        group = pruning_group(graph, model, plan, name)
        if group is not None:
            group.prune(record_history=False)


def pruning_group(graph, model: nn.Module, plan: Plan, name: str):
    """The Torch-Pruning group removing the plan's units of group ``name`` (None when it removes none).

    A unit of a group split into blocks by grouped convs or GroupNorms (see
    :func:`_blocks`) is the same channel of every block; a plan made per
    channel (size = channels) must then remove the same channels of every block.
    """
    idxs = sorted(plan.remove[name])
    if not idxs:
        return None
    root = plan.roots.get(name, name)
    module = model.get_submodule(root)  # (not a dict of every module: called once per group)
    pruner = graph.get_pruner_of_module(module)
    n = pruner.get_out_channels(module) if pruner is not None else None
    size = plan.sizes[name]
    if n is None or not size or n % size:
        raise XpruneError(
            f"layer {root!r} has {n} output channels but the plan expects {size}; the plan does not fit this model"
        )
    group = graph.get_pruning_group(module, pruner.prune_out_channels, idxs)
    blocks = _blocks(group, n)
    if blocks is None:
        raise XpruneError(
            f"the channels of {root!r} reach a grouped layer xprune cannot prune (a grouped "
            "transposed conv, or a grouped conv behind a concatenation); leave them out of the plan "
            f"(xprune.discover(..., ignore=[{root!r}]))"
        )
    if n == size * blocks and blocks > 1:  # units -> the same channel of every block
        return graph.get_pruning_group(
            module, pruner.prune_out_channels, sorted(i + k * size for k in range(blocks) for i in idxs)
        )
    if n != size:
        raise XpruneError(
            f"layer {root!r} has {n} output channels but the plan expects {size}; the plan does not fit this model"
        )
    if blocks > 1:
        width, gone = n // blocks, set(idxs)
        uneven = sorted(i for i in gone if any((i % width) + k * width not in gone for k in range(blocks)))
        if uneven:
            raise XpruneError(
                f"the plan removes channels {uneven[:6]} of {root!r} from some of the {blocks} blocks of its grouped "
                "conv/GroupNorm but not from all, which would leave the blocks unequal; select the plan from "
                f"xprune.score on xprune.discover units (one unit = one channel of every block), or remove channel "
                f"j + k*{width} for every k"
            )
    return group


def mask_groups(model: nn.Module, graph, plan: Plan, *, exact: bool = True) -> None:
    """Mask the plan's channel groups in ``model`` in place through a dependency ``graph`` built on it.

    For callers that mask many plans into one reusable copy (rebuilding the graph once, not per plan).
    With ``exact=True`` (default) a plan whose masking would not equal its removal
    (:func:`inexact_masks`) raises :class:`~xprune.errors.XpruneError` before any tensor changes.
    """
    groups = [g for g in (pruning_group(graph, model, plan, name) for name in plan.remove) if g is not None]
    if exact:
        found = _inexact(graph, model, {n: plan.roots.get(n, n) for n, v in plan.remove.items() if v})
        if found:
            reasons = {m: why for bad in found.values() for m, why in bad.items()}
            listed = "; ".join(f"{m} ({why})" for m, why in sorted(reasons.items())[:4])
            more = f" and {len(reasons) - 4} more" if len(reasons) > 4 else ""
            raise XpruneError(
                f"masking would not equal removal here: {listed}{more} would read the zeroed channels "
                "that removal drops; use mode='remove' (or exact=False to mask anyway)"
            )
    for group in groups:
        mask_group(group)


def _inexact(graph, model: nn.Module, roots: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{group: {module: reason}}`` for the groups (name -> root layer) whose masking is not removal."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    found = {}
    for name, root in roots.items():
        if root not in modules:
            raise XpruneError(f"the units name layer {root!r}, which this model does not have")
        module = modules[root]
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        # the whole group: which modules it reaches does not depend on the indices removed
        everything = list(range(pruner.get_out_channels(module)))
        bad = inexact_members(graph.get_pruning_group(module, pruner.prune_out_channels, everything), names)
        if bad:
            found[name] = bad
    return found


def inexact_masks(model: nn.Module, units: Any, example_inputs: Any = None) -> dict[str, list[str]]:
    """The groups whose masking would not compute what their removal computes, with the modules to blame.

    ``units`` is a :class:`~xprune.units.UnitSet`, :class:`~xprune.scores.Scores`
    (every group) or :class:`~xprune.plan.Plan` (the groups it removes units
    from). Returns ``{group name: [module, ...]}`` for the groups where a
    module reads across the group's channels (a LayerNorm or GroupNorm over
    them, a softmax, mean or variance along them; see
    :mod:`xprune.kinds.masking`); an empty dict: masking equals removal.
    """
    modules = dict(model.named_modules())
    graph = getattr(units, "graph", None)
    if graph is None or not any(m in graph.module2node for m in modules.values()):  # none, or another model's
        example = getattr(units, "example", None)
        if example_inputs is None:
            if example is None:
                raise XpruneError("the units record no example inputs; pass example_inputs=")
            example_inputs = _inputs.from_spec(example)
        device = next((p.device for p in model.parameters()), None)
        graph = build_graph(model, _inputs.to_device(example_inputs, device))
    if isinstance(units, UnitSet):
        roots = {g.name: (g.root or g.name) for g in units}
    elif isinstance(units, Plan):
        roots = {n: units.roots.get(n, n) for n, v in units.remove.items() if v}
    else:
        roots = {n: units.roots.get(n, n) for n in units}
    return {name: sorted(bad) for name, bad in _inexact(graph, model, roots).items()}


def check_plan(model: nn.Module, plan: Plan) -> None:
    """Refuse a plan that names layers the model lacks, indices out of range, or every unit of a group."""
    modules = dict(model.named_modules())
    for name, idxs in plan.remove.items():
        root = plan.roots.get(name, name)
        if root not in modules:
            raise XpruneError(
                f"the plan names layer {root!r}, which this model does not have; was the plan made for another model?"
            )
        size = plan.sizes[name]
        if any(i < 0 or i >= size for i in idxs):
            raise XpruneError(f"plan removes indices outside [0, {size}) from {name!r}")
        if len(set(idxs)) >= size and size:
            raise XpruneError(f"plan removes every unit of {name!r}; keep at least one")
        if plan.kind == "weights":
            w = getattr(modules[name], "weight", None)
            if w is None or w.numel() != size:
                raise XpruneError(f"layer {name!r} does not have {size} weights; the plan does not fit this model")
