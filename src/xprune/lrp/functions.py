"""One-call LRP: relevance at the input and at named layers, heatmaps, relevance of single weights.

Built on :class:`~xprune.lrp.core.Attribution`: one attributed forward pass,
one backward pass from :func:`start_seed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError
from .canonizers import Canonizer
from .core import attribution

__all__ = ["relevance", "explain", "weight_relevance", "start_seed"]


def start_seed(output: torch.Tensor, target: Any = None, start: str = "onehot") -> torch.Tensor:
    r"""Gradient seed for ``output`` that starts LRP at the target logit.

    Parameters
    ----------
    output : Tensor ``[N, C]``
        Model output (logits) of the attributed forward pass.
    target : None, int, sequence/LongTensor ``[N]`` or float Tensor ``[N, C]``
        Class to explain (``None``: the predicted class). A float tensor of
        the output's shape is taken as the starting relevance itself.
    start : {"onehot", "logit"}
        ``"onehot"``: relevance 1 at the target logit (seed ``1 / logit``,
        0 where the logit is exactly 0); ``"logit"``: relevance = the logit
        value (seed = one-hot, i.e. the gradient of the logit).
    """
    if start not in ("onehot", "logit"):
        raise XpruneError(f"start must be 'onehot' or 'logit'; got {start!r}")
    if output.dim() != 2:
        raise XpruneError(f"LRP starts from a [N, C] output; got shape {tuple(output.shape)}")
    out = output.detach()
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != out.shape:
            raise XpruneError(f"a float target is the starting relevance and needs shape {tuple(out.shape)}")
        return _finite(target.to(out) / out)
    if target is None:
        classes = out.argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full((out.shape[0],), target, dtype=torch.long, device=out.device)
    else:
        classes = torch.as_tensor(target, device=out.device).long().reshape(-1)
    if classes.numel() != out.shape[0] or (classes.numel() and (classes.min() < 0 or classes.max() >= out.shape[1])):
        raise XpruneError(f"target must give one class in [0, {out.shape[1] - 1}] per sample ({out.shape[0]} samples)")
    seed = torch.zeros_like(out)
    seed[torch.arange(out.shape[0], device=out.device), classes] = 1.0
    if start == "onehot":
        seed = _finite(seed / out)
    return seed


def _finite(seed: torch.Tensor) -> torch.Tensor:
    """``seed`` with 0 where it is not finite (a logit of 0, or so small that its reciprocal overflows)."""
    return torch.nan_to_num(seed, nan=0.0, posinf=0.0, neginf=0.0)


def _sum_calls(name: str, tensors: list[torch.Tensor], grads: list) -> torch.Tensor | None:
    rels = [t.detach() * (torch.zeros_like(t) if g is None else g) for t, g in zip(tensors, grads, strict=True)]
    if not rels:
        return None
    if any(r.shape != rels[0].shape for r in rels):
        raise XpruneError(f"module {name!r} is called several times with different output shapes; read it by hand")
    return sum(rels[1:], rels[0])


def relevance(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    layers: Iterable[str] = (),
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LRP relevance at the input and at the outputs of ``layers``.

    Parameters
    ----------
    model : nn.Module
        Classifier mapping ``x`` to ``[N, C]`` logits (use ``model.eval()``).
    x : Tensor
        Input batch.
    target, start :
        The starting relevance, see :func:`start_seed`.
    composite, canonizers :
        Rules and canonizers, see :class:`Attribution`.
    layers : iterable of str
        Module names whose output relevance to return (for a layer merged with
        its BatchNorm: after the BatchNorm). A module called several times
        gets the sum over its calls.

    Returns
    -------
    input_relevance : Tensor, shape of ``x``
    layer_relevance : dict of name to Tensor, shape of each layer's output
    """
    layers = list(layers)
    with attribution(model, composite, canonizers) as attr, torch.enable_grad():
        store = attr.tap(layers)
        x = x.detach().requires_grad_(True)
        output = model(x)
        seed = start_seed(output, target, start)
        outs = [t for n in layers for t in store[n]]
        carriers = attr.carriers(x)
        wanted = [x, *carriers, *outs]
        grads = torch.autograd.grad(output, wanted, seed, allow_unused=True)
        r_in = attr.input_relevance(x, grads[: 1 + len(carriers)])
        layer_grads = list(grads[1 + len(carriers) :])
        result: dict[str, torch.Tensor] = {}
        for n in layers:
            k = len(store[n])
            r = _sum_calls(n, store[n], layer_grads[:k])
            layer_grads = layer_grads[k:]
            if r is None:
                raise XpruneError(f"module {n!r} was not called in the forward pass")
            result[n] = r
    return r_in.detach(), result


def explain(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> torch.Tensor:
    """Input relevance (heatmap) of ``model`` for ``x``; see :func:`relevance`."""
    return relevance(model, x, target, composite, canonizers=canonizers, start=start)[0]


def weight_relevance(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    layers: Iterable[str] | None = None,
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> dict[str, torch.Tensor]:
    r"""Relevance of single weights, summed over the batch.

    The relevance flowing through weight :math:`w_{ij}` is its share of the
    message from input :math:`j` to output :math:`i`, e.g.
    :math:`x_j w_{ij} R_i / \operatorname{stab}(z_i)` for epsilon, computed as
    :math:`\sum_k W_k \odot \partial / \partial W_k` over the rule's modified
    weights :math:`W_k` (for a conv: summed over positions). Summed over
    :math:`i` and :math:`j` it is the layer's output relevance minus the
    bias share. BatchNorm-merged layers report the merged weights'
    relevance (same shape as the layer's weight). Layers with the flat rule
    get no weight relevance.

    Returns
    -------
    dict of layer name to Tensor of the layer's weight shape.
    """
    names = None if layers is None else list(layers)
    with attribution(model, composite, canonizers, weight_relevance=True if names is None else names) as attr:
        with torch.enable_grad():
            output = model(x)
            seed = start_seed(output, target, start)
            leaves = [leaf for _, leaf in attr.weight_leaves]
            grads = torch.autograd.grad(output, leaves, seed, allow_unused=True) if leaves else []
        rel = attr.weight_relevance_from(grads)
    modules = dict(model.named_modules())
    wanted = (
        names
        if names is not None
        else [n for n, m in modules.items() if isinstance(getattr(m, "weight", None), torch.Tensor) and n in rel]
    )
    return {n: rel.get(n, torch.zeros_like(modules[n].weight.detach())).detach() for n in wanted}
