r"""AttnLRP and CP-LRP: LRP rules for attention, norms and gated MLPs.

All rules follow the engine's gradient x input convention (see
:mod:`xprune.lrp.rules`): the relevance of a tensor :math:`t` is
:math:`R(t) = t \odot g(t)` with :math:`g` the modified gradient, and one
ordinary backward pass propagates relevance through the whole model.

AttnLRP (Achtibat et al., "AttnLRP: Attention-aware layer-wise relevance
propagation for transformers", ICML 2024)
--------------------------------------------------------------------------
- **softmax** :math:`s = \mathrm{softmax}(x)`: the Taylor decomposition at
  :math:`x` (bias absorbed),

  .. math:: R^{in}_i = x_i \Big(R^{out}_i - s_i \sum_j R^{out}_j\Big),

  which is exactly :math:`x \odot (J_s^\top g)`: the plain gradient, so the
  rule :class:`Softmax` leaves the softmax untouched. It is *not*
  conservative: :math:`\sum_i R^{in}_i = \sum_i x_i R^{out}_i - (\sum_i x_i s_i) \sum_j R^{out}_j`;
  the difference to :math:`\sum_j R^{out}_j` is the relevance absorbed by the bias
  of the linearisation (the conservation test accounts for it exactly).
- **bilinear products** (:math:`q k^\top`, attention :math:`\cdot\, v`, and the
  element-wise product of a gated MLP): the *uniform* rule splits the
  relevance of every product term equally between its two factors, and the
  sum over the contracted index gets the epsilon rule:

  .. math:: R_{a_{ij}} = \sum_k \frac{1}{2}\, \frac{a_{ij} b_{jk}}{\operatorname{stab}(z_{ik})} R_{z_{ik}},
            \qquad z = a b.

  In gradient form: the gradient arriving at :math:`z` is multiplied by
  :math:`\frac{1}{2} z / \operatorname{stab}(z)` (:class:`UniformProduct`).
  When only one factor carries relevance (CP-LRP's constant attention) it gets all of it.
- **LayerNorm** :math:`y = w \odot (x - \mu)/\sigma + b`: identity rule on the
  division by :math:`\sigma` (no relevance through the normalising statistic):
  :math:`\sigma` is detached, the centring stays a linear map
  (:class:`~xprune.lrp.rules.LayerNormRule`, applied inside the module's
  forward, so channels-first and hand-written LayerNorms are handled too).
  **RMSNorm** :math:`y = w \odot x / \mathrm{rms}(x)` with the statistic
  detached is an element-wise linear map, i.e. the identity
  (:class:`~xprune.lrp.rules.Pass`) rule.
- **element-wise activations** (GELU, SiLU, the Hugging Face activation
  modules): identity rule :math:`R^{in} = R^{out}` (Pass).
- **linear layers**: epsilon (default) or gamma.

CP-LRP (Ali et al., "XAI for transformers: better explanations through
conservative propagation", ICML 2022)
--------------------------------------------------------------------------
The attention probabilities are treated as constants: no relevance flows
through the softmax, hence none into :math:`q` and :math:`k`; the attention
product passes all its relevance to the values. With LayerNorm's identity
rule, epsilon -> 0 and no biases, relevance is conserved through the whole
network.

Usage
-----
``composite("attnlrp")`` / ``composite("cp-lrp")`` give these rules for any
model whose attention is made of modules (xprune's ViT: ``MatMul`` and
``nn.Softmax``). Hugging Face models compute attention in a function; the
context manager :func:`xprune.transformers.attnlrp` additionally switches their
``attn_implementation`` to a registered function applying the same rules
(``AttentionInterface.register``), and halves the gradient at both factors of
a gated MLP's product; on exit the model is exactly as before.

The relevance of a *head* read by PXP on the attention probabilities
(Hatefi et al. 2024: :math:`\sum_{t} |\sum_{k} R_{A_{tk}}|`) equals, under
the uniform rule, half of the relevance of the head's output summed over
its width (:math:`\sum_{t} |\sum_i R_{o_{ti}}| / 2`): every term
:math:`A_{tk} v_{ki}` gives half its relevance to :math:`A_{tk}`. xprune reads
head relevance on the head output (see :mod:`xprune.transformers.kinds`), which
also works for CP-LRP, where the probabilities receive none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError
from ..layers import MatMul, is_conv1d
from .composites import Composite, _pairs
from .rules import Epsilon, Gamma, LayerCall, LayerNormRule, Pass, Rule, make_rule, reroute, stabilize

__all__ = ["UniformProduct", "Softmax", "LayerNormRule", "AttentionComposite", "uniform_product"]


# ----------------------------------------------------------------------------- rules


class _StabilizedLater(torch.autograd.Function):
    """Forward: ``z`` (not copied). Backward: the gradient times ``scale * z / stab(z)``, ``z`` recomputed.

    ``recompute()`` gives ``z`` again from the factors, which the product's own
    backward keeps anyway: no coefficient tensor is stored (for attention
    scores one ``[B, H, T, T]`` tensor per layer).
    """

    @staticmethod
    def forward(ctx, z, recompute, epsilon, scale):
        ctx.recompute, ctx.epsilon, ctx.scale = recompute, epsilon, scale
        return z.detach()

    @staticmethod
    def backward(ctx, grad):
        with torch.no_grad():
            z = ctx.recompute()
            return grad * (z / stabilize(z, ctx.epsilon)).mul_(ctx.scale), None, None, None


def uniform_product(
    z: torch.Tensor,
    factors: Sequence[torch.Tensor],
    epsilon: float = 1e-6,
    recompute: Callable[[], torch.Tensor] | None = None,
) -> torch.Tensor:
    r"""Uniform rule on a product ``z`` of ``factors``: gradient at ``z`` times :math:`z/(n\,\operatorname{stab}(z))`.

    :math:`n` is the number of factors that carry relevance (require grad);
    with :math:`n = 0` ``z`` is returned unchanged. ``recompute()``, if given,
    computes ``z`` again from the factors: the coefficient is then formed in
    the backward pass instead of being stored (same result, less memory).
    With ``epsilon=0`` the coefficient is the constant :math:`1/n`.
    """
    n = sum(1 for f in factors if isinstance(f, torch.Tensor) and f.requires_grad)
    if n == 0 or not z.requires_grad:
        return z
    if not epsilon:
        return reroute(z, [(z, 1.0 / n)])
    if recompute is not None:
        return _StabilizedLater.apply(z, recompute, float(epsilon), 1.0 / n)
    zd = z.detach()
    return reroute(z, [(z, zd / stabilize(zd, epsilon) / n)])


class UniformProduct(Rule):
    r"""Uniform-epsilon rule for bilinear modules (``MatMul``: :math:`q k^\top`, :math:`A v`).

    .. math:: R_{a_{ij}} = \sum_k \frac{1}{n}\frac{a_{ij} b_{jk}}{\operatorname{stab}_\epsilon(z_{ik})} R_{z_{ik}}

    with :math:`n` the number of inputs carrying relevance (2, or 1 when the
    other is a constant). Achtibat et al. (2024), uniform rule; the epsilon
    stabilises the sum over :math:`j`.
    """

    name = "uniform"

    def __init__(self, epsilon: float = 1e-6):
        self.epsilon = float(epsilon)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        factors = [t for t in call.inputs if isinstance(t, torch.Tensor)]
        recompute = None
        if type(call.module) is MatMul and len(factors) == 2:  # its forward is torch.matmul
            a, b = (f.detach() for f in factors)
            recompute = functools.partial(torch.matmul, a, b)
        return uniform_product(call.output, factors, self.epsilon, recompute)


class Softmax(Rule):
    r"""Softmax rule: AttnLRP (``variant="attnlrp"``) or CP-LRP (``"cp"``).

    AttnLRP: :math:`R^{in}_i = x_i (R^{out}_i - s_i \sum_j R^{out}_j)`, which
    in gradient form is the plain gradient (the module is left as it is).
    CP-LRP: the output is detached (constant attention, no relevance to the input).
    """

    name = "softmax"

    def __init__(self, variant: str = "attnlrp"):
        if variant not in ("attnlrp", "cp"):
            raise XpruneError(f"softmax variant must be 'attnlrp' or 'cp', got {variant!r}")
        self.variant = variant

    def __call__(self, call: LayerCall) -> torch.Tensor:
        return call.output.detach() if self.variant == "cp" else call.output


# ----------------------------------------------------------------------------- composite


def _is_rmsnorm(m: nn.Module) -> bool:
    return type(m).__name__.endswith("RMSNorm") and hasattr(m, "weight")


def _is_hf_activation(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformers.activations")


class AttentionComposite(Composite):
    """The AttnLRP / CP-LRP composite (see the module docstring).

    Parameters
    ----------
    attention : {"attnlrp", "cp"}
        Softmax rule: AttnLRP, or CP-LRP (constant attention).
    linear : rule spec
        Rule of Linear layers (and GPT-2's Conv1D, patch-embedding convs):
        ``"epsilon"`` (default) or e.g. ``("gamma", {"gamma": 0.25})``.
    epsilon : float
        Epsilon of the linear epsilon rule and of the uniform product rule.
    layer_map, name_map :
        Extra rules by type / by name (take precedence).
    """

    def __init__(
        self,
        attention: str = "attnlrp",
        linear: Any = None,
        epsilon: float = 1e-6,
        stabilizer: float = 1e-6,
        layer_map: Any = None,
        name_map: Any = None,
    ):
        if attention not in ("attnlrp", "cp"):
            raise XpruneError(f"attention must be 'attnlrp' or 'cp', got {attention!r}")
        self.attention = attention
        self.epsilon = float(epsilon)
        self.linear_rule = make_rule(linear) if linear is not None else Epsilon(epsilon)
        super().__init__(
            [
                *_pairs(layer_map),
                ((MatMul,), UniformProduct(epsilon)),
                ((nn.Softmax,), Softmax(attention)),
                ((nn.LayerNorm,), LayerNormRule()),
                ("dense", self.linear_rule),
            ],
            name_map,
            stabilizer=stabilizer,
            name="attnlrp" if attention == "attnlrp" else "cp-lrp",
        )

    def assign(self, model: nn.Module) -> dict[str, Rule]:
        rules = super().assign(model)
        for name, m in model.named_modules():
            if name in rules or name in self.name_map:
                continue
            if is_conv1d(m):
                rule = Epsilon(self.epsilon) if isinstance(self.linear_rule, Gamma) else self.linear_rule
                if rule is not None:
                    rules[name] = rule
            elif _is_rmsnorm(m) or _is_hf_activation(m):
                rules[name] = Pass()
        return rules


def preset_attnlrp(epsilon=1e-6, linear=None, stabilizer=1e-6, layer_map=None, name_map=None):
    return AttentionComposite("attnlrp", linear, epsilon, stabilizer, layer_map, name_map)


def preset_cp_lrp(epsilon=1e-6, linear=None, stabilizer=1e-6, layer_map=None, name_map=None):
    return AttentionComposite("cp", linear, epsilon, stabilizer, layer_map, name_map)
