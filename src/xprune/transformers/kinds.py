"""Unit kinds ``"heads"`` and ``"neurons"`` for transformers.

- ``"heads"``: one unit per attention head of every self-attention block
  (for grouped-query attention one unit per key/value group with its query
  heads, see :mod:`~xprune.transformers.adapters`). The group is named after
  the attention module; ``producers`` are the q/k/v (or fused) projections,
  ``members`` add the output projection.
- ``"neurons"``: one unit per intermediate neuron of every MLP (the entries of
  the activation the output projection reads). The group is named after the
  MLP module (BERT family: ``...intermediate``); ``producers`` are the input
  projections (``fc1``, or ``gate_proj`` and ``up_proj``), ``members`` add the
  output projection.

Only blocks that run on the example inputs are listed. ``ignore`` skips a
block when the block itself or any of its projections is named in it.

Signals and gates sit where the model *consumes* the units: the input of the
attention's output projection (``[..., units x group_size x head_dim]``) and
the input of the MLP's output projection. Criteria read the unit outputs
there (``[N, T, U, W]``, ``W = group_size * head_dim`` for heads, 1 for
neurons); the LRP criterion runs :func:`xprune.transformers.attnlrp`
(AttnLRP by default).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import NothingToPrune, XpruneError
from ..gates import GateSignals, GateSite
from ..units import UnitGroup, UnitKind, UnitSet, forward_order
from .adapters import AttentionSpec, attention_specs, is_conv1d, mlp_specs, spec_of
from .surgery import _check, record_sizes, remove_heads, remove_neurons

__all__ = ["HeadsKind", "NeuronsKind", "discover_heads", "discover_neurons"]


def _discover(kind, model, example_inputs, ignore, options):
    if options:
        raise XpruneError(f"unknown options for kind {kind!r}: {sorted(options)}")
    order = forward_order(model, example_inputs)
    modules = dict(model.named_modules())
    ignored = {id(m) for m in ignore}
    specs = attention_specs(model) if kind == "heads" else mlp_specs(model)
    groups = []
    for s in specs:
        if kind == "heads":
            producers, members, size = s.inputs, (*s.inputs, s.o), s.units
        else:
            producers, members, size = s.inputs, (*s.inputs, s.output), s.size
        names = (s.name, *members)
        if any(id(modules[n]) in ignored for n in names):
            continue
        if s.name not in order and members[-1] not in order:
            continue  # never called on these inputs
        groups.append(UnitGroup(s.name, kind, size, tuple(producers), tuple(members), s.name))
    groups.sort(key=lambda g: order.get(g.members[-1], 1 << 30))
    if not groups:
        what = "self-attention blocks" if kind == "heads" else "transformer MLPs"
        raise NothingToPrune(f"the model has no prunable {what} (recognised layouts: see xprune.transformers.adapters)")
    return UnitSet(kind, groups, _inputs.spec(example_inputs))


def discover_heads(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Attention heads (KV groups for grouped-query attention) of every self-attention block."""
    return _discover("heads", model, example_inputs, ignore, options)


def discover_neurons(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Intermediate neurons of every transformer MLP."""
    return _discover("neurons", model, example_inputs, ignore, options)


def _token_mask(inputs: Any) -> torch.Tensor | None:
    return _inputs.token_mask(inputs)


def _rows(module: nn.Module, idx: torch.Tensor, output: bool) -> torch.Tensor:
    """Weights of output features ``idx`` (``output=True``) or input features ``idx``, one row per feature."""
    w = module.weight.detach()  # type: ignore[operator]  # nn.Module attributes are typed Tensor | Module
    if is_conv1d(module):
        w = w.t()  # [out, in]
    return w[idx] if output else w[:, idx].t()


class _TokenSignals(GateSignals):
    """Gate-site signals of heads and neurons: padding tokens are excluded where a criterion masks them."""

    def mask_for(self, inputs):
        return _token_mask(inputs)


class _TransformerKind(UnitKind):
    default_composite = "attnlrp"

    def discover(self, model, example_inputs, *, include_output=False, ignore=(), **options):
        return _discover(self.name, model, example_inputs, ignore, options)

    def spec(self, model: nn.Module, group: UnitGroup):
        spec = spec_of(model, self.name, group.name)
        size = spec.units if isinstance(spec, AttentionSpec) else spec.size
        if size != group.size:
            raise XpruneError(f"{group.name!r} has {size} {self.name} units, the UnitSet says {group.size}")
        return spec

    def signals(self, model, units):
        return _TokenSignals(self, model, units)

    def lrp_context(self, model, composite, canonizers, **options):
        from .attnlrp import attnlrp

        return attnlrp(model, composite, canonizers, **options)

    def validate(self, model, plan, mode):
        for name, idxs in plan.remove.items():
            spec = spec_of(model, self.name, name)
            size = spec.units if self.name == "heads" else spec.size
            if size != plan.sizes[name]:
                raise XpruneError(
                    f"{name!r} has {size} {self.name} but the plan expects {plan.sizes[name]}; "
                    "the plan does not fit this model"
                )
            _check(name, idxs, size, self.name)

    def apply(self, model, plan, mode, example_inputs=None):
        # xprune.apply has run validate() on this model before any tensor changes
        remove = remove_heads if self.name == "heads" else remove_neurons
        for name, idxs in plan.remove.items():
            remove(model, spec_of(model, self.name, name), idxs, mode)
        if mode == "remove":
            record_sizes(model)


class HeadsKind(_TransformerKind):
    """Attention heads (one unit per KV group under grouped-query attention)."""

    name = "heads"

    def gate_sites(self, model, units, group, gate_at="after-norm"):
        spec = self.spec(model, group)
        return [GateSite(model.get_submodule(spec.o), group.name, -1, spec.group_size * spec.head_dim, True)]

    def subunits(self, model, group):
        return spec_of(model, "heads", group.name).group_size

    def weight_rows(self, model, group):
        """Rows of q, k, v (GPT-2: of the three thirds of ``c_attn``) and columns of the output projection."""
        spec = spec_of(model, "heads", group.name)
        modules = dict(model.named_modules())
        per_unit = []
        for u in range(group.size):
            q, kv = spec.q_index([u]), spec.kv_index([u])
            if spec.fused:
                wq, wkv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
                parts = [_rows(modules[spec.fused], torch.cat([q, wq + kv, wq + wkv + kv]), True)]
            else:
                parts = [
                    _rows(modules[spec.q], q, True),
                    _rows(modules[spec.k], kv, True),
                    _rows(modules[spec.v], kv, True),
                ]
            parts.append(_rows(modules[spec.o], q, False))
            per_unit.append(torch.cat([t.reshape(-1) for t in parts]))
        return [(group.name, torch.stack(per_unit))]


class NeuronsKind(_TransformerKind):
    """Intermediate neurons of transformer MLPs."""

    name = "neurons"

    def gate_sites(self, model, units, group, gate_at="after-norm"):
        spec = self.spec(model, group)
        return [GateSite(model.get_submodule(spec.output), group.name, -1, 1, True)]

    def weight_rows(self, model, group):
        """Rows of the input projection(s) and the column of the output projection."""
        spec = spec_of(model, "neurons", group.name)
        modules = dict(model.named_modules())
        idx = torch.arange(group.size)
        parts = [_rows(modules[n], idx, True) for n in spec.inputs] + [_rows(modules[spec.output], idx, False)]
        return [(group.name, torch.cat([t.reshape(group.size, -1) for t in parts], dim=1))]
