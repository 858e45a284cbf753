r"""Multiplicative gates on units: the one place a unit's output is scaled.

A :class:`GateSite` says where a group's units can be multiplied by a gate
vector :math:`g` (1 = the unit as it is, 0 = the unit switched off): the
output of a module along one dimension (conv channels, linear neurons), or
the last dimension of a module's first *input*, ``width`` features per unit
(attention heads before the output projection, MLP neurons before the down
projection). Each :class:`~xprune.units.UnitKind` lists its sites
(:meth:`~xprune.units.UnitKind.gate_sites`); SInGE (integrated gradients on
the gates), steered pruning (learned gates) and the transformer criteria
(gradients at the gates, captured activations) all gate through
:meth:`GateSite.scale` and :meth:`GateSite.attach`.

A gate may be a vector ``[size]`` or, per sample, a matrix ``[batch, size]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import XpruneError
from .units import Signals, UnitGroup, UnitKind, UnitSet, get_kind

__all__ = ["GateSignals", "GateSite", "Gates", "sites_of"]


@dataclass(frozen=True)
class GateSite:
    """One tensor a group's gate multiplies.

    ``on_input=False``: ``module``'s output is multiplied along ``unit_dim``
    by ``gate[units]`` with ``units = group.units_of(producer, n)`` for its
    ``n`` channels. ``on_input=True``: the last dimension of ``module``'s first
    input holds ``size * width`` features, ``width`` per unit, in unit order.
    """

    module: nn.Module
    producer: str
    unit_dim: int = -1
    width: int = 1
    on_input: bool = False

    def scale(self, t: torch.Tensor, group: UnitGroup, gate: torch.Tensor) -> torch.Tensor:
        """``t`` with the group's units multiplied by ``gate`` (``[size]`` or ``[batch, size]``)."""
        if self.on_input:
            lead = t.shape[:-1]
            return self._scale_units(self.units_view(t, group), gate).reshape(*lead, group.size * self.width)
        gate = gate.to(t.dtype)
        dim = self.unit_dim % t.dim()
        n = t.shape[dim]
        gv = group.gather(gate, self.producer, n, fill=1.0)
        shape = [1] * t.dim()
        shape[dim] = n
        if gv.dim() == 2:  # per-sample gates [batch, n]
            shape[0] = gv.shape[0]
        return t * gv.reshape(shape)

    def units_view(self, t: torch.Tensor, group: UnitGroup) -> torch.Tensor:
        """An input-site tensor ``[..., size * width]`` as ``[..., size, width]``."""
        if t.shape[-1] != group.size * self.width:
            raise XpruneError(
                f"gate of {group.name!r}: the layer reads {t.shape[-1]} features, "
                f"expected {group.size} units x {self.width}"
            )
        return t.reshape(*t.shape[:-1], group.size, self.width)

    @staticmethod
    def _scale_units(u: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        # u [..., size, width]; gate [size] or [batch, size]
        g = gate.to(u.dtype)
        g = g.reshape(*g.shape[:-1], *([1] * (u.dim() - 1 - g.dim())), g.shape[-1], 1)
        return u * g

    def attach(
        self,
        group: UnitGroup,
        gate: Callable[[], torch.Tensor | None],
        *,
        module: nn.Module | None = None,
        capture: list | None = None,
    ):
        """Hook the site (on ``module``, default the site's own) so every call is gated by ``gate()``.

        ``gate()`` returning ``None`` leaves the tensor as it is. With
        ``capture``, the gated tensor of every call is appended to it
        (``[..., size, width]`` for input sites); ``capture`` may also be a
        callable ``capture(t) -> tensor or None`` (e.g. :meth:`Signals.keep`)
        returning what the model continues with. Returns the hook handle.
        """
        module = self.module if module is None else module

        def keep(t):
            if capture is None:
                return None
            if callable(capture):
                return capture(t)
            capture.append(t)
            return None

        if self.on_input:

            def pre_hook(mod, args):
                g = gate()
                x = args[0]
                if g is None and capture is None:
                    return None
                u = self.units_view(x, group)
                if g is not None:
                    u = self._scale_units(u, g)
                kept = keep(u)  # upstream of what the layer reads: gradients arrive here
                u = u if kept is None else kept
                return (u.reshape(x.shape), *args[1:])

            # prepend: inside an LRP attribution context the layer's rule sees the gated input
            return module.register_forward_pre_hook(pre_hook, prepend=True)

        def hook(mod, args, out):
            g = gate()
            y = out if g is None else self.scale(out, group, g)
            kept = keep(y)
            if kept is not None:
                return kept
            return None if g is None else y

        return module.register_forward_hook(hook)


def sites_of(model: nn.Module, units: UnitSet, group: UnitGroup, gate_at: str = "after-norm") -> list[GateSite]:
    """The gate sites of ``group``, from its unit kind."""
    return get_kind(group.kind).gate_sites(model, units, group, gate_at)


class Gates:
    """Context manager gating every group of ``units`` (or the given ``groups``) of ``model``.

    ``values[name]`` is the current gate of group ``name`` (``None`` = not
    gated); change it between calls. With ``capture=True``, ``captured[name]``
    collects the gated tensors of every call. Leaving the context removes
    every hook; no parameter or attribute of the model changes.
    """

    def __init__(
        self,
        model: nn.Module,
        units: UnitSet,
        values: Mapping[str, Any] | None = None,
        *,
        groups: Iterable[UnitGroup] | None = None,
        gate_at: str = "after-norm",
        capture: bool = False,
    ):
        self.model, self.units, self.gate_at = model, units, gate_at
        self.groups = list(units if groups is None else groups)
        self.values: dict[str, torch.Tensor | None] = {g.name: None for g in self.groups}
        if values is not None:
            self.values.update(values)
        self.capture = capture
        self.captured: dict[str, list[torch.Tensor]] = {g.name: [] for g in self.groups}
        self._handles: list = []

    def sites(self) -> list[tuple[UnitGroup, GateSite]]:
        return [(g, s) for g in self.groups for s in sites_of(self.model, self.units, g, self.gate_at)]

    def __enter__(self) -> Gates:
        try:
            for group, site in self.sites():
                capture = self.captured[group.name] if self.capture else None
                self._handles.append(
                    site.attach(group, functools.partial(self.values.get, group.name), capture=capture)
                )
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __exit__(self, *exc) -> None:
        self.remove()


class GateSignals(Signals):
    """Signals read at a kind's gate sites (gates open: the model computes what it computed).

    One key per group, ``(group name, group name)``; captured tensors of input
    sites are ``[..., size, width]`` and are viewed as ``[N, S, C, W]``. The
    ready-made :meth:`~xprune.units.UnitKind.signals` of any kind whose units
    are read where a layer consumes them (heads, neurons, your own).
    """

    def __init__(self, kind: UnitKind, model: nn.Module, units: UnitSet):
        super().__init__()
        self._sub: dict[tuple[str, str], int] = {}
        try:
            for group in units:
                key = (group.name, group.name)
                self.captured[key] = []
                self._sub[key] = kind.subunits(model, group)
                for site in kind.gate_sites(model, units, group):
                    self._handles.append(site.attach(group, lambda: None, capture=lambda t, key=key: self.keep(key, t)))
        except BaseException:
            self.close()
            raise

    def view(self, key, t):
        return t.reshape(t.shape[0], -1, *t.shape[-2:])  # [N, S, C, W]

    def subunits(self, key):
        return self._sub[key]
