r"""Where the heads and MLP neurons of a transformer live: architecture adapters.

An adapter recognises the attention blocks and MLPs of a model *by
structure* (which projections a module owns), not by class name, and
describes them as :class:`AttentionSpec` and :class:`MLPSpec`: the qualified
names of the projections, the head layout and the attributes a forward pass
reads. Everything else in :mod:`xprune.transformers` (unit discovery, gates,
surgery, relevance) works on these specs only.

Recognised layouts
------------------
==============================  ==============================================
attention                       projections
==============================  ==============================================
xprune ViT ``Attention``        ``q``, ``k``, ``v`` -> ``proj``
``q_proj/k_proj/v_proj/o_proj`` Llama family (incl. grouped-query attention),
                                Hugging Face ViT (transformers 5), Mistral, ...
BERT family                     ``self.query/key/value`` -> ``output.dense``
GPT-2                           fused ``c_attn`` (Conv1D, ``[q | k | v]``)
                                -> ``c_proj``
==============================  ==============================================

==============================  ==============================================
MLP                             projections
==============================  ==============================================
``fc1`` / ``fc2``               xprune ViT, Hugging Face ViT
``gate_proj, up_proj`` ->       Llama family (gated: ``act(gate(x)) * up(x)``)
``down_proj``
``c_fc`` -> ``c_proj``          GPT-2 (Conv1D)
``intermediate.dense`` ->       BERT family (the group is named after
``output.dense``                ``...intermediate``)
==============================  ==============================================

Grouped-query attention: query head :math:`h` reads key/value head
:math:`\lfloor h / r \rfloor` with :math:`r` = ``num_heads / num_kv_heads``
(the layout of ``repeat_kv`` in transformers). The prunable unit is a *KV
group*: one key/value head together with its :math:`r` query heads, so
removing a unit never leaves a query head without its keys and values. For
ordinary multi-head attention :math:`r = 1` and a unit is one head.
Cross-attention blocks are not recognised (their keys come from another
sequence; not supported).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError
from ..layers import is_conv1d

__all__ = ["AttentionSpec", "MLPSpec", "attention_specs", "mlp_specs", "is_conv1d", "out_features", "in_features"]


# ----------------------------------------------------------------------------- linear-like layers


def _linear_like(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) or (module is not None and is_conv1d(module))


def out_features(module: Any) -> int:
    """Output width of an ``nn.Linear`` or a transformers ``Conv1D`` (typed ``Any``: the two share no typed base)."""
    return module.nf if is_conv1d(module) else module.out_features


def in_features(module: Any) -> int:
    """Input width of an ``nn.Linear`` or a transformers ``Conv1D``."""
    return module.nx if is_conv1d(module) else module.in_features


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class AttentionSpec:
    """One self-attention block.

    Attributes
    ----------
    name : str
        Qualified name of the attention module (the unit group's name).
    q, k, v : str or None
        Names of the query/key/value projections (``None`` when fused).
    fused : str or None
        Name of a fused ``[q | k | v]`` projection (GPT-2's ``c_attn``).
    o : str
        Name of the output projection; its input is ``concat_h(head_h)``.
    owners : tuple of str
        Modules whose head-count attributes (``num_heads``,
        ``num_attention_heads``, ``num_key_value_heads``, ``all_head_size``,
        ``split_size``) must follow the weights after removal.
    head_dim, num_heads, num_kv_heads : int
        Head width and current numbers of query and key/value heads.
    layout : str
        ``"xprune"``, ``"qkvo"``, ``"bert"`` or ``"gpt2"``.
    """

    name: str
    q: str | None
    k: str | None
    v: str | None
    fused: str | None
    o: str
    owners: tuple[str, ...]
    head_dim: int
    num_heads: int
    num_kv_heads: int
    layout: str

    @property
    def group_size(self) -> int:
        """Query heads per unit (KV group): ``num_heads // num_kv_heads``."""
        return self.num_heads // self.num_kv_heads

    @property
    def units(self) -> int:
        """Number of prunable units (KV groups; = heads without GQA)."""
        return self.num_kv_heads

    @property
    def inputs(self) -> tuple[str, ...]:
        """The projections reading the block input."""
        return (self.fused,) if self.fused else tuple(p for p in (self.q, self.k, self.v) if p is not None)

    def query_heads(self, units) -> list[int]:
        """Query heads belonging to the given units."""
        r = self.group_size
        return [u * r + j for u in units for j in range(r)]

    def q_index(self, units) -> torch.Tensor:
        """Rows of the query projection (= columns of ``o``) of the given units."""
        d = self.head_dim
        return torch.tensor([h * d + i for h in self.query_heads(units) for i in range(d)], dtype=torch.long)

    def kv_index(self, units) -> torch.Tensor:
        """Rows of the key and value projections of the given units."""
        d = self.head_dim
        return torch.tensor([u * d + i for u in units for i in range(d)], dtype=torch.long)


@dataclass(frozen=True)
class MLPSpec:
    """One transformer MLP ``out(act(in(x)))`` or gated ``out(act(gate(x)) * up(x))``.

    Attributes
    ----------
    name : str
        The unit group's name: the MLP module (BERT family: ``...intermediate``).
    inputs : tuple of str
        Projections producing the intermediate units (``(fc1,)`` or ``(gate, up)``).
    output : str
        The projection consuming them (``fc2`` / ``down_proj``); its input is
        the intermediate activation whose entries are the neurons.
    act : str or None
        The activation module (for the gated MLP: the one applied to ``gate``).
    owners : tuple of str
        Modules whose ``intermediate_size`` attribute must follow the weights.
    size : int
        Number of neurons.
    gated : bool
        Whether the MLP multiplies two projections (``gate`` and ``up``).
    """

    name: str
    inputs: tuple[str, ...]
    output: str
    act: str | None
    owners: tuple[str, ...]
    size: int
    gated: bool = False


# ----------------------------------------------------------------------------- detection


def _child(module: nn.Module, path: str) -> nn.Module | None:
    node: Any = module
    for part in path.split("."):
        node = getattr(node, part, None)
        if not isinstance(node, nn.Module):
            return None
    return node


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _attention_of(name: str, m: nn.Module) -> AttentionSpec | None:
    from ..models.vit import Attention as XAttention

    if getattr(m, "is_cross_attention", False):
        return None
    if isinstance(m, XAttention):
        hd = m.head_dim
        return AttentionSpec(
            name,
            _join(name, "q"),
            _join(name, "k"),
            _join(name, "v"),
            None,
            _join(name, "proj"),
            (name,),
            hd,
            m.q.out_features // hd,
            m.k.out_features // hd,
            "xprune",
        )
    q, k, v, o = (_child(m, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if all(_linear_like(t) for t in (q, k, v, o)):
        d = getattr(m, "head_dim", None)
        if not isinstance(d, int):
            cfg = getattr(m, "config", None)
            heads = getattr(m, "num_heads", None) or getattr(cfg, "num_attention_heads", None)
            if not heads:
                return None
            d = out_features(q) // int(heads)
        return AttentionSpec(
            name,
            _join(name, "q_proj"),
            _join(name, "k_proj"),
            _join(name, "v_proj"),
            None,
            _join(name, "o_proj"),
            (name,),
            d,
            out_features(q) // d,
            out_features(k) // d,
            "qkvo",
        )
    sa, out = _child(m, "self"), _child(m, "output.dense")
    if sa is not None and out is not None and not getattr(sa, "is_cross_attention", False):
        q, k, v = (_child(sa, p) for p in ("query", "key", "value"))
        d = getattr(sa, "attention_head_size", None)
        if all(_linear_like(t) for t in (q, k, v, out)) and isinstance(d, int):
            if "Cross" in type(sa).__name__:
                return None
            s = _join(name, "self")
            return AttentionSpec(
                name,
                _join(s, "query"),
                _join(s, "key"),
                _join(s, "value"),
                None,
                _join(name, "output.dense"),
                (name, s),
                d,
                out_features(q) // d,
                out_features(k) // d,
                "bert",
            )
    c_attn, c_proj = _child(m, "c_attn"), _child(m, "c_proj")
    if _linear_like(c_attn) and _linear_like(c_proj) and hasattr(m, "split_size") and not hasattr(m, "q_attn"):
        d = int(m.head_dim)  # type: ignore[arg-type]  # GPT-2 attention: plain int attributes
        heads = int(m.split_size) // d  # type: ignore[arg-type]  # as above
        return AttentionSpec(
            name, None, None, None, _join(name, "c_attn"), _join(name, "c_proj"), (name,), d, heads, heads, "gpt2"
        )
    return None


def _mlp_of(name: str, m: nn.Module) -> MLPSpec | None:
    fc1, fc2 = _child(m, "fc1"), _child(m, "fc2")
    if _linear_like(fc1) and _linear_like(fc2) and out_features(fc1) == in_features(fc2):
        act = next((a for a in ("act", "activation_fn", "act_fn") if _child(m, a) is not None), None)
        return MLPSpec(
            name, (_join(name, "fc1"),), _join(name, "fc2"), act and _join(name, act), (name,), out_features(fc1)
        )
    g, u, dn = _child(m, "gate_proj"), _child(m, "up_proj"), _child(m, "down_proj")
    if all(_linear_like(t) for t in (g, u, dn)) and out_features(g) == out_features(u) == in_features(dn):
        act = next((a for a in ("act_fn", "act", "activation_fn") if _child(m, a) is not None), None)
        return MLPSpec(
            name,
            (_join(name, "gate_proj"), _join(name, "up_proj")),
            _join(name, "down_proj"),
            act and _join(name, act),
            (name,),
            out_features(g),
            gated=True,
        )
    c_fc, c_proj = _child(m, "c_fc"), _child(m, "c_proj")
    if _linear_like(c_fc) and _linear_like(c_proj) and out_features(c_fc) == in_features(c_proj):
        act = "act" if _child(m, "act") is not None else None
        return MLPSpec(
            name, (_join(name, "c_fc"),), _join(name, "c_proj"), act and _join(name, act), (name,), out_features(c_fc)
        )
    inter, out = _child(m, "intermediate.dense"), _child(m, "output.dense")
    if (
        _linear_like(inter)
        and _linear_like(out)
        and out_features(inter) == in_features(out)
        and _child(m, "attention") is not None
    ):
        iname = _join(name, "intermediate")
        act = "intermediate_act_fn" if _child(m, "intermediate.intermediate_act_fn") is not None else None
        return MLPSpec(
            iname,
            (_join(iname, "dense"),),
            _join(name, "output.dense"),
            act and _join(iname, act),
            (iname,),
            out_features(inter),
        )
    return None


def _walk(model: nn.Module, finder) -> Iterator:
    claimed: set[str] = set()
    for name, m in model.named_modules():
        if any(name == c or name.startswith(c + ".") for c in claimed):
            continue
        spec = finder(name, m)
        if spec is not None:
            claimed.add(name)
            yield spec


def attention_specs(model: nn.Module) -> list[AttentionSpec]:
    """All self-attention blocks of ``model`` that xprune can prune, in ``named_modules`` order.

    Raises :class:`~xprune.errors.XpruneError` if a block's head layout is
    inconsistent (e.g. a width that is not a multiple of the head width).
    """
    specs = list(_walk(model, _attention_of))
    modules = dict(model.named_modules())
    for s in specs:
        if s.num_heads < 1 or s.num_kv_heads < 1 or s.num_heads % s.num_kv_heads:
            raise XpruneError(
                f"attention {s.name!r}: {s.num_heads} query heads cannot be split into "
                f"{s.num_kv_heads} key/value groups"
            )
        width = s.num_heads * s.head_dim
        if in_features(modules[s.o]) != width:
            raise XpruneError(
                f"attention {s.name!r}: output projection reads {in_features(modules[s.o])} "
                f"features, expected {s.num_heads} heads x {s.head_dim}"
            )
    return specs


def mlp_specs(model: nn.Module) -> list[MLPSpec]:
    """All transformer MLPs of ``model`` that xprune can prune, in ``named_modules`` order."""
    return list(_walk(model, _mlp_of))


def spec_of(model: nn.Module, kind: str, name: str) -> AttentionSpec | MLPSpec:
    """The spec of the attention block (``kind="heads"``) or MLP (``"neurons"``) called ``name``."""
    specs = attention_specs(model) if kind == "heads" else mlp_specs(model)
    for s in specs:
        if s.name == name:
            return s
    what = "attention block" if kind == "heads" else "MLP"
    raise XpruneError(
        f"the model has no {what} named {name!r} (found: {[s.name for s in specs]}); "
        "was the plan made for another model?"
    )
