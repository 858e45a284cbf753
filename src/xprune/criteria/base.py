"""The criterion interface and registry.

A criterion turns a model, its :class:`~xprune.units.UnitSet` and some data into
one score per unit (higher = more important, kept longer). To add your own,
subclass :class:`Criterion` (anything) or :class:`HookedCriterion` (anything
computed from the activations at the units and the gradient arriving there),
and register it::

    from xprune.criteria import HookedCriterion, register

    @register("mean-act-grad")
    class MeanActGrad(HookedCriterion):
        '''|mean of activation * gradient| (a Taylor variant).'''

        def reduce(self, activation, grad, unit_dim):
            return (activation * grad).sum(dim=(0, 1))   # [N, S, C] -> [C]

        def finalize(self, total, count):
            return (total / count).abs()

    xprune.score(model, data, criterion="mean-act-grad")

``reduce`` receives the activation and its gradient reshaped to ``[N, S, C]``
(samples, positions, units); what it returns is summed over batches and then
passed to ``finalize`` with the number of ``N * S`` values summed per unit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, overload

import torch
from torch import nn

from .. import _inputs
from ..errors import XpruneError, XpruneTypeError
from ..units import UnitKind, UnitSet, captured_call, get_kind
from .objective import TARGETS, Objective, resolve_target, target_classes  # re-exported here

__all__ = [
    "Criterion",
    "HookedCriterion",
    "WeightCriterion",
    "Signal",
    "Objective",
    "TARGETS",
    "register",
    "available",
    "get",
    "resolve_target",
    "target_classes",
    "flatten_units",
    "wide",
    "reduces_sums",
]

#: Criteria by name: a class, or "module:Class" for one imported on first use (costly or optional modules).
_REGISTRY: dict[str, type[Criterion] | str] = {
    "steered": "xprune.steered.criterion:Steered",
    "wanda": "xprune.transformers.criteria:Wanda",
    "llm-pruner": "xprune.transformers.criteria:LLMPruner",
}


_C = TypeVar("_C", bound="type[Criterion]")


@overload
def register(name: str) -> Callable[[_C], _C]: ...
@overload
def register(name: str, target: str) -> None: ...
def register(name: str, target: str | None = None) -> Callable[[_C], _C] | None:
    """Class decorator registering a :class:`Criterion` under ``name``.

    ``register(name, "package.module:Class")`` registers one imported on first use instead.
    """
    if target is not None:
        _REGISTRY[name] = target
        return None

    def deco(cls: _C) -> _C:
        if not (isinstance(cls, type) and issubclass(cls, Criterion)):
            raise XpruneTypeError("register() decorates subclasses of xprune.criteria.Criterion")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of all registered criteria."""
    return sorted(_REGISTRY)


def _load(name: str) -> type[Criterion]:
    entry = _REGISTRY[name]
    if isinstance(entry, str):
        import importlib

        module, _, attr = entry.partition(":")
        entry = _REGISTRY[name] = getattr(importlib.import_module(module), attr)
    return entry


def get(criterion: str | Criterion | type[Criterion], **options: Any) -> Criterion:
    """Resolve a criterion given by name, class or instance."""
    if isinstance(criterion, Criterion):
        if options:
            raise XpruneError("options cannot be combined with a Criterion instance; pass them to its constructor")
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        return _construct(criterion, criterion.__name__, options)
    if isinstance(criterion, str) and criterion in _REGISTRY:
        return _construct(_load(criterion), repr(criterion), options)
    raise XpruneError(f"unknown criterion {criterion!r}; known criteria: {', '.join(available())}")


def _construct(cls: type[Criterion], name: str, options: dict[str, Any]) -> Criterion:
    """``cls(**options)``, refusing an option its constructor does not take in one line that lists those it takes."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    known = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(options) - set(known))
    if unknown and not takes_any:
        raise XpruneError(
            f"criterion {name} takes no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(known) or 'none'} (and normalize=, target= of xprune.score)"
        )
    return cls(**options)


class Criterion:
    """Base class of all criteria.

    Subclasses implement :meth:`compute`. Set ``requires_data = False`` for
    criteria that only look at the weights; ``default_normalize`` is the
    per-layer normalisation applied when the user does not choose one.
    """

    name: ClassVar[str] = ""
    requires_data: ClassVar[bool] = True
    default_normalize: ClassVar[str | None] = None

    def __init__(self, **options: Any):
        if options:
            raise XpruneError(f"criterion {self.name!r} takes no options {sorted(options)}")

    def compute(
        self, model: nn.Module, units: UnitSet, data: Iterable | None, *, target: Any = "label"
    ) -> dict[str, torch.Tensor]:
        """Raw per-unit scores, keyed by group name (one 1-D tensor of ``group.size`` values).

        ``data`` yields ``(inputs, labels)`` batches (``labels`` may be None
        where ``target`` needs none); ``Objective.of(target, output, labels,
        inputs=inputs, model=model)`` gives what a batch explains.
        """
        raise NotImplementedError

    def distributed_sums(self, kind: str) -> bool:
        """Whether :meth:`compute` on unit kind ``kind`` all-reduces its per-unit sums across ranks.

        True means :meth:`compute` passes its running sums through
        :func:`xprune.distributed.all_reduce_sums` before any non-linear
        finalisation, so that :func:`xprune.score` may give each rank a shard of
        the data. False (the default): in a process group every rank scores
        all the data (exact, no speed-up).
        """
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def flatten_units(t: torch.Tensor, unit_dim: int) -> torch.Tensor:
    """Reshape a layer output to ``[N, S, C]``: samples, positions, units."""
    t = t.movedim(unit_dim, -1)
    return t.reshape(t.shape[0], -1, t.shape[-1])


def wide(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself in float32/float64, else (bf16/fp16 under autocast) in float32: the dtype to reduce in.

    Criteria reduce the big ``[N, S, C, W]`` tensors over positions in this
    dtype (no float64 copy of them) and accumulate the small per-sample,
    per-unit results in float64.
    """
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def reduces_sums(method: Callable) -> Callable:
    """Mark a ``compute``-like method as passing its sums through :func:`xprune.distributed.all_reduce_sums`.

    :meth:`HookedCriterion.distributed_sums` is true for kind ``"weights"``
    only when the class's ``compute_weights`` carries this mark.
    """
    method.reduces_sums = True  # type: ignore[attr-defined]  # a mark set on the function object
    return method


class HookedCriterion(Criterion):
    """A criterion computed from activations and gradients at the units.

    For each batch: one forward pass (inside :meth:`context`), the output of
    every producer layer is captured, and one backward pass from
    :meth:`seed` (the gradient of the batch's :class:`Objective`) gives the
    gradient arriving at each captured output
    (``torch.autograd.grad``: no parameter ``.grad`` is touched). Then
    :meth:`reduce` maps (activation, gradient) to a per-unit contribution,
    contributions are summed over batches and :meth:`finalize` turns the sum
    into scores. With an ``attention_mask`` in the inputs, padding tokens
    are zero in the signals and not counted (:attr:`Signal.positions`).
    Coupled producers of one group are finalised separately and their scores
    added (channels joined by a residual sum collect the signal
    read at each layer that produces them).

    Set ``needs_grad = False`` to skip the backward pass.
    """

    needs_grad: ClassVar[bool] = True

    def context(self, model: nn.Module):
        """Context manager entered around each forward/backward (default: none)."""
        return contextlib.nullcontext()

    def seed(self, output: torch.Tensor, objective: Objective) -> torch.Tensor:
        """Gradient fed into ``output`` (``objective.output``): the objective's, e.g. one-hot of the target classes."""
        return objective.seed

    def prepare_inputs(self, inputs: Any) -> Any:
        """Hook for criteria that need gradients at the inputs (default: inputs unchanged)."""
        return inputs

    def reduce(self, activation: torch.Tensor, grad: torch.Tensor | None, unit_dim: int) -> torch.Tensor:
        """Per-unit contribution of one batch; ``activation``/``grad`` are ``[N, S, C]``."""
        raise NotImplementedError

    def finalize(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """Scores from the summed contributions (``count`` = values summed per unit)."""
        return total

    def distributed_sums(self, kind: str) -> bool:
        # units with outputs go through the batch loop of compute(), which reduces totals/counts before
        # finalize(); weights only where compute_weights is marked @reduces_sums (a subclass's may not reduce)
        if not get_kind(kind).has_outputs:
            return bool(getattr(type(self).compute_weights, "reduces_sums", False))
        return True

    def compute_weights(self, model, units, data, *, target="label"):
        """Scores of single weights (kind ``"weights"``); criteria that support it override this."""
        raise XpruneError(f"criterion {self.name!r} does not support unit kind 'weights'")

    def contribution(self, signal: Signal) -> tuple[torch.Tensor, float]:
        """Per-unit contribution of one batch at one site and the number of values it sums.

        ``signal.activation`` / ``signal.grad`` are ``[N, S, C, W]`` (``W``
        features per unit: 1 for channels and neurons, ``group_size *
        head_dim`` for heads). The default folds ``W`` into the positions and
        calls :meth:`reduce` on ``[N, S * W, C]``; override it for criteria
        that treat the features of a unit together.
        """
        a, g = signal.activation, signal.grad
        n, s, c, w = a.shape
        fold = (lambda t: t.movedim(3, 2).reshape(n, s * w, c)) if w > 1 else (lambda t: t[..., 0])
        return self.reduce(fold(a), None if g is None else fold(g), signal.unit_dim), signal.positions * w

    def compute(self, model, units, data, *, target="label"):
        kind = get_kind(units.kind)
        if not kind.has_outputs:
            return self.compute_weights(model, units, data, target=target)
        totals: dict[tuple[str, str], torch.Tensor] = {}
        counts: dict[tuple[str, str], float] = {}
        copy_keys: set = set()  # sites a later in-place op overwrites: captured before it (learned once)
        for inputs, labels in data:

            def forward(inputs=inputs):
                with torch.set_grad_enabled(self.needs_grad):
                    return _inputs.call(model, self.prepare_inputs(inputs))

            with self.context_for(model, kind), captured_call(kind, model, units, forward, copy_keys) as (sig, raw):
                output = seed = None
                if self.needs_grad:
                    with torch.enable_grad():
                        objective = Objective.of(target, raw, labels, inputs=inputs, model=model)
                        output, seed = objective.output, self.seed(objective.output, objective)
                    del objective
                del raw
                mask = sig.mask_for(inputs)
                if mask is None and kind.name == "channels":  # linear layers on tokens: [N, T, C] outputs
                    mask = _inputs.token_mask(inputs)
                pairs = sig.take()

                def add(key, act, grad, mask=mask):
                    if grad is None and self.needs_grad:  # the output does not depend on it
                        grad = torch.zeros_like(act)
                    a = sig.view(key, act.detach())
                    g = None if grad is None else sig.view(key, grad.detach())
                    m = _positions_mask(mask, act, a)
                    if m is not None and not bool(m.all()):  # padding tokens: no signal there, not counted
                        w = m.to(a.dtype)[:, :, None, None]
                        a, g = a * w, (None if g is None else g * w.to(g.dtype))
                    value, count = self.contribution(Signal(a, g, sig.unit_dim(key), sig.subunits(key), m))
                    totals[key] = totals.get(key, 0) + value.detach().double().cpu()
                    counts[key] = counts.get(key, 0) + count

                if self.needs_grad and pairs and self._streams() and all(a.requires_grad for _, a in pairs):
                    _backward_streamed(output, seed, pairs, add)  # reduced while the gradients arrive
                    continue
                grads = [None] * len(pairs)
                if self.needs_grad and pairs:
                    with torch.enable_grad():
                        grads = torch.autograd.grad(output, [a for _, a in pairs], grad_outputs=seed, allow_unused=True)
            _add_all(pairs, grads, add)  # reduced after the context, once every gradient is there
        from .. import distributed  # sums over all ranks' shards (a no-op outside distributed scoring)

        totals, counts = distributed.all_reduce_sums(totals, counts)
        return self._combine(units, totals, counts)

    def context_for(self, model: nn.Module, kind: UnitKind):
        """Context entered around each batch's passes, given the unit kind (default: :meth:`context`)."""
        return self.context(model)

    def _streams(self) -> bool:
        """Whether contributions are computed during the backward pass (default: criteria without a context).

        A criterion's own context may hold state (torch-function modes, hooks)
        that must not see the reductions, so by default those reduce after it;
        a criterion whose context is inactive during the backward pass (LRP)
        overrides this to return True.
        """
        cls = type(self)
        return cls.context is HookedCriterion.context and cls.context_for is HookedCriterion.context_for

    def _combine(self, units, totals, counts) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for group in units:
            s = torch.zeros(group.size, dtype=torch.float64)
            for key in [k for k in totals if k[0] == group.name]:  # one site per producer (channels)
                per_channel = self.finalize(totals[key], counts[key]).double().cpu()
                group.scatter_add(s, key[1], per_channel)
            scores[group.name] = s
        return scores


def _positions_mask(mask: torch.Tensor | None, act: torch.Tensor, viewed: torch.Tensor) -> torch.Tensor | None:
    """``mask`` ``[N, T]`` when the captured ``act`` has a row per token (``[N, T, ...]``, viewed ``[N, T, C, W]``)."""
    if mask is None or act.dim() < 3:
        return None
    shape = tuple(mask.shape)
    if tuple(act.shape[:2]) != shape or tuple(viewed.shape[:2]) != shape:
        return None
    return mask.to(act.device) != 0


def _backward_streamed(output: torch.Tensor, seed: torch.Tensor, pairs: list, add: Callable) -> None:
    """One backward pass from ``output`` (gradient ``seed``) calling ``add(key, act, grad)`` as each gradient arrives.

    A tensor hook on each captured activation reduces it with its gradient
    the moment that gradient is complete, and drops the activation; the
    backward asks for the gradients by their graph edges, so no reference to
    the activations outlives their hook and the memory they held goes while
    the pass runs (the same values as ``torch.autograd.grad(output, acts)``).
    """
    pending = dict(enumerate(pairs))
    pairs.clear()

    def hook_for(i):
        def hook(grad):
            key, act = pending.pop(i)
            add(key, act, grad)

        return hook

    handles, edges = [], []
    try:
        for i in pending:
            handles.append(pending[i][1].register_hook(hook_for(i)))
            edges.append(torch.autograd.graph.get_gradient_edge(pending[i][1]))
        with torch.enable_grad():
            grads = torch.autograd.grad(output, edges, grad_outputs=seed, allow_unused=True)
        del grads
    finally:
        for h in handles:
            h.remove()
    for key, act in list(pending.values()):  # never reached by the gradient: the output does not depend on it
        add(key, act, None)


def _add_all(pairs: list, grads, add: Callable) -> None:
    """``add(key, act, grad)`` for every captured pair, dropping each activation once it is reduced."""
    grads = list(grads)
    for i, (key, act) in enumerate(pairs):
        pairs[i] = None
        add(key, act, grads[i])
        grads[i] = None
    pairs.clear()


@dataclass
class Signal:
    """What :meth:`HookedCriterion.contribution` receives for one site and batch.

    ``activation`` and ``grad`` (``None`` without a backward pass) are
    ``[N, S, C, W]``; ``unit_dim`` the dimension of the layer output that held
    the units (1 for a conv); ``subunits`` the parts of a unit explained
    separately (query heads of a KV group); ``token_mask`` ``[N, S]`` (bool)
    or None: the positions that are tokens of Hugging Face inputs, not
    padding (``activation`` and ``grad`` are 0 at padding positions;
    :attr:`positions` counts the tokens only).
    """

    activation: torch.Tensor
    grad: torch.Tensor | None
    unit_dim: int
    subunits: int = 1
    token_mask: torch.Tensor | None = None

    @property
    def positions(self) -> float:
        """Number of ``(sample, position)`` pairs that count: ``N * S``, or the tokens of ``token_mask``."""
        if self.token_mask is not None:
            return float(self.token_mask.sum())
        return float(self.activation.shape[0] * self.activation.shape[1])


class WeightCriterion(Criterion):
    """A criterion computed from each unit's weights only (no data needed).

    Subclasses implement :meth:`channel_score` (rows of weights -> one value per
    row) and optionally :meth:`combine` (how coupled producers add up).
    """

    requires_data: ClassVar[bool] = False

    def channel_score(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight_score(self, weight: torch.Tensor) -> torch.Tensor:
        """Score of every single weight (kind ``"weights"``), flattened."""
        raise NotImplementedError

    def compute(self, model, units, data=None, *, target="label"):
        names = dict(model.named_modules())
        kind = get_kind(units.kind)
        scores = {}
        for group in units:
            if not kind.has_outputs:  # single weights
                scores[group.name] = self.weight_score(names[group.name].weight.detach()).reshape(-1).double().cpu()
                continue
            s = torch.zeros(group.size, dtype=torch.float64)
            for producer, rows in kind.weight_rows(model, group):
                per_channel = self.channel_score(rows.double()).cpu()
                group.scatter_add(s, producer, self.combine_term(per_channel))
            scores[group.name] = self.combine_finish(s)
        return scores

    def combine_term(self, per_channel: torch.Tensor) -> torch.Tensor:
        return per_channel

    def combine_finish(self, s: torch.Tensor) -> torch.Tensor:
        return s
