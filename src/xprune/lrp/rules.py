r"""LRP rules in the gradient x input formulation.

Every rule is a small, stateless object attached to a module by a
:class:`~xprune.lrp.Composite`. During the forward pass of an attributed model
the rule receives one :class:`LayerCall` (the module, its input, its output and
its effective parameters) and returns a tensor that has *exactly the value of
the module's output* but a modified backward pass. One ordinary backward pass
through the whole model then yields the *modified gradient* :math:`g` at every
tensor, and the LRP relevance of a tensor :math:`t` is

.. math::  R(t) = t \odot g(t).

Relevance conservation and the rules of Bach et al. (2015) and Montavon et al.
(2019) follow from writing each rule as

.. math::

    R_j = \sum_k c_k \, x_j \frac{\partial z^{(k)}_i}{\partial x_j} \frac{R_i}{\operatorname{stab}(\zeta^{(k)}_i)}

for one or a few *modified forward terms* :math:`z^{(k)}` (the layer applied
to clamped inputs and/or weights). Because :math:`R_i = z_i g_i` for the true
output :math:`z`, the gradient arriving at the term is
:math:`g_i \, c_k z_i / \operatorname{stab}(\zeta^{(k)}_i)`. A rule therefore
only computes its modified terms once during the forward pass (one extra
forward per term, usually one or two; zero for epsilon) and backward is a
plain autograd pass through them - unlike implementations that re-run the
layer inside a backward hook.

Rules whose input relevance is *not* of the form input x gradient (flat,
w-square, z-box) route the relevance through *carrier* tensors (a tensor of
ones, or the box bounds); they must sit on a layer that receives the model
input directly (the first layer), which is where they are meant to be used.

References
----------
- S. Bach et al., "On pixel-wise explanations for non-linear classifier
  decisions by layer-wise relevance propagation", PLoS ONE 10(7), 2015.
- G. Montavon et al., "Explaining nonlinear classification decisions with deep
  Taylor decomposition", Pattern Recognition 65, 2017.
- G. Montavon et al., "Layer-wise relevance propagation: an overview", in
  Explainable AI, LNCS 11700, 2019.
- S. Lapuschkin et al., "Unmasking Clever Hans predictors and assessing what
  machines really learn", Nature Communications 10, 2019 (flat rule).
- R. Achtibat et al., "AttnLRP: attention-aware layer-wise relevance
  propagation for transformers", ICML 2024 (gradient x input formulation,
  identity rule).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import XpruneError
from .calls import LayerCall, apply_terms, ratio, reroute, split_terms, stabilize

__all__ = [
    "LayerCall",
    "Rule",
    "Gradient",
    "Epsilon",
    "ZPlus",
    "AlphaBeta",
    "Gamma",
    "Flat",
    "WSquare",
    "ZBox",
    "Pass",
    "Gate",
    "LayerNormRule",
    "Norm",
    "RULES",
    "make_rule",
    "stabilize",
]


# ----------------------------------------------------------------------------- rules


class Rule:
    """Base class of LRP rules.

    A rule maps one :class:`LayerCall` to a replacement output: same value,
    modified backward. Subclasses set ``name`` and implement :meth:`__call__`.
    Rules hold only their hyper-parameters, so one instance may serve many
    modules. This is the seam for new layer types (e.g. AttnLRP's softmax and
    bilinear-matmul rules): write a Rule, map the module type to it in a
    :class:`~xprune.lrp.Composite`.
    """

    name: ClassVar[str] = "rule"
    #: ``"statistics"``: applied inside the module's forward (see :mod:`xprune.lrp.ops`), not on its output
    intercept: ClassVar[str | None] = None
    #: whether the rule sends gradient through the graph of the module's own output (False: only through
    #: terms it computes itself, so the engine runs the module's forward without building a graph)
    output_graph: ClassVar[bool] = True

    def uses_output_graph(self, module: nn.Module) -> bool:
        """Whether the rule routes gradient through ``module``'s own output graph (see :attr:`output_graph`)."""
        return self.output_graph

    def __call__(self, call: LayerCall) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))


class Gradient(Rule):
    r"""The plain gradient: :math:`R_j = x_j \partial f / \partial x_j \cdot g`.

    For max pooling this *is* the winner-take-all rule (the whole relevance of
    a window goes to its maximum), for ReLU the identity rule, and on a linear
    layer without bias LRP-0 (Bach et al. 2015). Modules without any rule
    behave like this.
    """

    name = "gradient"

    def __call__(self, call: LayerCall) -> torch.Tensor:
        if call.weight_mode:
            assert call.weight is not None  # weight_mode implies a weight
            term = call.fn(call.input, call.leaf(call.weight), call.bias)
            return reroute(call.output, [(term, 1.0)])
        return call.output


class Epsilon(Rule):
    r"""LRP-epsilon (Bach et al. 2015; Montavon et al. 2019).

    .. math:: R_j = \sum_i \frac{x_j w_{ij}}{\operatorname{stab}_\epsilon(z_i)} R_i,
              \qquad z_i = \sum_j x_j w_{ij} + b_i.

    In gradient form the output gradient is scaled by
    :math:`z_i/\operatorname{stab}_\epsilon(z_i)` and then follows the plain
    gradient: no extra forward pass. ``epsilon=0`` is LRP-0 (exactly the
    gradient). On a parameter-free module it is the :class:`Norm` rule with
    this epsilon.

    Parameters
    ----------
    epsilon : float
        Stabiliser added to the denominator with the sign of :math:`z`.
    zero_bias : bool
        Use :math:`z - b` in the denominator (bias ignored).
    """

    name = "epsilon"

    def __init__(self, epsilon: float = 1e-6, zero_bias: bool = False):
        self.epsilon = float(epsilon)
        self.zero_bias = bool(zero_bias)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        z = call.output
        zd = z.detach()
        denom = zd
        if self.zero_bias and call.bias is not None:
            denom = zd - call.bias_like(call.bias)
        if call.weight_mode:
            assert call.weight is not None  # weight_mode implies a weight
            term = call.fn(call.input, call.leaf(call.weight), call.bias)
        else:
            term = z
        if self.epsilon == 0 and denom is zd:
            return z if term is z else reroute(z, [(term, 1.0)])
        return reroute(z, [(term, ratio(zd, denom, self.epsilon))])


class AlphaBeta(Rule):
    r"""LRP-alpha-beta (Bach et al. 2015), with :math:`\alpha - \beta = 1`.

    .. math:: R_j = \sum_i \Big(\alpha \frac{(x_j w_{ij})^+}{\operatorname{stab}(z_i^+)}
              - \beta \frac{(x_j w_{ij})^-}{\operatorname{stab}(z_i^-)}\Big) R_i

    with :math:`z_i^\pm = \sum_j (x_j w_{ij})^\pm + b_i^\pm`. The positive part
    :math:`(x w)^+ = x^+ w^+ + x^- w^-` and the negative part
    :math:`x^+ w^- + x^- w^+` allow inputs of either sign. Cost: one extra
    forward per part (two when the input has negative values).

    Parameters
    ----------
    alpha, beta : float
        Non-negative weights of the positive/negative parts, ``alpha - beta == 1``.
    stabilizer : float
        Epsilon of the sign-aware stabiliser.
    zero_bias : bool
        Drop the bias from the terms.
    """

    name = "alpha-beta"
    output_graph = False

    def __init__(self, alpha: float = 2.0, beta: float = 1.0, stabilizer: float = 1e-6, zero_bias: bool = False):
        if alpha < 0 or beta < 0:
            raise XpruneError(f"alpha-beta rule needs alpha, beta >= 0; got alpha={alpha}, beta={beta}")
        if abs(alpha - beta - 1.0) > 1e-12:
            raise XpruneError(f"alpha-beta rule needs alpha - beta = 1 (conservation); got alpha={alpha}, beta={beta}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.stabilizer = float(stabilizer)
        self.zero_bias = bool(zero_bias)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        call.require_params(self)
        return apply_terms(call, self._terms, self._weights)

    def _weights(self, w, b):
        b = None if self.zero_bias else b
        return (
            w.clamp(min=0),
            w.clamp(max=0),
            None if b is None else b.clamp(min=0),
            None if b is None else b.clamp(max=0),
        )

    def _terms(self, call, x, zd, w_pos, w_neg, b_pos, b_neg):
        zp, zn = split_terms(call, w_pos, w_neg, b_pos, b_neg, need_neg=self.beta != 0, x=x)
        # z+ >= 0 and z- <= 0 by construction: known signs, cheaper stabiliser
        cp = ratio(zd, zp, self.stabilizer, sign=+1)
        terms = [(zp, cp if self.alpha == 1 else cp.mul_(self.alpha))]
        if zn is not None:
            terms.append((zn, ratio(zd, zn, self.stabilizer, sign=-1).mul_(-self.beta)))
        return terms


class ZPlus(AlphaBeta):
    r"""LRP-z+ (Montavon et al. 2017): alpha-beta with :math:`\alpha=1, \beta=0`.

    .. math:: R_j = \sum_i \frac{(x_j w_{ij})^+}{\operatorname{stab}(\sum_j (x_j w_{ij})^+ + b_i^+)} R_i

    For non-negative inputs (after ReLU) this is the rule with weights clamped
    to :math:`w \ge 0` used by Yeom et al. (2021). One extra forward pass.
    """

    name = "zplus"

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        super().__init__(alpha=1.0, beta=0.0, stabilizer=stabilizer, zero_bias=zero_bias)

    def _params(self):
        return {"stabilizer": self.stabilizer, "zero_bias": self.zero_bias}


class Gamma(Rule):
    r"""Generalised LRP-gamma (Montavon et al. 2019; Andeol et al. 2021).

    Weights are boosted towards the sign of the output: with
    :math:`w^{\gamma\pm} = w + \gamma w^\pm`,

    .. math:: R_j = \sum_i \Big( [z_i > 0] \frac{x_j^+ w^{\gamma+}_{ij} + x_j^- w^{\gamma-}_{ij}}
              {\operatorname{stab}(\zeta^+_i)} + [z_i < 0]
              \frac{x_j^+ w^{\gamma-}_{ij} + x_j^- w^{\gamma+}_{ij}}{\operatorname{stab}(\zeta^-_i)} \Big) R_i

    where :math:`\zeta^\pm` are the corresponding sums (with biases
    :math:`b + \gamma b^\pm` on the :math:`x^+` part). Equals the original
    gamma rule for non-negative inputs; ``gamma=0`` is LRP-0.

    Parameters
    ----------
    gamma : float
        Boost of the same-sign weights.
    stabilizer : float
        Epsilon of the sign-aware stabiliser.
    zero_bias : bool
        Drop the bias from the terms.
    """

    name = "gamma"
    output_graph = False

    def __init__(self, gamma: float = 0.25, stabilizer: float = 1e-6, zero_bias: bool = False):
        if gamma < 0:
            raise XpruneError(f"gamma rule needs gamma >= 0; got {gamma}")
        self.gamma = float(gamma)
        self.stabilizer = float(stabilizer)
        self.zero_bias = bool(zero_bias)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        call.require_params(self)
        return apply_terms(call, self._terms, self._weights)

    def _weights(self, w, b):
        b, g = (None if self.zero_bias else b), self.gamma
        w_pos, w_neg = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        b_pos = None if b is None else b + g * b.clamp(min=0)
        b_neg = None if b is None else b + g * b.clamp(max=0)
        return w_pos, w_neg, b_pos, b_neg

    def _terms(self, call, x, zd, w_pos, w_neg, b_pos, b_neg):
        zp, zn = split_terms(call, w_pos, w_neg, b_pos, b_neg, x=x)
        cp = ratio(zd.clamp(min=0), zp, self.stabilizer)  # [z > 0] z / stab(zeta+)
        cn = ratio(zd.clamp(max=0), zn, self.stabilizer)
        return [(zp, cp), (zn, cn)]


class Flat(Rule):
    r"""LRP-flat (Lapuschkin et al. 2019): relevance spread uniformly over each receptive field.

    .. math:: R_j = \sum_i \frac{1}{\operatorname{stab}(\sum_{j'} 1)} R_i
              \quad (j, j' \text{ in the receptive field of } i)

    Input relevance is carried by a tensor of ones; use on the first layer.
    """

    name = "flat"
    output_graph = False

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        weight = call.require_params(self)
        ones = call.carrier(torch.ones_like(call.input))
        zf = call.fn(ones, torch.ones_like(weight), None)
        return reroute(call.output, [(zf, ratio(call.output, zf, self.stabilizer, sign=+1))])


class WSquare(Rule):
    r"""LRP-:math:`w^2` (Montavon et al. 2017), for unbounded first-layer inputs.

    .. math:: R_j = \sum_i \frac{w_{ij}^2}{\operatorname{stab}(\sum_{j'} w_{ij'}^2 + b_i^2)} R_i

    Input relevance is carried by a tensor of ones; use on the first layer.
    """

    name = "w-square"
    output_graph = False

    def __init__(self, stabilizer: float = 1e-6, zero_bias: bool = False):
        self.stabilizer = float(stabilizer)
        self.zero_bias = bool(zero_bias)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        weight = call.require_params(self)
        ones = call.carrier(torch.ones_like(call.input))
        b = None if (self.zero_bias or call.bias is None) else call.bias**2
        zw = call.fn(ones, call.leaf(weight**2), b)
        return reroute(call.output, [(zw, ratio(call.output, zw, self.stabilizer))])


class ZBox(Rule):
    r"""LRP-:math:`z^\mathcal{B}` (Montavon et al. 2017) for inputs bounded by ``[low, high]``.

    .. math:: R_j = \sum_i \frac{x_j w_{ij} - l_j w_{ij}^+ - h_j w_{ij}^-}
              {\operatorname{stab}(\sum_{j'} x_{j'} w_{ij'} - l_{j'} w_{ij'}^+ - h_{j'} w_{ij'}^-)} R_i

    ``low``/``high`` are scalars or tensors broadcastable to the input (e.g.
    per-channel bounds of normalised images, shape ``[1, C, 1, 1]``). The
    bound terms are carried by leaf tensors; use on the first layer.
    """

    name = "z-box"
    output_graph = False

    def __init__(self, low: float | torch.Tensor, high: float | torch.Tensor, stabilizer: float = 1e-6):
        self.low = low
        self.high = high
        self.stabilizer = float(stabilizer)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        w = call.require_params(self)
        x, b = call.input, call.bias
        low = call.carrier(torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand_as(x))
        high = call.carrier(torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand_as(x))
        w_pos, w_neg = call.leaf(w.clamp(min=0)), call.leaf(w.clamp(max=0))
        b_pos = None if b is None else b.clamp(min=0)
        b_neg = None if b is None else b.clamp(max=0)
        zb = call.fn(x, call.leaf(w), b) - call.fn(low, w_pos, b_pos) - call.fn(high, w_neg, b_neg)
        return reroute(call.output, [(zb, ratio(call.output, zb, self.stabilizer))])


class Pass(Rule):
    r"""Identity (pass) rule for element-wise modules: :math:`R_{in} = R_{out}`.

    In gradient form the gradient is replaced by :math:`y/x` (0 where
    :math:`x = 0`), so that :math:`x \cdot g_{in} = y \cdot g_{out}` (the
    identity rule of AttnLRP, Achtibat et al. 2024). For ReLU and LeakyReLU
    this is the plain gradient, which is used directly.
    """

    name = "pass"
    _GRADIENT_EQUIVALENT = (nn.ReLU, nn.LeakyReLU, nn.Identity, nn.Dropout)

    def uses_output_graph(self, module: nn.Module) -> bool:
        return isinstance(module, self._GRADIENT_EQUIVALENT)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        y = call.output
        x = call.input
        if isinstance(call.module, self._GRADIENT_EQUIVALENT) or not (isinstance(x, torch.Tensor) and x.requires_grad):
            return y
        if x.shape != y.shape:
            raise XpruneError(
                f"pass rule needs an element-wise module (output shape = input shape); "
                f"{call.name!r} maps {tuple(x.shape)} to {tuple(y.shape)}"
            )
        # y / x, 0 where it is not finite (x = 0, or so small that the quotient overflows: e.g. a sigmoid
        # whose input underflowed); there the relevance is absorbed instead of turning into Inf/NaN
        ratio = torch.nan_to_num(y.detach() / x.detach(), nan=0.0, posinf=0.0, neginf=0.0)
        return reroute(y, [(x, ratio)])


class Gate(Pass):
    r"""Rule of a gate activation (sigmoid, hard sigmoid) and of the products it gates.

    The activation itself gets the identity rule (:class:`Pass`). Wherever
    its output :math:`s` then multiplies a signal :math:`x` element-wise
    (``x * s``, ``torch.mul(x, s)``, also after reshaping :math:`s`, as in
    squeeze-excitation blocks), the product :math:`z = x s` splits its
    relevance by ``share``:

    - ``"uniform"`` (default; the uniform rule of AttnLRP, Achtibat et al.
      2024, for bilinear products): :math:`R_x = R_s = R_z / 2`. The gate's
      branch (e.g. the squeeze-excitation convs) receives relevance, so its
      units can be ranked.
    - ``"signal"`` ("signal takes all", Arras et al., "Explaining recurrent
      neural network predictions in sentiment analysis", WASSA 2017, for
      LSTM gates): the gate is a constant, :math:`R_x = R_z`, :math:`R_s = 0`;
      no relevance enters the gate's branch.

    Both conserve relevance through the product. The engine watches the
    forward pass for such products only when some module has this rule.
    """

    name = "gate"

    def __init__(self, share: str = "uniform"):
        if share not in ("uniform", "signal"):
            raise XpruneError(f"gate rule: share must be 'uniform' or 'signal'; got {share!r}")
        self.share = share

    def __call__(self, call: LayerCall) -> torch.Tensor:
        y = super().__call__(call)
        if call.engine is not None:
            call.engine._mark_gate(y, self.share)
        return y


class LayerNormRule(Rule):
    r"""Identity rule on the normalising statistic of a norm layer (AttnLRP, Achtibat et al. 2024).

    .. math:: y = w \odot \frac{x - \mu(x)}{[\sigma(x)]_{\text{const}}} + b

    so :math:`R_x = x \odot J^\top g` with :math:`J = \mathrm{diag}(w/\sigma)(I - \tfrac1N \mathbf{1}\mathbf{1}^\top)`:
    conservative up to the bias share :math:`\sum b\,g`. Applied inside the
    module's own forward (:class:`~xprune.lrp.ops.ConstantStatistics`), so
    ``nn.LayerNorm``, ``nn.GroupNorm`` and subclasses that permute around the
    call (ConvNeXt's channels-first LayerNorm) or compute the statistic by
    hand (RMSNorm, GRN) are all handled.
    """

    name = "layernorm"
    intercept: ClassVar[str] = "statistics"

    def __call__(self, call: LayerCall) -> torch.Tensor:  # the engine applies it inside the forward
        return call.output


class Norm(Rule):
    r"""Normalisation rule for parameter-free linear modules (sums, average pooling).

    .. math:: R_j = x_j \sum_i \frac{\partial y_i}{\partial x_j} \frac{R_i}{\operatorname{stab}(y_i)}

    Relevance is split in proportion to each input's contribution; for a
    residual sum :math:`y = a + b` this gives :math:`R_a = a R_y / y`, so
    relevance is conserved through the skip connection.
    """

    name = "norm"

    def __init__(self, stabilizer: float = 1e-6):
        self.stabilizer = float(stabilizer)

    def __call__(self, call: LayerCall) -> torch.Tensor:
        y = call.output
        return reroute(y, [(y, ratio(y, y, self.stabilizer))])


# ----------------------------------------------------------------------------- registry

RULES: dict[str, type[Rule]] = {
    "epsilon": Epsilon,
    "zplus": ZPlus,
    "alpha-beta": AlphaBeta,
    "gamma": Gamma,
    "flat": Flat,
    "w-square": WSquare,
    "z-box": ZBox,
    "pass": Pass,
    "gate": Gate,
    "layernorm": LayerNormRule,
    "norm": Norm,
    "gradient": Gradient,
}
"""Rule classes by canonical name (see :func:`make_rule` for accepted spellings)."""

_ALIASES = {
    "z+": "zplus",
    "alpha1beta0": "zplus",
    "alphabeta": "alpha-beta",
    "wsquare": "w-square",
    "w2": "w-square",
    "zbox": "z-box",
    "identity": "pass",
    "winnertakeall": "gradient",
    "wta": "gradient",
    "lrp0": "gradient",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def _lookup(name: str) -> tuple[type[Rule], dict[str, Any]]:
    key = _key(name)
    m = re.fullmatch(r"alpha(\d+(?:\.\d+)?)beta(\d+(?:\.\d+)?)", key)
    if m and key != "alpha1beta0":
        return AlphaBeta, {"alpha": float(m.group(1)), "beta": float(m.group(2))}
    for canonical, cls in RULES.items():
        if _key(canonical) == key:
            return cls, {}
    if key in _ALIASES:
        return RULES[_ALIASES[key]], {}
    known = ", ".join(sorted(RULES)) + " (also: z+, alpha2-beta1, alpha1-beta0, identity, winner-take-all)"
    raise XpruneError(f"unknown LRP rule {name!r}; known rules: {known}")


def make_rule(spec: Rule | str | tuple[str, dict] | None) -> Rule | None:
    """Build a rule from a spec.

    Parameters
    ----------
    spec : Rule, str, (str, dict) or None
        A rule instance (returned as is), a rule name (``"epsilon"``,
        ``"zplus"``/``"z+"``, ``"alpha2-beta1"``, ``"gamma"``, ``"flat"``,
        ``"w-square"``, ``"z-box"``, ``"pass"``, ``"norm"``, ``"gradient"``;
        case, ``-`` and ``_`` are ignored) or a pair of a name and keyword
        arguments, e.g. ``("gamma", {"gamma": 0.25})``. ``None`` means no rule.
    """
    if spec is None or isinstance(spec, Rule):
        return spec
    kwargs: dict[str, Any]
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        name, kwargs = spec
    else:
        raise XpruneError(f"a rule is a Rule, a name or a (name, kwargs) pair; got {spec!r}")
    cls, preset = _lookup(name)
    try:
        return cls(**{**preset, **kwargs})
    except TypeError as e:
        import inspect

        raise XpruneError(
            f"bad parameters for LRP rule {name!r}: {e}; signature {cls.__name__}{inspect.signature(cls)}"
        ) from None
