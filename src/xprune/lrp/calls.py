"""The primitives LRP rules are written with: stabilised division, gradient rerouting, and :class:`LayerCall`.

A rule never runs a layer's forward itself; it asks the :class:`LayerCall` of
the call being attributed for the layer's function with modified weights, and
returns the layer's output with its gradient rerouted through the modified
terms (:func:`reroute`), so one ordinary backward pass propagates relevance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError

__all__ = ["stabilize", "ratio", "reroute", "layer_function", "LayerCall"]


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
        return z.detach().clone()

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


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PARAMETRIC = (nn.Linear, *_CONV)


def layer_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The linear map of a Linear/Conv module as ``f(x, weight, bias)``."""
    if isinstance(module, nn.Linear):
        return F.linear
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
    """

    module: nn.Module
    name: str
    inputs: tuple
    output: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    engine: Any = field(repr=False, default=None)

    @property
    def input(self) -> torch.Tensor:
        return self.inputs[0]

    def fn(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The module's linear map with replaced parameters."""
        return layer_function(self.module)(x, weight, bias)

    def bias_like(self, bias: torch.Tensor) -> torch.Tensor:
        """``bias`` broadcastable against the output (channels on dim 1 for convs)."""
        if isinstance(self.module, _CONV):
            return bias.view(1, -1, *([1] * (self.output.dim() - 2)))
        return bias

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

    def require_params(self, rule: Any) -> None:
        """Refuse a rule (anything with a ``name``) that needs the weights of a linear or conv layer."""
        if self.weight is None or not isinstance(self.module, _PARAMETRIC):
            raise XpruneError(
                f"rule {rule.name!r} needs a nn.Linear or nn.Conv1d/2d/3d module; "
                f"{self.name!r} is {type(self.module).__name__}"
            )
