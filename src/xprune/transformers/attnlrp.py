"""AttnLRP / CP-LRP on Hugging Face transformers: attention computed in a function gets the LRP rules.

Hugging Face models compute attention in a function, invisible to module
hooks. :func:`attnlrp` switches the configs' ``attn_implementation`` to a
function registered with transformers' ``AttentionInterface`` that applies
the rules of :mod:`xprune.lrp.attention` (softmax rule, uniform rule on the
two bilinear products), halves the gradient at both factors of a gated MLP's
product, and restores everything on exit. For models whose attention is made
of modules (xprune's ViT) it is :func:`xprune.lrp.attribution` with the
AttnLRP composite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from ..lrp import Attribution, attribution, composite as resolve_composite
from ..lrp.attention import uniform_product
from ..lrp.rules import reroute
from .adapters import attention_specs, mlp_specs

__all__ = ["attnlrp", "attention_function", "ATTENTION_NAME"]

#: Name under which the LRP attention function is registered with transformers.
ATTENTION_NAME = "xprune_lrp"


class _State:
    def __init__(self, config, variant: str, epsilon: float, capture: bool):
        self.config, self.variant, self.epsilon, self.capture = config, variant, epsilon, capture
        self.probs: list[torch.Tensor] = []


_ACTIVE: dict[int, _State] = {}


def attention_function(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
):
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
    if state is not None:  # contiguous factors: the ones the products keep for backward, reused below
        query, key, value = query.contiguous(), key.transpose(-2, -1).contiguous().transpose(-2, -1), value.contiguous()
    scores = torch.matmul(query, key.transpose(-2, -1))
    if state is not None:  # the coefficient is formed in the backward pass from q and k (no [B, H, T, T] kept)
        q_, k_ = query.detach(), key.detach()
        scores = uniform_product(scores, [query, key], eps, lambda: torch.matmul(q_, k_.transpose(-2, -1)))
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
        p_, v_ = probs.detach(), value.detach()
        out = uniform_product(out, [probs, value], eps, lambda: torch.matmul(p_, v_))
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
def attnlrp(
    model: nn.Module,
    composite: Any = "attnlrp",
    canonizers=None,
    *,
    capture_attention: bool = False,
    weight_relevance: Any = False,
    **kwargs: Any,
) -> Iterator[Attribution]:
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
    weight_relevance : bool or iterable of str
        As in :func:`xprune.lrp.attribution`: record the modified weights of
        the (named) layers so relevance can be split onto single weights.

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
    modules = dict(model.named_modules())
    with attribution(model, comp, canonizers, weight_relevance=weight_relevance) as attr:
        try:
            if configs:
                _register_attention()
            probs: list[torch.Tensor] = []
            for cfg in configs:
                saved.append((cfg, cfg._attn_implementation_internal))
                cfg._attn_implementation_internal = ATTENTION_NAME
                state = _ACTIVE[id(cfg)] = _State(cfg, variant, epsilon, capture_attention)
                state.probs = probs
            attr.attention_probs = probs  # type: ignore[attr-defined]  # an extra the AttnLRP context adds
            for spec in mlp_specs(model):
                if spec.gated:
                    for n in (spec.inputs[1], spec.act) if spec.act else (spec.inputs[1],):
                        handles.append(modules[n].register_forward_hook(_halve))
                    if not spec.act:
                        raise XpruneError(
                            f"gated MLP {spec.name!r} has no activation module to attach the uniform rule to"
                        )
            yield attr
        finally:
            for h in handles:
                h.remove()
            for cfg, impl in saved:
                cfg._attn_implementation_internal = impl
                _ACTIVE.pop(id(cfg), None)
