r"""Baselines from the LLM-pruning literature for heads and MLP neurons: ``"wanda"`` and ``"llm-pruner"``.

Both score the unit kinds ``"heads"`` (for grouped-query attention: one KV
group with its query heads) and ``"neurons"`` of :mod:`xprune.transformers`
(Llama / Qwen2 / Mistral, GPT-2, BERT layouts). Calibration data: token
blocks, e.g. :func:`xprune.llm.calibration`, or Hugging Face batches (dicts
with ``input_ids``, ``attention_mask`` and ``labels``). Wanda reads no labels;
LLM-Pruner reads labels given per token (see below) and ignores one label per
sample.

``"wanda"``: structured Wanda
-----------------------------
Wanda (Sun et al., "A simple and effective pruning approach for large
language models", arXiv:2306.11695, 2023) scores a weight :math:`W_{ij}` of a
linear layer :math:`y = W x` by :math:`|W_{ij}| \, \|X_j\|_2`, with
:math:`\|X_j\|_2` the L2 norm of input feature :math:`j` over all calibration
tokens. Its structured variant ("Wanda-sp", An et al., "Fluctuation-based
adaptive structured pruning for large language models" (FLAP),
arXiv:2312.11983, AAAI 2024) sums these scores over the weights that *read*
a unit's output in the following projection :math:`W` (``down_proj`` /
``fc2`` / GPT-2's ``c_proj`` for a neuron; the output projection ``o_proj``
/ ``c_proj`` / BERT's ``output.dense`` for a head):

.. math:: s_u = \sum_{j \in J(u)} \|X_j\|_2 \sum_i |W_{ij}|,
          \qquad \|X_j\|_2 = \Big(\sum_{n,t} X_{n,t,j}^2\Big)^{1/2},

where :math:`J(u)` is the neuron's input feature of the down projection, or
the ``group_size x head_dim`` input features of the output projection that
carry the head's (KV group's) output, and :math:`X` the input of that
projection (padding tokens excluded when the inputs carry an
``attention_mask``). The squares are streamed as float64 running sums (one
vector per projection; no activation is kept) and all-reduced across ranks
in distributed scoring.

``"llm-pruner"``: first-order Taylor importance of LLM-Pruner
-------------------------------------------------------------
LLM-Pruner (Ma et al., "LLM-Pruner: on the structural pruning of large
language models", NeurIPS 2023, arXiv:2305.11627) scores a coupled group of
weights by the first-order Taylor estimate of the change of the loss when
they are zeroed, :math:`|\Delta L| \approx |w \, \partial L / \partial w|`.
Here :math:`L` is the causal-LM loss, the mean next-token negative
log-likelihood over *all* predicted tokens of the calibration data (padding
excluded; with labels per token, the mean cross-entropy at the labelled
tokens, shifted by one for a causal LM as in Hugging Face's loss); its
gradient :math:`G = \frac{1}{M}\sum_{\text{batches}} \nabla_w \sum_t
-\log p(x_{t+1} \mid x_{\le t})` is accumulated over batches (so the scores
do not depend on how the calibration data is batched). The parameters
belonging to a unit are

- head / KV group: the rows of ``q_proj`` (its query heads), of ``k_proj`` and
  ``v_proj`` (its key/value head), their biases when present (Qwen2, GPT-2,
  BERT), and the columns of the output projection reading its heads; GPT-2's
  fused ``c_attn`` contributes the three matching column blocks of its
  ``[in, 3 x width]`` Conv1D weight;
- neuron: the row of ``gate_proj`` and ``up_proj`` (or ``fc1`` / ``c_fc``)
  with its bias, and the column of ``down_proj`` (``fc2`` / ``c_proj``).

``aggregate="element"`` (default; LLM-Pruner's ``param_first`` importance
aggregated by ``sum``): :math:`s_u = \sum_{w \in u} |w \, G_w|`.
``aggregate="vector"`` (LLM-Pruner's ``vector`` importance, aggregated by
``sum`` over the layers of the group): :math:`s_u = \sum_{P} |\sum_{w \in
P \cap u} w \, G_w|`, one absolute value per parameter tensor :math:`P`
(e.g. the query rows, the key rows, ..., the output columns of the head).

Memory: the element-wise variant keeps one accumulated gradient per
attention/MLP weight (in float32, or the weight's dtype when wider), the
cost of one optimiser state; it is what distributed scoring all-reduces.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from .. import _inputs
from ..criteria.base import Criterion, register
from ..errors import DataError, XpruneError
from ..layers import is_conv1d
from .adapters import spec_of

__all__ = ["LLMPruner", "Wanda", "unit_slices"]

KINDS = ("heads", "neurons")


def _check_kind(crit: Criterion, units) -> None:
    if units.kind not in KINDS:
        raise XpruneError(
            f"criterion {crit.name!r} scores transformer heads and MLP neurons; pass units='heads' or "
            f"units='neurons' (got {units.kind!r}; for channels use e.g. 'taylor' or 'weight')"
        )


def _specs(model: nn.Module, units) -> dict:
    return {g.name: spec_of(model, units.kind, g.name) for g in units}


def _mask(inputs: Any) -> torch.Tensor | None:
    return _inputs.token_mask(inputs)


def _feature_dim(module: nn.Module, output: bool) -> int:
    """Axis of ``module.weight`` that indexes output (``output=True``) or input features."""
    if is_conv1d(module):  # GPT-2's Conv1D: weight [in, out]
        return 1 if output else 0
    return 0 if output else 1


def _head_feature_units(spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit of every query-width feature and of every key/value-width feature (``[H*d]``, ``[KV*d]``)."""
    q = torch.empty(spec.num_heads * spec.head_dim, dtype=torch.long)
    kv = torch.empty(spec.num_kv_heads * spec.head_dim, dtype=torch.long)
    for u in range(spec.units):
        q[spec.q_index([u])] = u
        kv[spec.kv_index([u])] = u
    return q, kv


def unit_slices(model: nn.Module, kind: str, spec) -> list[tuple[str, int, torch.Tensor]]:
    """The parameters belonging to the units of one attention block / MLP.

    Returns ``(parameter name, axis, unit_of_index)`` triples: along ``axis``
    of the named parameter, index ``i`` belongs to unit ``unit_of_index[i]``
    (``-1``: to no unit).
    """
    modules = dict(model.named_modules())
    out: list[tuple[str, int, torch.Tensor]] = []

    def add(mod_name: str, output: bool, units_of: torch.Tensor) -> None:
        m = modules[mod_name]
        out.append((f"{mod_name}.weight", _feature_dim(m, output), units_of))
        if output and isinstance(getattr(m, "bias", None), torch.Tensor):
            out.append((f"{mod_name}.bias", 0, units_of))

    if kind == "heads":
        q, kv = _head_feature_units(spec)
        if spec.fused:
            add(spec.fused, True, torch.cat([q, kv, kv]))
        else:
            add(spec.q, True, q)
            add(spec.k, True, kv)
            add(spec.v, True, kv)
        add(spec.o, False, q)
    else:
        idx = torch.arange(spec.size)
        for name in spec.inputs:
            add(name, True, idx)
        add(spec.output, False, idx)
    return out


def _per_unit(t: torch.Tensor, axis: int, units_of: torch.Tensor, n_units: int) -> torch.Tensor:
    """Sum of ``t`` over all axes but ``axis``, then over the indices of each unit -> ``[n_units]``."""
    per_index = t.double().movedim(axis, 0).reshape(t.shape[axis], -1).sum(1)
    units_of = units_of.to(per_index.device)
    keep = units_of >= 0
    s = torch.zeros(n_units, dtype=torch.float64, device=per_index.device)
    return s.index_add_(0, units_of[keep], per_index[keep]).cpu()


# ----------------------------------------------------------------------------- wanda


@register("wanda")
class Wanda(Criterion):
    r"""Structured Wanda (Wanda-sp): :math:`s_u = \sum_{j \in J(u)} \|X_j\|_2 \sum_i |W_{ij}|` on the projection
    reading the unit.

    See :mod:`xprune.transformers.criteria` for the formula and references.
    """

    def distributed_sums(self, kind: str) -> bool:
        return kind in KINDS

    def compute(self, model, units, data, *, target="label"):
        from .. import distributed

        _check_kind(self, units)
        specs = _specs(model, units)
        modules = dict(model.named_modules())
        reader = {n: (s.o if units.kind == "heads" else s.output) for n, s in specs.items()}
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, float] = {}
        current: dict[str, torch.Tensor | None] = {"mask": None}

        def hook_for(name: str):
            def hook(module, args):
                x = args[0].detach()
                sq = x.double().pow(2)
                m = current["mask"]
                if m is not None and tuple(m.shape) == tuple(x.shape[:2]):
                    sq = sq * m.to(sq.device, sq.dtype)[..., None]
                    n = float(m.sum())
                else:
                    n = float(x[..., 0].numel())
                part = sq.reshape(-1, x.shape[-1]).sum(0)
                sums[name] = sums[name] + part if name in sums else part
                counts[name] = counts.get(name, 0.0) + n

            return hook

        handles = [modules[reader[n]].register_forward_pre_hook(hook_for(n)) for n in specs]
        try:
            with torch.no_grad():
                for inputs, _ in data:
                    current["mask"] = _mask(inputs)
                    _inputs.call(model, inputs)
        finally:
            for h in handles:
                h.remove()
        sums, counts = distributed.all_reduce_sums(sums, counts)
        scores = {}
        for name, spec in specs.items():
            m = modules[reader[name]]
            if name not in sums:
                raise DataError(
                    f"wanda: {reader[name]!r} never ran on the calibration data; is {name!r} used by the "
                    "model's forward pass?"
                )
            col = _feature_dim(m, output=False)
            w_abs = m.weight.detach().double().abs()
            per_feature = w_abs.sum(1 - col) * sums[name].to(w_abs.device).sqrt()  # sum_i |W_ij| * ||X_j||
            if units.kind == "heads":
                q, _ = _head_feature_units(spec)
                scores[name] = _per_unit(per_feature, 0, q, spec.units)
            else:
                scores[name] = per_feature.cpu()
        return scores


# ----------------------------------------------------------------------------- llm-pruner


@register("llm-pruner")
class LLMPruner(Criterion):
    r"""LLM-Pruner's first-order Taylor importance of each head / KV group / neuron:
    :math:`\sum_{w \in u} |w \, \partial L/\partial w|`.

    ``aggregate="element"`` (default, ``param_first``) or ``"vector"``
    (:math:`\sum_P |\sum_{w \in P \cap u} w \, \partial L/\partial w|`); the
    loss is the mean causal-LM next-token loss on the calibration tokens
    (with labels per token, Hugging Face's ``labels``: the mean cross-entropy
    at the labelled tokens; ``target="embedding"``: minus the similarity to
    the original embedding). See :mod:`xprune.transformers.criteria`.
    """

    default_normalize: ClassVar[str | None] = None

    def __init__(self, aggregate: str = "element"):
        if aggregate not in ("element", "vector"):
            raise XpruneError(
                f"aggregate must be 'element' (sum of |w*g|, LLM-Pruner's param_first) or 'vector' "
                f"(|sum of w*g| per weight tensor); got {aggregate!r}"
            )
        self.aggregate = aggregate

    def distributed_sums(self, kind: str) -> bool:
        return kind in KINDS

    def compute(self, model, units, data, *, target="label"):
        from .. import distributed

        _check_kind(self, units)
        specs = _specs(model, units)
        params = dict(model.named_parameters())
        slices = {n: unit_slices(model, units.kind, s) for n, s in specs.items()}
        names = list(dict.fromkeys(p for sl in slices.values() for p, _, _ in sl))
        missing = [p for p in names if p not in params]
        if missing:
            raise XpruneError(
                f"llm-pruner: parameters {missing[:3]} are not parameters of the model (shared or "
                "re-parametrised weights are not supported)"
            )
        wanted = [params[p] for p in names]
        grads: dict[str, torch.Tensor] = {}
        tokens = 0
        flags = [p.requires_grad for p in wanted]
        try:
            for p in wanted:
                p.requires_grad_(True)
            for inputs, labels in data:
                with torch.enable_grad():
                    nll, n = self._loss(model, inputs, labels, target)
                    gs = torch.autograd.grad(nll, wanted, allow_unused=True)
                tokens += n
                for p, w, g in zip(names, wanted, gs, strict=True):
                    if g is None:
                        continue
                    acc = torch.promote_types(w.dtype, torch.float32)
                    grads[p] = grads[p] + g.to(acc) if p in grads else g.detach().to(acc)
        finally:
            for p, f in zip(wanted, flags, strict=True):
                p.requires_grad_(f)
        grads, counts = distributed.all_reduce_sums(grads, dict.fromkeys(grads, tokens))
        total = max(float(next(iter(counts.values()), 0) if counts else 0), 1.0)
        scores = {}
        for name, _spec in specs.items():
            s = torch.zeros(units[name].size, dtype=torch.float64)
            for p, axis, units_of in slices[name]:
                if p not in grads:
                    continue
                wg = params[p].detach().double() * grads[p].double() / total
                if self.aggregate == "element":
                    s += _per_unit(wg.abs(), axis, units_of, len(s))
                else:
                    s += _per_unit(wg, axis, units_of, len(s)).abs()
            scores[name] = s
        return scores

    @staticmethod
    def _loss(model, inputs, labels, target) -> tuple[torch.Tensor, int]:
        """The summed loss of one batch and the number of terms in it.

        Labels per token (Hugging Face's ``labels``) or ``target="embedding"``:
        minus the batch's :class:`~xprune.criteria.base.Objective` (the
        cross-entropy at the labelled tokens; minus the similarity to the
        original embedding). Otherwise the next-token loss of ``input_ids``.
        """
        from ..criteria.base import Objective
        from ..llm import next_token_nll

        per_token = isinstance(labels, torch.Tensor) and labels.dim() >= 2
        if per_token or (isinstance(target, str) and target == "embedding"):
            objective = Objective.of(target, _inputs.call(model, inputs), labels, inputs=inputs, model=model)
            value = objective.value(objective="logit" if objective.is_embedding else "loss")
            return -value, objective.count
        ids = inputs["input_ids"] if isinstance(inputs, dict) else inputs
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise DataError(
                "llm-pruner needs token ids [batch, seq_len] (a LongTensor or a dict with "
                "'input_ids'), e.g. xprune.llm.calibration(...)"
            )
        logits = _inputs.logits(_inputs.call(model, inputs))
        if logits.dim() != 3 or logits.shape[:2] != ids.shape:
            raise XpruneError(
                "llm-pruner needs a causal language model whose output holds logits "
                f"[batch, seq_len, vocab]; got shape {tuple(logits.shape)} for ids "
                f"{tuple(ids.shape)} (use e.g. LlamaForCausalLM, not LlamaModel)"
            )
        return next_token_nll(logits, ids, _mask(inputs))

    def __repr__(self) -> str:
        return f"LLMPruner(aggregate={self.aggregate!r})"
