"""Removing (or masking) attention heads and MLP neurons, and loading pruned Hugging Face models.

Removal slices the weights of every projection the units touch and updates
the attributes the forward pass reads:

- heads: rows of ``q``/``k``/``v`` (GPT-2: the three thirds of ``c_attn``),
  columns of the output projection; ``num_heads``/``num_attention_heads``,
  ``num_key_value_heads``, ``all_head_size`` and ``split_size`` of the
  attention modules are set to the new counts wherever they exist. The head
  width is unchanged, so the attention scaling stays the same.
- neurons: rows of ``fc1`` (or ``gate_proj`` and ``up_proj``), columns of
  ``fc2`` (``down_proj``); ``intermediate_size`` is updated where it exists.

Mask mode zeroes the same slices (and biases) instead: the masked model
computes the same function as the removed one (a masked head has zero values
and its output columns are zero; a masked neuron's output column is zero).

Hugging Face models: after removal the per-layer sizes are recorded in
``model.config.xprune_pruning`` (``{"heads": [...], "kv_heads": [...],
"neurons": [...]}``, one entry per block in module order), so that a model
saved with ``save_pretrained`` can be rebuilt with :func:`load_pruned`.
transformers 5 has no ``prune_heads`` and ignores ``head_mask``; none of this
relies on either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError
from .adapters import AttentionSpec, MLPSpec, attention_specs, is_conv1d, mlp_specs

__all__ = ["remove_heads", "remove_neurons", "load_pruned", "record_sizes", "resize_to"]

_HEAD_ATTRS = ("num_heads", "num_attention_heads")
#: parameters holding one slice per query head, and the dimension indexing the heads:
#: Swin's relative position bias table [(2w-1)^2, heads], Swin V2's logit scale [heads, 1, 1]
_PER_HEAD_TABLES = {"relative_position_bias_table": -1, "logit_scale": 0}


def _per_head_tables(model: nn.Module, spec) -> list[tuple[str, nn.Module, str, int]]:
    """``(qualified name, owner module, attribute, head dim)`` of every per-head table under the block."""
    found, seen = [], set()
    for root in dict.fromkeys((spec.name, *spec.owners)):
        for name, module in model.get_submodule(root).named_modules():
            for attr, dim in _PER_HEAD_TABLES.items():
                t = module._parameters.get(attr)
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                qualified = ".".join(n for n in (root, name, attr) if n)
                if t.shape[dim] != spec.num_heads:
                    raise XpruneError(f"{qualified} has {t.shape[dim]} slices along dim {dim}, expected one per head "
                                      f"({spec.num_heads}); prune this model's heads with units='neurons' instead")
                found.append((qualified, module, attr, dim))
    return found


# ----------------------------------------------------------------------------- slicing primitives


@torch.no_grad()
def _keep_out(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` of a Linear / Conv1D layer."""
    idx = idx.to(module.weight.device)
    if is_conv1d(module):
        module.weight = nn.Parameter(module.weight.index_select(1, idx).clone(), module.weight.requires_grad)
        module.nf = len(idx)
    else:
        module.weight = nn.Parameter(module.weight.index_select(0, idx).clone(), module.weight.requires_grad)
        module.out_features = len(idx)
    if module.bias is not None:
        module.bias = nn.Parameter(module.bias.index_select(0, idx).clone(), module.bias.requires_grad)


@torch.no_grad()
def _keep_in(module: nn.Module, idx: torch.Tensor) -> None:
    """Keep input features ``idx`` of a Linear / Conv1D layer."""
    idx = idx.to(module.weight.device)
    if is_conv1d(module):
        module.weight = nn.Parameter(module.weight.index_select(0, idx).clone(), module.weight.requires_grad)
        module.nx = len(idx)
    else:
        module.weight = nn.Parameter(module.weight.index_select(1, idx).clone(), module.weight.requires_grad)
        module.in_features = len(idx)


@torch.no_grad()
def _zero_out(module: nn.Module, idx: torch.Tensor) -> None:
    idx = idx.to(module.weight.device)
    module.weight.index_fill_(1 if is_conv1d(module) else 0, idx, 0.0)
    if module.bias is not None:
        module.bias.index_fill_(0, idx, 0.0)


@torch.no_grad()
def _zero_in(module: nn.Module, idx: torch.Tensor) -> None:
    module.weight.index_fill_(0 if is_conv1d(module) else 1, idx.to(module.weight.device), 0.0)


def _set_if(module: nn.Module, attr: str, value: int) -> None:
    if isinstance(getattr(module, attr, None), int) and not isinstance(getattr(type(module), attr, None), property):
        setattr(module, attr, int(value))


# ----------------------------------------------------------------------------- heads


def _check(name: str, units: list[int], size: int, what: str) -> list[int]:
    units = sorted(set(int(u) for u in units))
    if any(u < 0 or u >= size for u in units):
        raise XpruneError(f"{what} indices for {name!r} must lie in [0, {size}), got {units}")
    if len(units) >= size:
        raise XpruneError(f"cannot remove all {size} {what} of {name!r}; keep at least one")
    return units


def remove_heads(model: nn.Module, spec: AttentionSpec, units, mode: str = "remove") -> None:
    """Remove (``mode="remove"``) or zero (``"mask"``) units of one attention block, in place.

    ``units`` are KV-group indices (= head indices without grouped-query attention).
    """
    units = _check(spec.name, units, spec.units, "heads")
    if not units:
        return
    modules = dict(model.named_modules())
    keep = [u for u in range(spec.units) if u not in units]
    q_sel, kv_sel = (spec.q_index(keep), spec.kv_index(keep)) if mode == "remove" else (
        spec.q_index(units), spec.kv_index(units))
    if spec.fused:
        width_q, width_kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        fused_sel = torch.cat([q_sel, width_q + kv_sel, width_q + width_kv + kv_sel])
        targets = [(modules[spec.fused], fused_sel)]
    else:
        targets = [(modules[spec.q], q_sel), (modules[spec.k], kv_sel), (modules[spec.v], kv_sel)]
    o = modules[spec.o]
    if mode == "mask":
        for m, idx in targets:
            _zero_out(m, idx)
        _zero_in(o, q_sel)
        return
    tables = _per_head_tables(model, spec)  # checked before any tensor changes
    for m, idx in targets:
        _keep_out(m, idx)
    _keep_in(o, q_sel)
    q_heads = torch.as_tensor([u * spec.group_size + j for u in keep for j in range(spec.group_size)])
    for _, module, attr, dim in tables:
        t = module._parameters[attr]
        module._parameters[attr] = nn.Parameter(t.detach().index_select(dim % t.dim(), q_heads.to(t.device)).clone(),
                                                requires_grad=t.requires_grad)
    heads, kv = len(keep) * spec.group_size, len(keep)
    for owner in spec.owners:
        m = modules[owner]
        for attr in _HEAD_ATTRS:
            _set_if(m, attr, heads)
        _set_if(m, "num_key_value_heads", kv)
        _set_if(m, "all_head_size", heads * spec.head_dim)
        _set_if(m, "split_size", heads * spec.head_dim)


def remove_neurons(model: nn.Module, spec: MLPSpec, units, mode: str = "remove") -> None:
    """Remove (``mode="remove"``) or zero (``"mask"``) neurons of one MLP, in place."""
    units = _check(spec.name, units, spec.size, "neurons")
    if not units:
        return
    modules = dict(model.named_modules())
    if mode == "mask":
        idx = torch.tensor(units, dtype=torch.long)
        for n in spec.inputs:
            _zero_out(modules[n], idx)
        _zero_in(modules[spec.output], idx)
        return
    keep = torch.tensor([u for u in range(spec.size) if u not in set(units)], dtype=torch.long)
    for n in spec.inputs:
        _keep_out(modules[n], keep)
    _keep_in(modules[spec.output], keep)
    for owner in spec.owners:
        _set_if(modules[owner], "intermediate_size", len(keep))


# ----------------------------------------------------------------------------- save / load


def record_sizes(model: nn.Module) -> dict[str, Any] | None:
    """Write the per-block sizes into ``model.config.xprune_pruning`` (Hugging Face models only).

    Returns the record, or ``None`` for models without a ``config``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    att, mlp = attention_specs(model), mlp_specs(model)
    record = {"heads": [s.num_heads for s in att], "kv_heads": [s.num_kv_heads for s in att],
              "neurons": [s.size for s in mlp]}
    config.xprune_pruning = record
    return record


def resize_to(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Shrink a freshly built model to the sizes of ``record`` (keeping the first units), in place."""
    att, mlp = attention_specs(model), mlp_specs(model)
    if len(att) != len(record.get("heads", [])) or len(mlp) != len(record.get("neurons", [])):
        raise XpruneError(f"the pruning record lists {len(record.get('heads', []))} attention blocks and "
                          f"{len(record.get('neurons', []))} MLPs, the model has {len(att)} and {len(mlp)}")
    for spec, heads, kv in zip(att, record["heads"], record["kv_heads"]):
        if spec.group_size * kv != heads or kv > spec.units:
            raise XpruneError(f"{spec.name!r}: cannot shrink {spec.num_heads}/{spec.num_kv_heads} heads to {heads}/{kv}")
        remove_heads(model, spec, range(kv, spec.units), "remove")
    for spec, size in zip(mlp, record["neurons"]):
        if size > spec.size:
            raise XpruneError(f"{spec.name!r}: cannot grow {spec.size} neurons to {size}")
        remove_neurons(model, spec, range(size, spec.size), "remove")
    record_sizes(model)
    return model


def load_pruned(path: str | Path, model_class: Any = None, **config_overrides: Any) -> nn.Module:
    """Load a Hugging Face model saved with ``save_pretrained`` after xprune removed heads/neurons.

    Parameters
    ----------
    path : str or Path
        The directory written by ``save_pretrained``.
    model_class : class, optional
        E.g. ``transformers.GPT2LMHeadModel``; default: the first class named
        in ``config.architectures``, else ``AutoModel``.
    **config_overrides :
        Set on the config before building (e.g. ``attn_implementation="eager"``).

    Returns
    -------
    The model in eval mode, with the recorded per-layer sizes and the saved weights.
    A directory without an ``xprune_pruning`` record is loaded with ``from_pretrained``.
    """
    import transformers
    from safetensors.torch import load_file

    path = Path(path)
    config = transformers.AutoConfig.from_pretrained(path)
    if model_class is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, arch, None) if arch else None
        model_class = model_class or transformers.AutoModel
    record = getattr(config, "xprune_pruning", None)
    if record is None:
        return model_class.from_pretrained(path, **config_overrides).eval()
    attn = config_overrides.pop("attn_implementation", None)
    for k, v in config_overrides.items():
        setattr(config, k, v)
    build = model_class.from_config if hasattr(model_class, "from_config") else model_class
    model = build(config, attn_implementation=attn) if attn else build(config)
    resize_to(model, record)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise XpruneError(f"no .safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set()
    if hasattr(model, "tie_weights"):
        model.tie_weights()
        tied = {k for k in missing if "lm_head" in k or "decoder" in k}
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise XpruneError(f"weights in {path} do not fit the rebuilt model: missing {missing[:5]}, "
                          f"unexpected {list(unexpected)[:5]}")
    return model.eval()
