r"""Explanation similarity: how well a pruned model's explanations match the original's.

A metric for every criterion (and every pruned model, however obtained): the
input heatmaps of the original model :math:`f` and of the pruned model
:math:`\tilde f` for the *same* class of the same samples are compared per
sample, then averaged.

Heatmaps (:func:`heatmaps`), summed over input channels to ``[N, H, W]``
(or kept as ``[N, F]`` for tabular inputs):

- ``"lrp"``: LRP relevance at the input, :func:`xprune.lrp.explain` with the
  ``composite`` rules (default ``"epsilon-plus"``: epsilon on dense layers,
  z+ on convolutions; BatchNorm merged by the canonizers). Bach et al.,
  "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
  Layer-Wise Relevance Propagation", PLoS ONE 2015.
- ``"gradxinput"``: :math:`x \odot \partial f_c / \partial x` (Shrikumar et
  al., "Learning Important Features Through Propagating Activation
  Differences", ICML 2017).
- ``"auto"``: ``"lrp"`` when :mod:`xprune.lrp` is installed, else ``"gradxinput"``.
- a callable ``fn(model, x, classes) -> Tensor`` shaped like ``x``.

Scores (:func:`compare`), for heatmaps :math:`a, b` of one sample over
:math:`P` positions:

- Pearson correlation :math:`\rho = \frac{\sum_p (a_p - \bar a)(b_p - \bar b)}
  {\sqrt{\sum_p (a_p - \bar a)^2} \sqrt{\sum_p (b_p - \bar b)^2}}`, defined as 0
  when either map is constant;
- top-k overlap :math:`|T_k(a) \cap T_k(b)| / k`, :math:`T_k` the positions of
  the :math:`k = \max(1, \operatorname{round}(q P))` largest values
  (``top_k = q``, default 10% of the positions); 1 = the same most relevant
  pixels, :math:`\approx q` for unrelated maps.

The original model itself scores :math:`\rho = 1`, overlap 1.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from . import _inputs
from .criteria.base import resolve_target
from .errors import XpruneError

__all__ = ["Similarity", "heatmaps", "compare", "explanation_similarity", "default_method"]


def default_method() -> str:
    """``"lrp"`` when the LRP engine (:mod:`xprune.lrp`) is available, else ``"gradxinput"``."""
    return "lrp" if importlib.util.find_spec("xprune.lrp") is not None else "gradxinput"


def heatmaps(
    model: nn.Module, x: torch.Tensor, classes: torch.Tensor, method: Any = "auto", composite: Any = "epsilon-plus"
) -> torch.Tensor:
    """Heatmaps of ``model`` for ``classes`` on ``x``, summed over channels (see the module docs)."""
    if method == "auto":
        method = default_method()
    with _inputs.preserved_state(model):
        model.eval()
        if callable(method):
            h = method(model, x, classes)
        elif method == "lrp":
            from .lrp import explain

            h = explain(model, x, classes, composite)
        elif method == "gradxinput":
            xg = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                out = _inputs.logits(model(xg))
                (g,) = torch.autograd.grad(out.gather(1, classes.view(-1, 1)).sum(), xg)
            h = xg.detach() * g
        else:
            raise XpruneError(f"method must be 'auto', 'lrp', 'gradxinput' or a callable; got {method!r}")
    h = torch.as_tensor(h).detach()
    if h.shape != x.shape:
        raise XpruneError(f"the heatmap has shape {tuple(h.shape)}, expected the input's {tuple(x.shape)}")
    return h.sum(1) if h.dim() == 4 else h


def compare(a: torch.Tensor, b: torch.Tensor, top_k: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample Pearson correlation and top-k overlap of heatmaps ``a``, ``b`` (``[N, ...]``)."""
    if a.shape != b.shape:
        raise XpruneError(f"heatmaps to compare differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if not 0 < top_k <= 1:
        raise XpruneError(f"top_k is a fraction of the positions in (0, 1], got {top_k!r}")
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    da, db = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    na, nb = da.norm(dim=1), db.norm(dim=1)
    ok = (na > 0) & (nb > 0)
    rho = torch.where(ok, (da * db).sum(1) / torch.where(ok, na * nb, torch.ones_like(na)), torch.zeros_like(na))
    k = max(1, round(top_k * a.shape[1]))
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    hit = torch.zeros_like(a, dtype=torch.bool).scatter_(1, ta, True).gather(1, tb)
    return rho, hit.double().sum(1) / k


@dataclass
class Similarity:
    """Mean explanation similarity over ``n`` samples (``*_std``: standard deviation over samples)."""

    pearson: float
    topk: float
    pearson_std: float
    topk_std: float
    n: int
    method: str
    top_k: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def explanation_similarity(
    original: nn.Module,
    pruned: nn.Module,
    data: Any,
    *,
    method: Any = "auto",
    target: Any = "label",
    top_k: float = 0.1,
    composite: Any = "epsilon-plus",
    batch_size: int = 64,
    max_samples: int | None = None,
) -> Similarity:
    """How similar ``pruned``'s explanations are to ``original``'s on ``data``.

    Parameters
    ----------
    original, pruned : nn.Module
        The model before and after pruning (any criterion, removed or masked,
        fine-tuned or not); neither is modified.
    data : (X, y), Split or iterable of batches
        Samples to explain (test samples; not those the criterion saw).
    method : "auto", "lrp", "gradxinput" or callable
        How heatmaps are made (see the module docs).
    target : "label", "predicted" or int
        The class explained, the same for both models: the true label, or the
        *original* model's prediction.
    top_k : float
        Fraction of positions for the top-k overlap.
    composite :
        LRP rules (``method="lrp"``).
    max_samples : int, optional
        Stop after this many samples.

    Returns
    -------
    Similarity
        Mean Pearson correlation and top-k overlap (and their standard deviations).
    """
    used = (
        default_method()
        if method == "auto"
        else (getattr(method, "__name__", "callable") if callable(method) else method)
    )
    rhos, hits = [], []
    seen = 0
    for x, y in _inputs.batches(data, batch_size):
        if max_samples is not None and seen >= max_samples:
            break
        if max_samples is not None:
            x, y = x[: max_samples - seen], (None if y is None else y[: max_samples - seen])
        with torch.no_grad(), _inputs.preserved_state(original):
            original.eval()
            out = _inputs.logits(original(x))
        classes = resolve_target(target, out, y)
        r, h = compare(
            heatmaps(original, x, classes, method, composite), heatmaps(pruned, x, classes, method, composite), top_k
        )
        rhos.append(r)
        hits.append(h)
        seen += len(x)
    if not rhos:
        raise XpruneError("explanation_similarity needs at least one sample")
    r, h = torch.cat(rhos), torch.cat(hits)

    def std(t: torch.Tensor) -> float:
        return float(t.std()) if t.numel() > 1 else 0.0

    return Similarity(float(r.mean()), float(h.mean()), std(r), std(h), int(r.numel()), str(used), top_k)
