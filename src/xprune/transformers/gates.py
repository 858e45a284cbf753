r"""Per-unit multiplicative gates on attention heads and MLP neurons.

:func:`gates` inserts, for every group of a ``"heads"`` or ``"neurons"``
:class:`~xprune.units.UnitSet`, a vector :math:`g` of ones (a leaf tensor
with ``requires_grad=True``) that multiplies each unit's output where the
model consumes it:

- heads: the input of the output projection, :math:`o = W_o\,[g_1 a_1; \dots; g_H a_H]`
  (:math:`a_h` the output of head :math:`h`, ``[batch, tokens, head_dim]``;
  for grouped-query attention the gate of a KV group multiplies all its query heads);
- neurons: the input of the MLP's output projection (``fc2``/``down_proj``),
  :math:`y = W_2 (g \odot a)`.

With :math:`g = 1` the model computes exactly what it computed before, and

.. math:: \frac{\partial O}{\partial g_u} = \sum_{n, t, i} a_{n,t,u,i}\,\frac{\partial O}{\partial a_{n,t,u,i}},

the first-order (Taylor) estimate of what removing unit :math:`u` changes
(Molchanov et al. 2017; Michel et al., "Are sixteen heads really better than
one?", NeurIPS 2019 for heads). Setting :math:`g_u = 0` removes the unit
without touching a weight, and scaling :math:`g` from 1 to 0 is the removal
path of SInGE (Yvinec et al. 2022).

The gated activations are also kept (``Gates.captured``): the LRP criterion
reads relevance :math:`R = t \odot \partial^{\mathrm{LRP}} O / \partial t` on them.

The gates are the sites of the ``"heads"``/``"neurons"`` kinds
(:mod:`xprune.transformers.kinds`) driven by :class:`xprune.gates.Gates`:
forward pre-hooks on the consuming projections registered with
``prepend=True``, so that entered *inside* an :func:`xprune.lrp.attribution`
context the LRP rule of that projection sees the gated input. Leaving the
context removes every hook; no parameter or attribute of the model changes.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import gates as _core
from ..errors import XpruneError
from ..units import UnitSet

__all__ = ["Gates", "gates"]


class Gates(_core.Gates):
    """Context manager inserting unit gates; see :func:`gates`.

    Attributes
    ----------
    values : dict of str to Tensor
        Group name -> gate vector ``[size]`` (leaf, ``requires_grad=True``
        unless ``values`` were given). Modify in place (e.g. ``g.data[3] = 0``)
        or pass your own tensors.
    captured : dict of str to list of Tensor
        Group name -> gated activations of every forward call, shaped
        ``[batch, tokens, size, width]`` (width = ``group_size * head_dim`` for
        heads, 1 for neurons). Cleared with :meth:`clear`.
    """

    def __init__(
        self, model: nn.Module, units: UnitSet, values: Mapping[str, torch.Tensor] | None = None, capture: bool = False
    ):
        if not isinstance(units, UnitSet) or units.kind not in ("heads", "neurons"):
            raise XpruneError(
                "gates() needs a UnitSet of kind 'heads' or 'neurons' (xprune.discover(model, inputs, 'heads'))"
            )
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        vals: dict[str, torch.Tensor] = {}
        for g in units:
            v = None if values is None else values.get(g.name)
            if v is None:
                v = torch.ones(g.size, device=device, requires_grad=True)
            elif v.shape != (g.size,):
                raise XpruneError(f"gate of {g.name!r} must have shape ({g.size},), got {tuple(v.shape)}")
            vals[g.name] = v
        super().__init__(model, units, vals, capture=capture)

    def clear(self) -> None:
        for v in self.captured.values():
            v.clear()


def gates(
    model: nn.Module, units: UnitSet, values: Mapping[str, torch.Tensor] | None = None, *, capture: bool = False
) -> Gates:
    """Insert a multiplicative gate on every head / MLP neuron of ``units`` (a context manager).

    Parameters
    ----------
    model : nn.Module
        The model ``units`` were discovered on; it is not modified.
    units : UnitSet
        Of kind ``"heads"`` or ``"neurons"`` (:func:`xprune.discover`).
    values : mapping of group name to Tensor, optional
        Gate vectors to use (default: ones with ``requires_grad=True``).
    capture : bool
        Keep the gated activations of every call in ``Gates.captured``.

    Returns
    -------
    Gates
        ``with gates(model, units) as g: ...``; ``g.values[name]`` is the gate of group ``name``.

    Examples
    --------
    >>> units = xprune.discover(model, x[:1], "heads")                # doctest: +SKIP
    >>> with gates(model, units) as g:                                 # doctest: +SKIP
    ...     out = model(x)[:, 0].sum()
    ...     taylor = torch.autograd.grad(out, list(g.values.values()))  # dO/dg per head
    """
    return Gates(model, units, values, capture)
