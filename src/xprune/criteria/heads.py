r"""Criteria for attention heads and MLP neurons (unit kinds ``"heads"`` and ``"neurons"``).

Every built-in criterion accepts these kinds once :mod:`xprune.transformers`
is imported. Signals are read through the unit gates of
:func:`xprune.transformers.gates`: for a head, the head's output
:math:`a_{n,t,u,i}` (sample :math:`n`, token :math:`t`, unit :math:`u`, the
:math:`i`-th of its ``group_size * head_dim`` features) where the output
projection reads it; for a neuron, its activation :math:`a_{n,t,u}` where the
MLP's output projection reads it. :math:`O` is the explained output (the
target logit, as for channels), :math:`T` the number of tokens.

==============  =================================================================
criterion       score of unit :math:`u`
==============  =================================================================
``lrp``         PXP (Hatefi et al. 2024), AttnLRP rules by default:
                heads :math:`\sum_{n,t,h \in u} |\sum_{i \in h} R_{n,t,h,i}|`
                (= 2x the relevance of the attention probabilities,
                :math:`\sum_{n,t} |\sum_k R_{A_{n,h,t,k}}|`, under the uniform rule);
                neurons :math:`\sum_{n,t} |R_{n,t,u}|`. ``aggregate="yeom"``:
                :math:`\sum |R|` over every entry.
``taylor``      :math:`|\frac{1}{NT} \partial O / \partial g_u|` at gate
                :math:`g = 1`, i.e. :math:`|\frac{1}{NT}\sum_{n,t,i} a \, \partial O/\partial a|`
                (Molchanov et al. 2017; Michel et al. 2019 for heads)
``gradient``    :math:`|\frac{1}{NTW}\sum_{n,t,i} \partial O/\partial a_{n,t,u,i}|`
``activation``  :math:`\frac{1}{NTW}\sum_{n,t,i} |a_{n,t,u,i}|` (padding tokens
                excluded when the inputs carry an ``attention_mask``)
``weight``      :math:`\sum |w|` over the unit's slices: heads: rows of q, k, v
                and columns of the output projection; neurons: rows of the
                input projection(s) and the column of the output projection
``l2``          the Euclidean norm of the same slices
``random``      seeded uniform (unchanged)
==============  =================================================================

The LRP criterion's ``composite`` defaults to ``"attnlrp"`` for these kinds
(``"cp-lrp"`` for CP-LRP, or any composite; rules above the units are what
matters). References: Achtibat et al., "AttnLRP", ICML 2024; Ali et al.,
"XAI for transformers: better explanations through conservative
propagation", ICML 2022; Hatefi et al., "Pruning by explaining revisited",
arXiv:2408.12568, 2024.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .. import _inputs
from ..errors import XpruneError
from ..units import UnitSet
from .base import _REGISTRY, register, resolve_target

__all__ = ["unit_signals", "weight_scores"]

KINDS = ("heads", "neurons")


def _token_mask(inputs: Any) -> torch.Tensor | None:
    if isinstance(inputs, dict) and isinstance(inputs.get("attention_mask"), torch.Tensor):
        m = inputs["attention_mask"]
        if m.dim() == 2:
            return m
    return None


def unit_signals(model: nn.Module, units: UnitSet, data, *, target: Any = "label", seed: Callable | None = None,
                 context: Callable | None = None, need_grad: bool = True):
    """Iterate ``(name, a, grad, gate_grad, token_mask)`` per group and batch.

    ``a`` is the gated unit output ``[N, T, U, W]`` (``W`` = group_size x
    head_dim for heads, 1 for neurons), ``grad`` the (possibly LRP-modified)
    gradient of the explained output at ``a``, ``gate_grad`` ``[U]`` the
    gradient at the gate (summed over the batch), ``token_mask`` ``[N, T]`` or
    None. ``seed(output, classes)`` gives the gradient fed into the output
    (default: one-hot of the target); ``context(model)`` is entered around the
    forward and backward pass (e.g. :func:`xprune.lrp.attention.attnlrp`); the
    gates are entered inside it.
    """
    from ..transformers.gates import gates
    import contextlib

    for inputs, labels in data:
        ctx = context(model) if context is not None else contextlib.nullcontext()
        with ctx, gates(model, units, capture=True) as g:
            with torch.set_grad_enabled(need_grad):
                output = _inputs.logits(_inputs.call(model, inputs))
                classes = resolve_target(target, output, labels)
                acts = [(n, t) for n in g.captured for t in g.captured[n]]
                grads = [None] * len(acts)
                gate_grads = [None] * len(g.values)
                if need_grad:
                    s = seed(output, classes) if seed is not None else _onehot(output, classes)
                    wanted = [t for _, t in acts] + list(g.values.values())
                    res = torch.autograd.grad(output, wanted, s, allow_unused=True)
                    grads, gate_grads = list(res[: len(acts)]), list(res[len(acts):])
        gate_of = dict(zip(g.values, gate_grads))
        mask = _token_mask(inputs)
        for (name, a), gr in zip(acts, grads):
            if gr is None and need_grad:
                gr = torch.zeros_like(a)
            yield name, a.detach(), None if gr is None else gr.detach(), gate_of.get(name), mask


def _onehot(output, classes):
    seed = torch.zeros_like(output)
    if output.dim() == 2:
        seed[torch.arange(len(classes)), classes] = 1.0
    else:
        seed.reshape(output.shape[0], -1, output.shape[-1])[torch.arange(len(classes)), -1, classes] = 1.0
    return seed


def _gather(units: UnitSet, stream, fn) -> dict[str, torch.Tensor]:
    totals = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
    counts = {g.name: 0.0 for g in units}
    for name, a, grad, gate_grad, mask in stream:
        value, count = fn(name, a, grad, gate_grad, mask)
        totals[name] += value.double().cpu()
        counts[name] += count
    from .. import distributed  # raw sums and counts over all ranks' shards, before any finalisation

    totals, counts = distributed.all_reduce_sums(totals, counts)
    return {n: (totals[n], counts[n]) for n in totals}


def _tokens(a, mask):
    if mask is not None and mask.shape == a.shape[:2]:
        return mask.to(a.dtype)[..., None, None], float(mask.sum())
    return None, float(a.shape[0] * a.shape[1])


# ----------------------------------------------------------------------------- implementations


def _taylor(crit, model, units, data, target):
    seed = getattr(crit, "seed", None)
    out = _gather(units, unit_signals(model, units, data, target=target, seed=seed),
                  lambda n, a, g, gg, m: (gg if gg is not None else torch.zeros(a.shape[2]),
                                          float(a.shape[0] * a.shape[1])))
    return {n: (t / max(c, 1.0)).abs() for n, (t, c) in out.items()}


def _gradient(crit, model, units, data, target):
    seed = getattr(crit, "seed", None)
    out = _gather(units, unit_signals(model, units, data, target=target, seed=seed),
                  lambda n, a, g, gg, m: (g.double().sum((0, 1, 3)), float(a.shape[0] * a.shape[1] * a.shape[3])))
    return {n: (t / max(c, 1.0)).abs() for n, (t, c) in out.items()}


def _activation(crit, model, units, data, target):
    def fn(n, a, g, gg, m):
        w, count = _tokens(a, m)
        v = a.double().abs()
        if w is not None:
            v = v * w.double()
        return v.sum((0, 1, 3)), count * a.shape[3]

    out = _gather(units, unit_signals(model, units, data, target=target, need_grad=False), fn)
    return {n: t / max(c, 1.0) for n, (t, c) in out.items()}


def _lrp(crit, model, units, data, target):
    from ..lrp.attention import attnlrp

    comp = crit._unit_composite
    canon = crit.canonizers
    specs = _specs(model, units)

    def fn(n, a, g, gg, m):
        r = a.double() * g.double()  # [N, T, U, W]
        if crit.aggregate == "yeom":
            return r.abs().sum((0, 1, 3)), 1.0
        if units.kind == "heads":
            spec = specs[n]
            r = r.reshape(*r.shape[:3], spec.group_size, spec.head_dim).sum(-1)  # per query head
            return r.abs().sum((0, 1, 3)), 1.0
        return r.sum(-1).abs().sum((0, 1)), 1.0

    out = _gather(units, unit_signals(model, units, data, target=target, seed=crit.seed,
                                      context=lambda mdl: attnlrp(mdl, comp, canon)), fn)
    return {n: t for n, (t, c) in out.items()}


def _specs(model, units):
    from ..transformers.adapters import spec_of

    return {g.name: spec_of(model, units.kind, g.name) for g in units}


def _rows(module: nn.Module, idx: torch.Tensor, output: bool) -> torch.Tensor:
    """Weights of output features ``idx`` (``output=True``) or input features ``idx``, one row per feature."""
    from ..transformers.adapters import is_conv1d

    w = module.weight.detach()
    if is_conv1d(module):
        w = w.t()  # [out, in]
    return w[idx] if output else w[:, idx].t()


def weight_scores(model: nn.Module, units: UnitSet, p: int = 1) -> dict[str, torch.Tensor]:
    r"""Weight norm of each unit's slices: :math:`\sum |w|` (``p=1``) or :math:`\sqrt{\sum w^2}` (``p=2``).

    Heads: rows of q, k, v (GPT-2: of the three thirds of ``c_attn``) and
    columns of the output projection; neurons: rows of the input
    projection(s) and the column of the output projection.
    """
    modules = dict(model.named_modules())
    scores = {}
    for name, spec in _specs(model, units).items():
        s = torch.zeros(units[name].size, dtype=torch.float64)
        for u in range(len(s)):
            parts = []
            if units.kind == "heads":
                q, kv = spec.q_index([u]), spec.kv_index([u])
                if spec.fused:
                    wq, wkv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
                    parts.append(_rows(modules[spec.fused], torch.cat([q, wq + kv, wq + wkv + kv]), True))
                else:
                    parts += [_rows(modules[spec.q], q, True), _rows(modules[spec.k], kv, True),
                              _rows(modules[spec.v], kv, True)]
                parts.append(_rows(modules[spec.o], q, False))
            else:
                idx = torch.tensor([u])
                parts += [_rows(modules[n], idx, True) for n in spec.inputs]
                parts.append(_rows(modules[spec.output], idx, False))
            flat = torch.cat([t.reshape(-1) for t in parts]).double()
            s[u] = flat.abs().sum() if p == 1 else flat.pow(2).sum().sqrt()
        scores[name] = s
    return scores


_IMPLS: dict[str, Callable] = {
    "taylor": _taylor,
    "gradient": _gradient,
    "activation": _activation,
    "lrp": _lrp,
    "weight": lambda crit, model, units, data, target: weight_scores(model, units, 1),
    "l2": lambda crit, model, units, data, target: weight_scores(model, units, 2),
}


def _extend(name: str, impl: Callable) -> None:
    """Re-register criterion ``name`` as a subclass that also handles heads and neurons.

    Channels and weights go to the original class unchanged.
    """
    base = _REGISTRY.get(name)
    if base is None or getattr(base, "_handles_transformer_units", False):
        return

    def compute(self, model, units, data, *, target="label"):
        if units.kind in KINDS:
            return impl(self, model, units, data, target)
        return base.compute(self, model, units, data, target=target)

    def distributed_sums(self, kind):
        # heads and neurons: _gather reduces the raw sums and counts before the finalisation
        return kind in KINDS or base.distributed_sums(self, kind)

    attrs = {"compute": compute, "distributed_sums": distributed_sums, "_handles_transformer_units": True,
             "__doc__": base.__doc__, "__module__": base.__module__}
    if name == "lrp":
        from ..lrp import composite as resolve_composite

        def __init__(self, composite=None, *args, **kwargs):
            base.__init__(self, "epsilon-plus" if composite is None else composite, *args, **kwargs)
            self._unit_composite = resolve_composite("attnlrp") if composite is None else self.composite

        attrs["__init__"] = __init__
    register(name)(type(base.__name__, (base,), attrs))


for _name, _impl in _IMPLS.items():
    _extend(_name, _impl)
