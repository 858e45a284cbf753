"""What can be removed: discovery of prunable units in an arbitrary model.

A *unit* is the smallest thing a plan can remove: a conv output channel or a
linear neuron (kind ``"channels"``), or a single weight (kind ``"weights"``).
Channels are coupled: removing output channel ``c`` of a conv also removes
channel ``c`` of the BatchNorm after it, input channel ``c`` of the next conv,
and, across a residual addition, channel ``c`` of every branch feeding the sum.
Torch-Pruning's dependency graph finds these couplings; xprune turns each
coupled set into one :class:`UnitGroup` whose ``size`` units are scored and
removed together.

Each kind is one :class:`UnitKind` object that owns everything specific to
it: discovery, the signals criteria read at the units, the gate sites, masking,
physical removal and the weight slices of each unit. ``"channels"`` and
``"weights"`` live in :mod:`xprune.kinds`; attention ``"heads"`` and MLP
``"neurons"`` in :mod:`xprune.transformers.kinds`. A new kind is one call to
:func:`register_kind` (see ``docs/unit-kinds.md``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from . import _inputs
from .errors import DataError, UnknownName, XpruneError

#: Layer types whose output channels can be roots of a channel group.
PRODUCER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

__all__ = [
    "UnitGroup",
    "UnitSet",
    "UnitKind",
    "Signals",
    "register_kind",
    "get_kind",
    "kinds",
    "discover",
    "forward_order",
    "build_graph",
]


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
        return target.index_add_(
            target.dim() - 1, idx[keep].to(target.device), per_channel[..., keep].to(target.dtype).to(target.device)
        )

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
        raise UnknownName(f"no unit group named {name!r}; known: {[g.name for g in self.groups]}")

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    @property
    def total(self) -> int:
        """Total number of units over all groups."""
        return sum(g.size for g in self.groups)


class Signals:
    """What a hooked criterion reads at the units during one forward (and backward) pass.

    A kind's :meth:`UnitKind.signals` returns one of these as a context
    manager: inside it, every forward call appends the tensor carrying the
    units to ``captured[key]`` (``key = (group name, producer)``). After the
    backward pass, :meth:`view` brings a captured tensor (or its gradient) to
    ``[N, S, C, W]``: samples, positions, units, features per unit.
    """

    def __init__(self) -> None:
        self.captured: dict[tuple[str, str], list[torch.Tensor]] = {}
        self._handles: list = []  # hook handles, removed by close()
        #: keys whose tensors the model continues with a copy of (see :meth:`keep`)
        self.copy_keys: set[tuple[str, str]] = set()
        self._versions: list[tuple[tuple[str, str], torch.Tensor, int]] = []

    def keep(self, key: tuple[str, str], t: torch.Tensor) -> torch.Tensor | None:
        """Capture ``t`` as the signal at ``key``; return what the model should continue with (None: ``t``).

        A later in-place operation (``nn.ReLU(inplace=True)``, ``x.add_()``)
        would overwrite a captured tensor and reroute its gradient. For keys
        in :attr:`copy_keys` the model continues with a copy and the captured
        tensor stays what the layer returned; for the others the tensor's
        version counter is recorded, so :meth:`overwritten` can tell which
        keys need the copy (no copy is made where nothing writes in place).
        """
        self.captured.setdefault(key, []).append(t)
        if key in self.copy_keys:
            return t.clone()
        self._versions.append((key, t, t._version))
        return None

    def take(self) -> list[tuple[tuple[str, str], torch.Tensor]]:
        """The captured ``(key, tensor)`` pairs in capture order; the signals keep no reference to them after."""
        pairs = [(key, t) for key, ts in self.captured.items() for t in ts]
        self.captured = {key: [] for key in self.captured}
        self._versions = []
        return pairs

    def overwritten(self) -> set[tuple[str, str]]:
        """Keys whose captured tensors were modified in place since :meth:`keep` (to redo with copies)."""
        return {key for key, t, v in self._versions if t._version != v}

    def unit_dim(self, key: tuple[str, str]) -> int:
        """Dimension of the captured tensor that indexes the units (1 for a conv output, -1 otherwise)."""
        return -1

    def view(self, key: tuple[str, str], t: torch.Tensor) -> torch.Tensor:
        """``t`` (a captured tensor or its gradient) as ``[N, S, C, W]``."""
        t = t.movedim(self.unit_dim(key), -1)
        return t.reshape(t.shape[0], -1, t.shape[-1], 1)

    def subunits(self, key: tuple[str, str]) -> int:
        """Parts of one unit that are explained separately (query heads of a KV group), 1 otherwise."""
        return 1

    def mask_for(self, inputs: Any) -> torch.Tensor | None:
        """``[N, S]`` weights of the positions that count (padding excluded), or None: all count."""
        return None

    def __enter__(self) -> Signals:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook (the model is as before)."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._versions = []


@contextlib.contextmanager
def captured_call(
    kind: UnitKind, model: nn.Module, units: UnitSet, run: Callable[[], Any], copy_keys: set | None = None
) -> Iterator[tuple[Signals, Any]]:
    """``run()`` (a forward pass) inside ``kind.signals(model, units)``, yielding ``(signals, result)``.

    If the pass overwrote a captured tensor in place, it is run again with
    those keys copied (:meth:`Signals.keep`), so the signals are what the
    layers returned. Pass the same ``copy_keys`` set for every batch: it
    learns the keys once.
    """
    copy_keys = set() if copy_keys is None else copy_keys
    while True:
        sig = kind.signals(model, units)
        try:
            sig.copy_keys = copy_keys
            result = run()
            bad = sig.overwritten() - copy_keys
            if not bad:
                yield sig, result
                return
            copy_keys |= bad
        finally:
            sig.close()


class UnitKind:
    """One kind of prunable unit, and everything specific to it.

    Subclasses set :attr:`name` and implement :meth:`discover`; the other
    methods are what the rest of xprune asks of a kind, each raising a clear
    error where the kind does not support it.

    - :meth:`discover` -> :class:`UnitSet` (read by selection and plans),
    - :meth:`signals` -> :class:`Signals` (read by hooked criteria: activations and gradients at the units),
    - :meth:`gate_sites` -> where a multiplicative gate sits (SInGE, steered pruning),
    - :meth:`weight_rows` -> each unit's weights (weight-magnitude criteria),
    - :meth:`apply` -> masking and physical removal (surgery),
    - :meth:`lrp_context` / :attr:`default_composite` -> how LRP runs on models with these units.
    """

    name: ClassVar[str] = ""
    #: whether the units are outputs that activations/gradients can be read at (single weights are not)
    has_outputs: ClassVar[bool] = True
    #: LRP composite used by the "lrp" criterion when none is given
    default_composite: ClassVar[str] = "epsilon-plus"

    def discover(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        include_output: bool = False,
        ignore: Sequence[nn.Module] = (),
        **options: Any,
    ) -> UnitSet:
        raise NotImplementedError

    def signals(self, model: nn.Module, units: UnitSet) -> Signals:
        raise XpruneError(f"unit kind {self.name!r} has no outputs to read activations or gradients at")

    def gate_sites(self, model: nn.Module, units: UnitSet, group: UnitGroup, gate_at: str = "after-norm") -> list:
        raise XpruneError(f"unit kind {self.name!r} has no gate sites (gates multiply unit outputs)")

    def subunits(self, model: nn.Module, group: UnitGroup) -> int:
        """Parts of one unit explained separately (the query heads of a KV group); 1 by default."""
        return 1

    def weight_rows(self, model: nn.Module, group: UnitGroup) -> list[tuple[str, torch.Tensor]]:
        """``(producer, rows)`` pairs: ``rows[j]`` are the weights of channel ``j`` of ``producer``
        (mapped to units with ``group.scatter_add``)."""
        raise XpruneError(f"unit kind {self.name!r} does not define the weights of a unit")

    def validate(self, model: nn.Module, plan: Any, mode: str) -> None:
        """Raise :class:`~xprune.errors.XpruneError` if ``plan`` cannot be applied to ``model`` in ``mode``.

        Called before any tensor changes (default: nothing to check beyond what :meth:`apply` checks)."""

    def apply(self, model: nn.Module, plan: Any, mode: str, example_inputs: Any = None) -> None:
        """Mask or remove the plan's units in ``model``, in place (callers pass a copy)."""
        raise XpruneError(f"unit kind {self.name!r} has no surgery")

    def lrp_context(self, model: nn.Module, composite: Any, canonizers: Any, **options: Any):
        """Context manager running LRP on ``model`` (default: :func:`xprune.lrp.attribution`).

        ``options`` go to the :class:`~xprune.lrp.Attribution` (``weight_relevance=`` for single weights)."""
        from .lrp import attribution

        return attribution(model, composite, canonizers, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _FunctionKind(UnitKind):
    """A kind given only by a discovery function (the older ``@register_kind(name)`` form)."""

    def __init__(self, name: str, fn: Callable[..., UnitSet]):
        self.name, self._fn = name, fn  # type: ignore[misc]  # name is a ClassVar; this kind is made at run time

    def discover(self, model, example_inputs, **options):
        return self._fn(model, example_inputs, **options)


#: Registered kinds: a UnitKind, or "module:attribute" loaded on first use.
_KINDS: dict[str, UnitKind | str] = {
    "channels": "xprune.kinds.channels:ChannelsKind",
    "weights": "xprune.kinds.weights:WeightsKind",
    "heads": "xprune.transformers.kinds:HeadsKind",
    "neurons": "xprune.transformers.kinds:NeuronsKind",
}


def register_kind(kind: UnitKind | type[UnitKind] | str, target: str | None = None):
    """Register a unit kind.

    ``register_kind(MyKind())`` (or the class, or as a class decorator)
    registers a :class:`UnitKind`; ``register_kind("name", "package.module:Class")``
    registers one loaded on first use; ``@register_kind("name")`` on a function
    ``fn(model, example_inputs, **options) -> UnitSet`` registers a kind that
    only discovers (criteria needing signals or surgery then say so).
    """
    if isinstance(kind, type) and issubclass(kind, UnitKind):
        _KINDS[kind.name] = kind()
        return kind
    if isinstance(kind, UnitKind):
        _KINDS[kind.name] = kind
        return kind
    if isinstance(kind, str) and target is not None:
        _KINDS[kind] = target
        return None
    if isinstance(kind, str):

        def deco(fn: Callable[..., UnitSet]) -> Callable[..., UnitSet]:
            _KINDS[kind] = _FunctionKind(kind, fn)
            return fn

        return deco
    raise XpruneError(f"register_kind expects a UnitKind, a name and 'module:Class', or a name; got {kind!r}")


def get_kind(name: str) -> UnitKind:
    """The :class:`UnitKind` registered under ``name`` (loading a lazy entry)."""
    entry = _KINDS.get(name)
    if entry is None:
        raise XpruneError(f"unknown unit kind {name!r}; known kinds: {', '.join(kinds())}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        entry = _KINDS[name] = obj() if isinstance(obj, type) else obj
    return entry


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
    unit_kind = get_kind(kind)
    if not isinstance(model, nn.Module):
        raise XpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ignored = _resolve_modules(model, ignore)
    return unit_kind.discover(model, example_inputs, include_output=include_output, ignore=ignored, **options)


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


def forward_order(model: nn.Module, example_inputs: Any, graph: Any = None) -> dict[str, int]:
    """Order in which modules first return on ``example_inputs``.

    With a ``graph`` from :func:`build_graph` on the same inputs, the order its
    traced forward pass recorded (no forward pass of its own).
    """
    if getattr(graph, "forward_order", None) is not None:
        return dict(graph.forward_order)
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
        shape = (
            _inputs.spec(example_inputs)
            if isinstance(example_inputs, (torch.Tensor, tuple, list, dict))
            else type(example_inputs).__name__
        )
        raise DataError(
            f"the inputs ({shape}) do not fit the model: {e}. Pass inputs of the shape "
            "and dtype the model was built for (a batch dimension first)."
        ) from e


class _ConstantOperands(torch.overrides.TorchFunctionMode):
    """Records the autograd nodes of operations that combine a traced tensor with a constant *per-unit* tensor.

    ``x + image`` or ``torch.cat([x, image])`` ties ``x``'s channels to a
    tensor xprune cannot shrink (the model input, a buffer); ``x - 0.2`` or
    ``x * mask[None, None]`` (size 1 along the channels) does not. In the
    traced graph both show only as a ``None`` operand, so the shapes are read
    here, while the graph is traced.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fixed: set[int] = set()
        self._keep: list = []  # the nodes, kept alive so their ids stay unique

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.grad_fn is not None and out.dim() >= 2:
            flat = [a for a in args if isinstance(a, torch.Tensor)]
            flat += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            for t in flat:
                if t.requires_grad or t.numel() <= 1:
                    continue
                shape = (1,) * (out.dim() - t.dim()) + tuple(t.shape)
                if any(shape[d] > 1 and shape[d] == out.shape[d] for d in {1, out.dim() - 1}):
                    self.fixed.add(id(out.grad_fn))
                    self._keep.append(out.grad_fn)
                    break
        return out


def build_graph(model: nn.Module, example_inputs: Any) -> tp.DependencyGraph:
    """Torch-Pruning dependency graph of ``model`` traced in eval mode (the model is not changed).

    ``graph.constant_coupled`` holds the ids of the autograd nodes that join
    traced channels with a constant tensor of the same width (see
    :class:`_ConstantOperands`).
    """
    constants = _ConstantOperands()
    order: dict[str, int] = {}  # what forward_order() finds, recorded by the traced pass itself

    def called(mod, args, out, name):
        order.setdefault(name, len(order))

    handles = [model.register_forward_pre_hook(lambda module, args: order.clear())]  # the last call (see costs)
    for name, m in model.named_modules():
        handles.append(m.register_forward_hook(functools.partial(called, name=name)))
    try:
        with _inputs.preserved_state(model), torch.enable_grad():
            try:
                with constants:
                    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)
            except (RuntimeError, TypeError, ValueError, IndexError, AttributeError) as e:
                _check_forward(model, example_inputs)  # raises a clear error when the inputs do not fit
                hint = (
                    "; for the channels of transformer blocks use units='heads' or 'neurons'"
                    if hasattr(getattr(model, "config", None), "to_dict")
                    else ""
                )
                raise XpruneError(
                    f"could not trace the model's dependency graph ({type(e).__name__}: {e}){hint}"
                ) from e
    finally:
        for h in handles:
            h.remove()
    graph.constant_coupled = constants.fixed
    graph._constant_nodes = constants._keep
    graph.forward_order = order
    return graph


def _is_depthwise(module) -> bool:
    return (
        isinstance(module, nn.modules.conv._ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )
