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
from typing import Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..units import UnitGroup, UnitSet

_REGISTRY: dict[str, type["Criterion"]] = {}


def register(name: str) -> Callable[[type["Criterion"]], type["Criterion"]]:
    """Class decorator registering a :class:`Criterion` under ``name``."""

    def deco(cls: type[Criterion]) -> type[Criterion]:
        if not (isinstance(cls, type) and issubclass(cls, Criterion)):
            raise TypeError("register() decorates subclasses of xprune.criteria.Criterion")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available() -> list[str]:
    """Names of all registered criteria."""
    return sorted(_REGISTRY)


def get(criterion: "str | Criterion | type[Criterion]", **options: Any) -> "Criterion":
    """Resolve a criterion given by name, class or instance."""
    if isinstance(criterion, Criterion):
        if options:
            raise XpruneError("options cannot be combined with a Criterion instance; pass them to its constructor")
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        return criterion(**options)
    if isinstance(criterion, str) and criterion in _REGISTRY:
        return _REGISTRY[criterion](**options)
    raise XpruneError(f"unknown criterion {criterion!r}; known criteria: {', '.join(available())}")


def resolve_target(target: Any, output: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The class to explain for each sample, as a LongTensor ``[N]``.

    ``target`` is ``"label"`` (the true label, default), ``"predicted"`` (the
    model's top class), an int (the same class for every sample) or a callable
    ``target(output, labels) -> LongTensor[N]``.
    """
    n, n_classes = output.shape[0], output.shape[-1]
    if target == "label":
        if labels is None:
            raise DataError("target='label' needs labels; pass (inputs, labels) or target='predicted'")
        classes = torch.as_tensor(labels).to(output.device).long().reshape(-1)
    elif target == "predicted":
        classes = output.detach().reshape(n, -1, n_classes)[:, -1].argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full((n,), target, dtype=torch.long, device=output.device)
    elif callable(target):
        classes = torch.as_tensor(target(output, labels)).to(output.device).long().reshape(-1)
    else:
        raise XpruneError(
            f"target must be 'label', 'predicted', an int or a callable(output, labels); got {target!r}"
        )
    if classes.numel() != n:
        raise DataError(f"got {classes.numel()} targets for a batch of {n} samples")
    if n and (classes.min() < 0 or classes.max() >= n_classes):
        raise DataError(
            f"target classes must lie in [0, {n_classes - 1}] (the model has {n_classes} outputs); "
            f"got values from {int(classes.min())} to {int(classes.max())}. Check the labels match the model."
        )
    return classes


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
        """Raw per-unit scores, keyed by group name (one 1-D tensor of ``group.size`` values)."""
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


def reduces_sums(method: Callable) -> Callable:
    """Mark a ``compute``-like method as passing its sums through :func:`xprune.distributed.all_reduce_sums`.

    :meth:`HookedCriterion.distributed_sums` is true for kind ``"weights"``
    only when the class's ``compute_weights`` carries this mark.
    """
    method.reduces_sums = True
    return method


class HookedCriterion(Criterion):
    """A criterion computed from activations and gradients at the units.

    For each batch: one forward pass (inside :meth:`context`), the output of
    every producer layer is captured, and one backward pass from
    :meth:`seed` gives the gradient arriving at each captured output
    (``torch.autograd.grad``: no parameter ``.grad`` is touched). Then
    :meth:`reduce` maps (activation, gradient) to a per-unit contribution,
    contributions are summed over batches and :meth:`finalize` turns the sum
    into scores. Coupled producers of one group are finalised separately and
    their scores added (channels joined by a residual sum collect the signal
    read at each layer that produces them).

    Set ``needs_grad = False`` to skip the backward pass.
    """

    needs_grad: ClassVar[bool] = True

    def context(self, model: nn.Module):
        """Context manager entered around each forward/backward (default: none)."""
        return contextlib.nullcontext()

    def seed(self, output: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Gradient fed into the output: one-hot of the target class (gradient of its logit)."""
        seed = torch.zeros_like(output)
        if output.dim() == 2:
            seed[torch.arange(len(classes)), classes] = 1.0
        else:  # [N, ..., C]: explain the last position
            seed.reshape(output.shape[0], -1, output.shape[-1])[torch.arange(len(classes)), -1, classes] = 1.0
        return seed

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
        # channels go through the batch loop of compute(), which reduces totals/counts before finalize();
        # weights only where compute_weights is marked @reduces_sums (a subclass's own may not reduce)
        if kind == "weights":
            return bool(getattr(type(self).compute_weights, "reduces_sums", False))
        return kind == "channels"

    def compute_weights(self, model, units, data, *, target="label"):
        """Scores of single weights (kind ``"weights"``); criteria that support it override this."""
        raise XpruneError(f"criterion {self.name!r} does not support unit kind 'weights'")

    def compute(self, model, units, data, *, target="label"):
        if units.kind == "weights":
            return self.compute_weights(model, units, data, target=target)
        if units.kind != "channels":
            raise XpruneError(f"criterion {self.name!r} does not support unit kind {units.kind!r}")
        names = dict(model.named_modules())
        totals: dict[tuple[str, str], torch.Tensor] = {}
        counts: dict[tuple[str, str], int] = {}
        for inputs, labels in data:
            with self.context(model):
                captured: dict[tuple[str, str], list[torch.Tensor]] = {}
                handles = []
                for group in units:
                    for p in group.producers:
                        def hook(mod, args, out, key=(group.name, p)):
                            captured.setdefault(key, []).append(out)
                        handles.append(names[p].register_forward_hook(hook))
                try:
                    with torch.set_grad_enabled(self.needs_grad):
                        output = _inputs.logits(_inputs.call(model, self.prepare_inputs(inputs)))
                        classes = resolve_target(target, output, labels)
                        keys = [k for k, v in captured.items() for _ in v]
                        acts = [a for k in captured for a in captured[k]]
                        grads = [None] * len(acts)
                        if self.needs_grad and acts:
                            grads = torch.autograd.grad(
                                output, acts, grad_outputs=self.seed(output, classes), allow_unused=True
                            )
                finally:
                    for h in handles:
                        h.remove()
                for key, act, grad in zip(keys, acts, grads):
                    group_name, producer = key
                    dim = units[group_name].unit_dim(names[producer])
                    a = flatten_units(act.detach(), dim)
                    if grad is None and self.needs_grad:  # the output does not depend on it
                        grad = torch.zeros_like(act)
                    g = None if grad is None else flatten_units(grad.detach(), dim)
                    contrib = self.reduce(a, g, dim).detach()
                    totals[key] = totals.get(key, 0) + contrib
                    counts[key] = counts.get(key, 0) + a.shape[0] * a.shape[1]
        from .. import distributed  # sums over all ranks' shards (a no-op outside distributed scoring)

        totals, counts = distributed.all_reduce_sums(totals, counts)
        return self._combine(units, names, totals, counts)

    def _combine(self, units, names, totals, counts) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for group in units:
            s = torch.zeros(group.size, dtype=torch.float64)
            for p in group.producers:
                key = (group.name, p)
                if key not in totals:
                    continue
                per_channel = self.finalize(totals[key], counts[key]).double().cpu()
                group.scatter_add(s, p, per_channel)
            scores[group.name] = s
        return scores


def weight_slices(module: nn.Module) -> torch.Tensor:
    """A producer's weights as ``[out_channels, -1]`` (one row per output unit)."""
    w = module.weight.detach()
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


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
        scores = {}
        for group in units:
            if group.kind == "weights":
                scores[group.name] = self.weight_score(names[group.name].weight.detach()).reshape(-1).double().cpu()
                continue
            if group.kind != "channels":
                raise XpruneError(f"criterion {self.name!r} does not support unit kind {group.kind!r}")
            s = torch.zeros(group.size, dtype=torch.float64)
            for p in group.producers:
                per_channel = self.channel_score(weight_slices(names[p]).double()).cpu()
                group.scatter_add(s, p, self.combine_term(per_channel))
            scores[group.name] = self.combine_finish(s)
        return scores

    def combine_term(self, per_channel: torch.Tensor) -> torch.Tensor:
        return per_channel

    def combine_finish(self, s: torch.Tensor) -> torch.Tensor:
        return s
