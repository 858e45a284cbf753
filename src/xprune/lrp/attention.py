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
  (:class:`LayerNormRule`). **RMSNorm** :math:`y = w \odot x / \mathrm{rms}(x)`
  with the statistic detached is an element-wise linear map, i.e. the identity
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
context manager :func:`attnlrp` additionally switches their
``attn_implementation`` to a registered function applying the same rules
(``AttentionInterface.register``), and halves the gradient at both factors of
a gated MLP's product; on exit the model is exactly as before.

The relevance of a *head* read by PXP on the attention probabilities
(Hatefi et al. 2024: :math:`\sum_{t} |\sum_{k} R_{A_{tk}}|`) equals, under
the uniform rule, half of the relevance of the head's output summed over
its width (:math:`\sum_{t} |\sum_i R_{o_{ti}}| / 2`): every term
:math:`A_{tk} v_{ki}` gives half its relevance to :math:`A_{tk}`. xprune reads
head relevance on the head output (see :mod:`xprune.criteria.heads`), which
also works for CP-LRP, where the probabilities receive none.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from ..models.layers import MatMul
from .composites import PRESETS, Composite, _pairs, composite as resolve_composite
from .core import Attribution, attribution
from .rules import Epsilon, Gamma, LayerCall, Pass, Rule, make_rule, reroute, stabilize

__all__ = ["UniformProduct", "Softmax", "LayerNormRule", "AttentionComposite", "attnlrp", "attention_function",
           "ATTENTION_NAME"]

#: Name under which the LRP attention function is registered in transformers' AttentionInterface.
ATTENTION_NAME = "xprune_lrp"


# ----------------------------------------------------------------------------- rules


def uniform_product(z: torch.Tensor, factors: Sequence[torch.Tensor], epsilon: float = 1e-6) -> torch.Tensor:
    r"""Uniform rule on a product ``z`` of ``factors``: the gradient at ``z`` times :math:`z/(n\,\operatorname{stab}(z))`.

    :math:`n` is the number of factors that carry relevance (require grad);
    with :math:`n = 0` ``z`` is returned unchanged.
    """
    n = sum(1 for f in factors if isinstance(f, torch.Tensor) and f.requires_grad)
    if n == 0 or not z.requires_grad:
        return z
    zd = z.detach()
    coef = zd / stabilize(zd, epsilon) if epsilon else torch.ones_like(zd)
    return reroute(z, [(z, coef / n)])


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
        return uniform_product(call.output, [t for t in call.inputs if isinstance(t, torch.Tensor)], self.epsilon)


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


class LayerNormRule(Rule):
    r"""Identity rule on the normalising statistic of ``nn.LayerNorm`` (AttnLRP).

    .. math:: y = w \odot \frac{x - \mu(x)}{[\sigma(x)]_{\text{const}}} + b

    so :math:`R_x = x \odot J^\top g` with :math:`J = \mathrm{diag}(w/\sigma)(I - \tfrac1N \mathbf{1}\mathbf{1}^\top)`:
    conservative up to the bias share :math:`\sum b\,g`.
    """

    name = "layernorm"

    def __call__(self, call: LayerCall) -> torch.Tensor:
        m = call.module
        x = call.input
        if not x.requires_grad:
            return call.output
        dims = tuple(range(-len(m.normalized_shape), 0))
        mean = x.mean(dims, keepdim=True)
        var = x.detach().var(dims, unbiased=False, keepdim=True)
        y = (x - mean) / torch.sqrt(var + m.eps)
        if m.weight is not None:
            y = y * m.weight.detach()
        if getattr(m, "bias", None) is not None:
            y = y + m.bias.detach()
        return reroute(call.output, [(y, 1.0)])


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

    def __init__(self, attention: str = "attnlrp", linear: Any = None, epsilon: float = 1e-6,
                 stabilizer: float = 1e-6, layer_map: Any = None, name_map: Any = None):
        if attention not in ("attnlrp", "cp"):
            raise XpruneError(f"attention must be 'attnlrp' or 'cp', got {attention!r}")
        self.attention = attention
        self.epsilon = float(epsilon)
        self.linear_rule = make_rule(linear) if linear is not None else Epsilon(epsilon)
        super().__init__(
            _pairs(layer_map) + [
                ((MatMul,), UniformProduct(epsilon)),
                ((nn.Softmax,), Softmax(attention)),
                ((nn.LayerNorm,), LayerNormRule()),
                ("dense", self.linear_rule),
            ],
            name_map, stabilizer=stabilizer, name="attnlrp" if attention == "attnlrp" else "cp-lrp",
        )

    def assign(self, model: nn.Module) -> dict[str, Rule]:
        from ..transformers.adapters import is_conv1d

        rules = super().assign(model)
        for name, m in model.named_modules():
            if name in rules or name in self.name_map:
                continue
            if is_conv1d(m):
                rules[name] = Epsilon(self.epsilon) if isinstance(self.linear_rule, Gamma) else self.linear_rule
            elif _is_rmsnorm(m) or _is_hf_activation(m):
                rules[name] = Pass()
        return rules


def _attnlrp(epsilon=1e-6, linear=None, stabilizer=1e-6, layer_map=None, name_map=None):
    return AttentionComposite("attnlrp", linear, epsilon, stabilizer, layer_map, name_map)


def _cp_lrp(epsilon=1e-6, linear=None, stabilizer=1e-6, layer_map=None, name_map=None):
    return AttentionComposite("cp", linear, epsilon, stabilizer, layer_map, name_map)


PRESETS.setdefault("attnlrp", _attnlrp)
PRESETS.setdefault("cp-lrp", _cp_lrp)


# ----------------------------------------------------------------------------- Hugging Face attention


class _State:
    def __init__(self, config, variant: str, epsilon: float, capture: bool):
        self.config, self.variant, self.epsilon, self.capture = config, variant, epsilon, capture
        self.probs: list[torch.Tensor] = []


_ACTIVE: dict[int, _State] = {}


def attention_function(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                       **kwargs: Any):
    r"""Eager attention with the AttnLRP / CP-LRP rules, for transformers' ``AttentionInterface``.

    ``softmax(q k^T * scaling + mask) v`` per head, key/value heads repeated
    for grouped-query attention; the products get the uniform rule, the
    softmax the variant's rule. Outside an :func:`attnlrp` context it is
    plain eager attention. Returns ``(output [B, T, H, d], probabilities [B, H, T, S])``.
    """
    config = getattr(module, "config", None)
    state = _ACTIVE.get(id(config))
    if state is not None and state.config is not config:
        state = None
    for k in ("softcap", "s_aux", "sinks"):
        if kwargs.get(k) is not None:
            raise XpruneError(f"the xprune LRP attention does not support {k!r} (used by {type(module).__name__})")
    eps = state.epsilon if state else 0.0
    rep = query.shape[1] // key.shape[1]
    if rep > 1:
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-2, -1))
    if state is not None:
        scores = uniform_product(scores, [query, key], eps)
    scores = scores * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    if state is not None and state.variant == "cp":
        probs = probs.detach()
    if module.training and dropout:
        probs = F.dropout(probs, p=dropout)
    if state is not None and state.capture:
        state.probs.append(probs)
    out = torch.matmul(probs, value)
    if state is not None:
        out = uniform_product(out, [probs, value], eps)
    return out.transpose(1, 2).contiguous(), probs


_REGISTERED = False


def _register_attention() -> None:
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, attention_function)
    AttentionMaskInterface.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    _REGISTERED = True


def _hf_configs(model: nn.Module) -> list:
    """The distinct configs of a Hugging Face model's attention modules (empty for other models)."""
    from ..transformers.adapters import attention_specs

    modules = dict(model.named_modules())
    configs, seen = [], set()
    for spec in attention_specs(model):
        if spec.layout == "xprune":
            continue
        for owner in (spec.name, *spec.owners):
            cfg = getattr(modules[owner], "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation_internal") and id(cfg) not in seen:
                seen.add(id(cfg))
                configs.append(cfg)
    top = getattr(model, "config", None)
    if configs and top is not None and hasattr(top, "_attn_implementation_internal") and id(top) not in seen:
        configs.append(top)
    return configs


def _halve(module, args, output):
    return reroute(output, [(output, 0.5)]) if torch.is_grad_enabled() and output.requires_grad else output


@contextlib.contextmanager
def attnlrp(model: nn.Module, composite: Any = "attnlrp", canonizers=None, *, capture_attention: bool = False,
            **kwargs: Any) -> Iterator[Attribution]:
    """Attribute ``model`` with AttnLRP (or CP-LRP): a context manager yielding the :class:`Attribution`.

    Parameters
    ----------
    model : nn.Module
        xprune's ViT, a Hugging Face transformer, or any model whose attention
        is built from ``MatMul``/``nn.Softmax`` modules.
    composite : "attnlrp", "cp-lrp", or an :class:`AttentionComposite`
        Keyword arguments (``epsilon=``, ``linear=``) go to the preset.
    canonizers :
        As in :func:`xprune.lrp.attribution`.
    capture_attention : bool
        Keep the attention probabilities of Hugging Face attention calls in
        ``attr.attention_probs`` (a list, one ``[B, H, T, S]`` tensor per call).

    Notes
    -----
    For Hugging Face models the configs' ``attn_implementation`` is switched
    to :data:`ATTENTION_NAME` (masks built as for eager attention) and
    restored on exit; gated MLPs get the uniform rule on their element-wise
    product through gradient-halving hooks on ``up_proj`` and the activation.
    """
    comp = resolve_composite(composite, **kwargs)
    variant = getattr(comp, "attention", "attnlrp")
    epsilon = getattr(comp, "epsilon", 1e-6)
    configs = _hf_configs(model)
    saved: list[tuple[Any, Any]] = []
    handles = []
    from ..transformers.adapters import mlp_specs

    modules = dict(model.named_modules())
    with attribution(model, comp, canonizers) as attr:
        try:
            if configs:
                _register_attention()
            probs: list[torch.Tensor] = []
            for cfg in configs:
                saved.append((cfg, cfg._attn_implementation_internal))
                cfg._attn_implementation_internal = ATTENTION_NAME
                state = _ACTIVE[id(cfg)] = _State(cfg, variant, epsilon, capture_attention)
                state.probs = probs
            attr.attention_probs = probs
            for spec in mlp_specs(model):
                if spec.gated:
                    for n in (spec.inputs[1], spec.act) if spec.act else (spec.inputs[1],):
                        handles.append(modules[n].register_forward_hook(_halve))
                    if not spec.act:
                        raise XpruneError(f"gated MLP {spec.name!r} has no activation module to attach the uniform rule to")
            yield attr
        finally:
            for h in handles:
                h.remove()
            for cfg, impl in saved:
                cfg._attn_implementation_internal = impl
                _ACTIVE.pop(id(cfg), None)
