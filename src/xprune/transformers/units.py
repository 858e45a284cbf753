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
"""

from __future__ import annotations

from ..errors import NothingToPrune
from ..units import UnitGroup, UnitSet, forward_order, register_kind
from .. import _inputs
from .adapters import attention_specs, mlp_specs


def _discover(kind, model, example_inputs, ignore, options):
    if options:
        from ..errors import XpruneError

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


@register_kind("heads")
def discover_heads(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Attention heads (KV groups for grouped-query attention) of every self-attention block."""
    return _discover("heads", model, example_inputs, ignore, options)


@register_kind("neurons")
def discover_neurons(model, example_inputs, *, include_output=False, ignore=(), **options) -> UnitSet:
    """Intermediate neurons of every transformer MLP."""
    return _discover("neurons", model, example_inputs, ignore, options)
