"""The primitives LRP rules are written with: stabilised division, gradient rerouting, and :class:`LayerCall`.

A rule never runs a layer's forward itself; it asks the :class:`LayerCall` of
the call being attributed for the layer's function with modified weights, and
returns the layer's output with its gradient rerouted through the modified
terms (:func:`reroute`), so one ordinary backward pass propagates relevance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from ..layers import is_conv1d

__all__ = ["stabilize", "ratio", "reroute", "defer", "layer_function", "LayerCall", "split_terms", "apply_terms"]


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    r"""Sign-aware stabiliser of a denominator.

    .. math:: \operatorname{stab}(z) = z + \epsilon \cdot \operatorname{sign}(z),
              \quad \operatorname{sign}(0) := +1.

    (A negative zero counts as negative; it only ever divides a zero.)
    """
    return torch.copysign(torch.full_like(z, epsilon), z).add_(z)


def ratio(num: torch.Tensor, den: torch.Tensor, epsilon: float, sign: int = 0) -> torch.Tensor:
    r"""``num / stab(den)`` (detached) in few passes.

    ``sign=+1``/``-1`` declares that ``den`` is known to be non-negative /
    non-positive (e.g. the positive / negative part of alpha-beta), which
    saves the sign test: :math:`\operatorname{stab}(z) = z \pm \epsilon`.
    """
    num, den = num.detach(), den.detach()
    if sign > 0:
        d = den + epsilon
    elif sign < 0:
        d = den - epsilon
    else:
        d = stabilize(den, epsilon)
    return torch.div(num, d, out=d)


class _Reroute(torch.autograd.Function):
    """Forward: the value of ``z``. Backward: ``grad * c_k`` to each term ``z_k``.

    Called as ``_Reroute.apply(z, z_1, c_1, z_2, c_2, ...)``; ``z`` itself
    receives no gradient (unless it is also passed as a term).
    """

    @staticmethod
    def forward(ctx, z, *terms):
        coefs = terms[1::2]
        ctx.n = len(terms) // 2
        ctx.save_for_backward(*[c if isinstance(c, torch.Tensor) else torch.tensor(float(c)) for c in coefs])
        # a value without a graph of its own (the engine ran the layer without one) is used as it is; a tensor
        # with a graph is copied, so that in-place changes of the result cannot reach what its graph saved
        return z.detach() if not z.requires_grad else z.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        grads: list[torch.Tensor | None] = [None]
        for c in ctx.saved_tensors:
            grads += [grad * c, None]
        return tuple(grads)


def reroute(z: torch.Tensor, terms: Sequence[tuple[torch.Tensor, Any]]) -> torch.Tensor:
    """A tensor with the value of ``z`` whose gradient flows into ``terms``.

    Each term is ``(z_k, c_k)``: the incoming gradient is multiplied by the
    (detached) coefficient ``c_k`` and sent back through ``z_k``'s graph.
    Terms that do not require grad are dropped; without any, ``z`` is
    returned unchanged.
    """
    flat: list[Any] = []
    for zk, ck in terms:
        if isinstance(zk, torch.Tensor) and zk.requires_grad:
            flat += [zk, ck.detach() if isinstance(ck, torch.Tensor) else ck]
    if not flat:  # nothing below needs relevance (e.g. the first layer of a non-grad input)
        return z
    return _Reroute.apply(z, *flat)


class _Deferred(torch.autograd.Function):
    """Forward: the value of ``z`` (not copied). Backward: the rule's terms, computed from the saved input.

    Called as ``_Deferred.apply(z, x, terms)`` with ``terms(x, z) -> [(z_k, c_k)]``
    and ``terms.output(x) -> z``. The terms are evaluated in the backward pass
    on the layer input ``x`` (which the next layer's backward keeps anyway), so
    the forward pass stores nothing of the rule: no coefficient tensor, no
    graph of the terms. The cost is the same (each term's forward moves from
    the forward pass to the backward pass). If the layer's output was changed
    in place after the layer, its value is recomputed from ``x``.
    """

    @staticmethod
    def forward(ctx, z, x, terms):
        ctx.save_for_backward(x)
        ctx.z, ctx.version, ctx.terms = z, z._version, terms
        return z.detach()

    @staticmethod
    def backward(ctx, grad):
        if ctx.terms is None:
            raise XpruneError(
                "LRP terms computed in the backward pass support one backward pass through the graph; "
                "pass defer=False to xprune.lrp.attribution to backpropagate twice"
            )
        (x,) = ctx.saved_tensors
        terms, z = ctx.terms, ctx.z
        ctx.terms = ctx.z = None  # released as soon as the layer is done (the memory the deferral saves)
        with torch.enable_grad():
            xd = x.detach().requires_grad_(True)
            with torch.no_grad():
                z = z if z._version == ctx.version else terms.output(xd)
            outs, seeds = [], []
            for zk, ck in terms(xd, z):
                if zk is not None and zk.requires_grad:
                    outs.append(zk)
                    seeds.append(grad * ck)
            gx = torch.autograd.grad(outs, xd, seeds, allow_unused=True)[0] if outs else None
        return None, gx, None


def defer(z: torch.Tensor, x: torch.Tensor, terms: Any) -> torch.Tensor:
    """A tensor with the value of ``z`` whose gradient flows into terms computed in the backward pass.

    ``terms(x, z)`` returns ``[(z_k, c_k)]`` as for :func:`reroute` (``z_k`` computed
    from the given ``x``, ``c_k`` detached); ``terms.output(x)`` recomputes ``z``.
    """
    return _Deferred.apply(z, x, terms)


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PARAMETRIC = (nn.Linear, *_CONV)


def _conv1d_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # Hugging Face Conv1D: x @ weight + bias with weight [in, out] (its forward: torch.addmm(bias, x, weight))
    return F.linear(x, weight.t(), bias)


def layer_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The linear map of a Linear/Conv module (or a Hugging Face ``Conv1D``) as ``f(x, weight, bias)``."""
    if isinstance(module, nn.Linear):
        return F.linear
    if is_conv1d(module):
        return _conv1d_linear
    if isinstance(module, _CONV):
        return module._conv_forward
    raise XpruneError(
        f"LRP rules with modified weights support nn.Linear and nn.Conv1d/2d/3d; got {type(module).__name__}"
    )


@dataclass
class LayerCall:
    """What a rule sees of one call of its module.

    Attributes
    ----------
    module, name:
        The module and its qualified name in the model.
    inputs:
        The positional tensor inputs of the call (before any in-place change).
    output:
        The module's output value; for a layer whose BatchNorm is merged by
        :class:`~xprune.lrp.MergeBatchNorm` this is the BatchNorm's output.
    weight, bias:
        Effective (BatchNorm-merged, detached) parameters, or ``None``.
    engine:
        The :class:`~xprune.lrp.Attribution` running the call (weight leaves,
        carriers).
    op:
        The layer's map ``op(x, weight, bias)`` when it is not the base
        class's (a module with its own forward: the functional call seen in
        that forward, see :mod:`xprune.lrp.ops`); ``inputs`` are then that
        call's inputs (e.g. after padding inside the forward).
    params:
        ``params() -> (weight, bias)``: the effective parameters computed
        again (BatchNorm merged), for rules that need them after the forward
        pass without keeping a copy; ``None``: ``weight`` and ``bias`` are views
        of the module's own tensors.
    """

    module: nn.Module
    name: str
    inputs: tuple
    output: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    engine: Any = field(repr=False, default=None)
    op: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor] | None = field(
        repr=False, default=None
    )
    params: Callable[[], tuple] | None = field(repr=False, default=None)

    @property
    def input(self) -> torch.Tensor:
        return self.inputs[0]

    def fn(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The module's linear map with replaced parameters."""
        if self.op is not None:
            return self.op(x, weight, bias)
        return layer_function(self.module)(x, weight, bias)

    def bias_like(self, bias: torch.Tensor) -> torch.Tensor:
        """``bias`` broadcastable against the output (channels on dim 1 for convs)."""
        if isinstance(self.module, _CONV):
            return bias.view(1, -1, *([1] * (self.output.dim() - 2)))
        return bias

    @property
    def deferrable(self) -> bool:
        """Whether the rule may compute its terms in the backward pass (:func:`defer`).

        True inside an :class:`~xprune.lrp.Attribution` when relevance flows into
        the input and no weight relevance is recorded for this layer.
        """
        x = self.inputs[0] if self.inputs else None
        return (
            self.engine is not None
            and getattr(self.engine, "defer", False)
            and torch.is_grad_enabled()
            and isinstance(x, torch.Tensor)
            and x.requires_grad
            and not self.weight_mode
        )

    @property
    def weight_mode(self) -> bool:
        """Whether this call records weight leaves (weight relevance requested for this layer)."""
        return self.engine is not None and self.weight is not None and self.engine._weight_mode(self.name)

    def leaf(self, weight: torch.Tensor) -> torch.Tensor:
        """A modified weight to use in a term (a recorded leaf when weight relevance is on)."""
        if self.engine is None:
            return weight
        return self.engine._weight_leaf(self.name, weight)

    def carrier(self, value: torch.Tensor) -> torch.Tensor:
        """A leaf tensor that carries input relevance (flat, w-square, z-box)."""
        if self.engine is None:
            raise XpruneError("carrier rules need an Attribution context")
        return self.engine._carrier(self, value)

    def require_params(self, rule: Any) -> torch.Tensor:
        """The weight of a linear or conv layer, for ``rule`` (anything with a ``name``) that needs one; else refuse."""
        if self.weight is None or not isinstance(self.module, _PARAMETRIC):
            raise XpruneError(
                f"rule {rule.name!r} needs a nn.Linear or nn.Conv1d/2d/3d module; "
                f"{self.name!r} is {type(self.module).__name__}"
            )
        return self.weight


# ----------------------------------------------------------------------------- terms of the sign-split rules


def split_terms(call: LayerCall, w_pos, w_neg, b_pos, b_neg, need_neg: bool = True, x=None):
    """The two forward terms of the sign-split rules.

    ``zp = f(x+, w_pos, b_pos) + f(x-, w_neg)`` (positive contributions) and
    ``zn = f(x+, w_neg, b_neg) + f(x-, w_pos)`` (negative contributions).
    When the input is non-negative (after a ReLU) the ``x-`` parts vanish and
    are skipped. ``need_neg=False`` skips ``zn`` (returned as ``None``).
    ``x`` defaults to the call's input.
    """
    x = call.input if x is None else x
    nonneg = x.numel() == 0 or bool(x.detach().min() >= 0)
    if nonneg:
        zp = call.fn(x, call.leaf(w_pos), b_pos)
        zn = call.fn(x, call.leaf(w_neg), b_neg) if need_neg else None
        return zp, zn
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    zp = call.fn(xp, call.leaf(w_pos), b_pos) + call.fn(xn, call.leaf(w_neg), None)
    zn = None
    if need_neg:
        zn = call.fn(xp, call.leaf(w_neg), b_neg) + call.fn(xn, call.leaf(w_pos), None)
    return zp, zn


class _Terms:
    """The terms of a sign-split rule for one call, evaluated in the backward pass (see :func:`~.calls.defer`).

    Keeps no modified weights: they are derived again from the layer's
    effective parameters when the backward pass reaches the layer.
    """

    def __init__(self, make, weights, call: LayerCall):
        self.make, self.weights, self.fn = make, weights, call.fn
        if call.params is not None:
            self.params = call.params
        else:
            w, b = call.weight, call.bias
            self.params = lambda: (w, b)
        self.call = LayerCall(call.module, call.name, (), call.output, None, None, None, op=call.op)

    def __call__(self, x, z):
        return self.make(self.call, x, z.detach(), *self.weights(*self.params()))

    def output(self, x):  # the layer's value, when it was changed in place after the layer
        return self.fn(x, *self.params())


def apply_terms(call: LayerCall, make, weights) -> torch.Tensor:
    """A rule's terms in the forward pass (weight relevance, inputs without graph) or deferred to the backward.

    ``weights(w, b)`` gives the modified parameters, ``make(call, x, z, *modified)`` the terms.
    """
    if call.deferrable:
        return defer(call.output, call.input, _Terms(make, weights, call))
    return reroute(call.output, make(call, call.input, call.output.detach(), *weights(call.weight, call.bias)))
