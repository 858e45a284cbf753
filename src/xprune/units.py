"""What can be removed: discovery of prunable units in an arbitrary model.

A *unit* is the smallest thing a plan can remove: a conv output channel or a
linear neuron (kind ``"channels"``), or a single weight (kind ``"weights"``).
Channels are coupled: removing output channel ``c`` of a conv also removes
channel ``c`` of the BatchNorm after it, input channel ``c`` of the next conv,
and, across a residual addition, channel ``c`` of every branch feeding the sum.
Torch-Pruning's dependency graph finds these couplings; xprune turns each
coupled set into one :class:`UnitGroup` whose ``size`` units are scored and
removed together.

New kinds (attention ``"heads"``, MLP ``"neurons"``) plug in through
:func:`register_kind`.
"""

from __future__ import annotations

import re

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch_pruning as tp
from torch import nn

from . import _inputs
from .errors import DataError, NothingToPrune, XpruneError

#: Layer types whose output channels can be roots of a channel group.
PRODUCER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class UnitGroup:
    """A set of units removed together.

    Attributes
    ----------
    name : str
        Name (as in ``model.named_modules()``) of the first layer, in forward
        order, whose outputs are these units. Scores and plans are keyed by it.
    kind : str
        The unit kind (``"channels"``, ``"weights"``, ...).
    size : int
        Number of units in the group.
    producers : tuple of str
        Layers whose outputs *are* the units (conv/linear layers whose output
        channels are in the group), in forward order; ``producers[0] == name``.
        Activation- and relevance-based criteria read their signals here.
    members : tuple of str
        Every module the removal touches (producers, BatchNorms, consumers).
    root : str
        The layer Torch-Pruning prunes the group through; unit ``i`` of the
        group is output channel ``i`` of ``root``.
    index : dict
        For each producer whose channels are not exactly the group's units in
        order (e.g. the branches of a concatenation), ``index[p][j]`` is the
        unit that channel ``j`` of ``p`` belongs to. Producers not listed map
        identically.
    """

    name: str
    kind: str
    size: int
    producers: tuple[str, ...]
    members: tuple[str, ...] = ()
    root: str = ""
    index: dict = field(default_factory=dict, compare=False, hash=False)

    def units_of(self, producer: str, n_channels: int) -> torch.Tensor:
        """Unit index of each of ``producer``'s ``n_channels`` output channels.

        ``-1`` marks channels that belong to another group (a producer whose
        output is split between groups, e.g. a conv whose output is added to
        a concatenation of two branches).
        """
        if producer not in self.index:
            return torch.arange(n_channels)
        mapping = torch.full((n_channels,), -1, dtype=torch.long)
        known = torch.as_tensor(self.index[producer], dtype=torch.long)[:n_channels]
        mapping[: len(known)] = known
        return mapping

    def scatter_add(self, target: torch.Tensor, producer: str, per_channel: torch.Tensor) -> torch.Tensor:
        """Add ``per_channel`` (last dim: the producer's channels) into ``target`` (last dim: units)."""
        idx = self.units_of(producer, per_channel.shape[-1]).to(per_channel.device)
        keep = idx >= 0
        return target.index_add_(target.dim() - 1, idx[keep].to(target.device),
                                 per_channel[..., keep].to(target.dtype).to(target.device))

    def gather(self, values: torch.Tensor, producer: str, n_channels: int, fill: float = 1.0) -> torch.Tensor:
        """Per-channel view of per-unit ``values`` (last dim), ``fill`` for channels of other groups."""
        idx = self.units_of(producer, n_channels).to(values.device)
        out = torch.full((*values.shape[:-1], n_channels), fill, dtype=values.dtype, device=values.device)
        keep = idx >= 0
        out[..., keep] = values[..., idx[keep]]
        return out

    def unit_dim(self, module: nn.Module) -> int:
        """Dimension of ``module``'s output that indexes the units (1 for convs, -1 otherwise)."""
        return 1 if isinstance(module, nn.modules.conv._ConvNd) else -1


@dataclass
class UnitSet:
    """The prunable units of one model, found from example inputs.

    Iterating yields the :class:`UnitGroup` objects in forward order.
    ``example`` is a JSON-able description of the example inputs, kept so a
    plan can rebuild the dependency graph on a copy of the model.
    """

    kind: str
    groups: list[UnitGroup]
    example: Any = None
    graph: Any = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[UnitGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, name: str) -> UnitGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(f"no unit group named {name!r}; known: {[g.name for g in self.groups]}")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def total(self) -> int:
        """Total number of units over all groups."""
        return sum(g.size for g in self.groups)


_KINDS: dict[str, Callable[..., UnitSet]] = {}


def register_kind(name: str) -> Callable:
    """Register a unit-discovery function ``fn(model, example_inputs, **options) -> UnitSet``."""

    def deco(fn: Callable[..., UnitSet]) -> Callable[..., UnitSet]:
        _KINDS[name] = fn
        return fn

    return deco


def kinds() -> list[str]:
    """Names of the registered unit kinds."""
    return sorted(_KINDS)


def discover(
    model: nn.Module,
    example_inputs: Any,
    kind: str = "channels",
    *,
    include_output: bool = False,
    ignore: Sequence[str | nn.Module] = (),
    **options: Any,
) -> UnitSet:
    """Find the prunable units of ``model``.

    Parameters
    ----------
    model : nn.Module
        Any model; it is traced once on ``example_inputs`` in eval mode and is
        not modified.
    example_inputs : Tensor, tuple or dict
        Inputs the model accepts (a batch of one sample is enough).
    kind : str
        ``"channels"`` (conv output channels and linear neurons, coupled into
        groups by the dependency graph) or ``"weights"`` (single weights of
        conv and linear layers). See :func:`kinds` for all registered kinds.
    include_output : bool
        Also allow units of the layer(s) producing the model's output
        (the classifier). Off by default: the classes are not prunable.
    ignore : sequence of str or nn.Module
        Layers (names or modules) whose output units must never be removed.

    Returns
    -------
    UnitSet
    """
    if kind not in _KINDS:
        raise XpruneError(f"unknown unit kind {kind!r}; known kinds: {', '.join(kinds())}")
    if not isinstance(model, nn.Module):
        raise XpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = _resolve_modules(model, ignore)
    return _KINDS[kind](model, example_inputs, include_output=include_output, ignore=ignored, **options)


def _resolve_modules(model: nn.Module, items: Sequence[str | nn.Module]) -> list[nn.Module]:
    out = []
    for item in items:
        if isinstance(item, nn.Module):
            out.append(item)
        else:
            try:
                out.append(model.get_submodule(item))
            except AttributeError:
                raise XpruneError(f"ignore: the model has no layer named {item!r}") from None
    return out


def forward_order(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Order in which leaf modules are first called on ``example_inputs``."""
    order: dict[str, int] = {}
    handles = []
    for name, m in model.named_modules():
        def hook(mod, args, out, name=name):
            order.setdefault(name, len(order))
        handles.append(m.register_forward_hook(hook))
    try:
        with _inputs.preserved_state(model), torch.no_grad():
            _check_forward(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def _check_forward(model: nn.Module, example_inputs: Any) -> Any:
    try:
        return _inputs.call(model, example_inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as e:
        shape = _inputs.spec(example_inputs) if isinstance(example_inputs, (torch.Tensor, tuple, list, dict)) else type(example_inputs).__name__
        raise DataError(
            f"the inputs ({shape}) do not fit the model: {e}. Pass inputs of the shape "
            "and dtype the model was built for (a batch dimension first)."
        ) from e


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Torch-Pruning dependency graph of ``model`` traced in eval mode (the model is not changed)."""
    with _inputs.preserved_state(model), torch.enable_grad():
        try:
            return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            _check_forward(model, example_inputs)  # raises a clear error when the inputs do not fit
            raise XpruneError(f"could not trace the model's dependency graph: {e}") from e


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


def _is_depthwise(module) -> bool:
    return (isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
            and module.groups == module.in_channels == module.out_channels)


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


@register_kind("channels")
def _discover_channels(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
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


@register_kind("weights")
def _discover_weights(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
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
