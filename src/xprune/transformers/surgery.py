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
``config.xprune_pruning`` of every ``PreTrainedModel`` inside the pruned
module, also one held by a wrapper (``{"heads": [...], "kv_heads": [...],
"neurons": [...]}``, one entry per block in module order), so that a model
saved with ``save_pretrained`` can be rebuilt with :func:`load_pruned`. Where
every block kept the same size and the config can express it, the config's
size fields follow too and plain ``from_pretrained`` works (see
:func:`record_sizes` for which fields, per architecture family).
transformers 5 has no ``prune_heads`` and ignores ``head_mask``; none of this
relies on either.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError, XpruneWarning
from .adapters import AttentionSpec, MLPSpec, attention_specs, is_conv1d, mlp_specs

__all__ = ["remove_heads", "remove_neurons", "load_pruned", "record_sizes", "resize_to", "hf_models"]

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
                    raise XpruneError(
                        f"{qualified} has {t.shape[dim]} slices along dim {dim}, expected one per head "
                        f"({spec.num_heads}); prune this model's heads with units='neurons' instead"
                    )
                found.append((qualified, module, attr, dim))
    return found


# ----------------------------------------------------------------------------- slicing primitives


@torch.no_grad()
def _keep_out(module: Any, idx: torch.Tensor) -> None:  # nn.Linear or transformers Conv1D
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
def _keep_in(module: Any, idx: torch.Tensor) -> None:  # nn.Linear or transformers Conv1D
    """Keep input features ``idx`` of a Linear / Conv1D layer."""
    idx = idx.to(module.weight.device)
    if is_conv1d(module):
        module.weight = nn.Parameter(module.weight.index_select(0, idx).clone(), module.weight.requires_grad)
        module.nx = len(idx)
    else:
        module.weight = nn.Parameter(module.weight.index_select(1, idx).clone(), module.weight.requires_grad)
        module.in_features = len(idx)


@torch.no_grad()
def _zero_out(module: Any, idx: torch.Tensor) -> None:  # nn.Linear or transformers Conv1D
    idx = idx.to(module.weight.device)
    module.weight.index_fill_(1 if is_conv1d(module) else 0, idx, 0.0)
    if module.bias is not None:
        module.bias.index_fill_(0, idx, 0.0)


@torch.no_grad()
def _zero_in(module: Any, idx: torch.Tensor) -> None:  # nn.Linear or transformers Conv1D
    module.weight.index_fill_(0 if is_conv1d(module) else 1, idx.to(module.weight.device), 0.0)


def _set_if(module: nn.Module, attr: str, value: int) -> None:
    if isinstance(getattr(module, attr, None), int) and not isinstance(getattr(type(module), attr, None), property):
        setattr(module, attr, int(value))


# ----------------------------------------------------------------------------- heads


def _check(name: str, units: list[int], size: int, what: str) -> list[int]:
    units = sorted({int(u) for u in units})
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
    q_sel, kv_sel = (
        (spec.q_index(keep), spec.kv_index(keep)) if mode == "remove" else (spec.q_index(units), spec.kv_index(units))
    )
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
        assert t is not None  # _per_head_tables lists set parameters only
        module._parameters[attr] = nn.Parameter(
            t.detach().index_select(dim % t.dim(), q_heads.to(t.device)).clone(), requires_grad=t.requires_grad
        )
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


def hf_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(qualified name, module)`` of every Hugging Face ``PreTrainedModel`` inside ``model`` (itself included).

    Outermost first (``named_modules`` order); empty when transformers was never
    imported (then no such model can exist).
    """
    mod = sys.modules.get("transformers")
    base = getattr(mod, "PreTrainedModel", None) if mod is not None else None
    if base is None:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, base)]


def _sizes(model: nn.Module) -> tuple[dict[str, Any], list[AttentionSpec], list[MLPSpec]]:
    att, mlp = attention_specs(model), mlp_specs(model)
    record = {
        "heads": [s.num_heads for s in att],
        "kv_heads": [s.num_kv_heads for s in att],
        "neurons": [s.size for s in mlp],
    }
    return record, att, mlp


class _quiet:
    """Silence transformers' logging and Python warnings while a throw-away model is built."""

    def __enter__(self):
        from transformers.utils import logging as hf_logging

        self._logging = hf_logging
        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        self._logging.set_verbosity(self._level)


def _config_candidates(config: Any, att: list[AttentionSpec], mlp: list[MLPSpec]) -> dict[str, dict[str, int]]:
    """Config fields that would describe the pruned sizes, per unit kind, where every block has the same size."""
    out: dict[str, dict[str, int]] = {}
    shapes = {(s.num_heads, s.num_kv_heads) for s in att}
    if len(shapes) == 1:
        heads, kv = shapes.pop()
        fields = {}
        if isinstance(getattr(config, "num_attention_heads", None), int) and config.num_attention_heads != heads:
            fields["num_attention_heads"] = heads
        if hasattr(config, "num_key_value_heads") and config.num_key_value_heads != kv:
            fields["num_key_value_heads"] = kv
        if fields:
            out["heads"] = fields
    sizes = {s.size for s in mlp}
    if len(sizes) == 1:
        size = sizes.pop()
        field = (
            "intermediate_size"
            if isinstance(getattr(config, "intermediate_size", None), int)
            else ("n_inner" if hasattr(config, "n_inner") else None)
        )  # GPT-2: n_inner (None = 4 x n_embd)
        current = getattr(config, field) if field is not None else None
        if field == "n_inner" and current is None:
            current = 4 * getattr(config, "n_embd", 0)  # what GPT-2 builds for n_inner=None
        if field is not None and current != size:
            out["neurons"] = {field: size}
    return out


def _config_builds(
    model: nn.Module, config: Any, att: list[AttentionSpec], mlp: list[MLPSpec], kinds: tuple[str, ...]
) -> bool:
    """Whether ``type(model)(config)``, built on the meta device, has the pruned sizes of ``kinds``.

    Also the parameters outside the attention blocks and MLPs must keep their
    shapes: a config field that changes anything else is not accepted.
    """
    try:
        with _quiet(), torch.device("meta"):
            fresh = type(model)(config)
        f_att, f_mlp = attention_specs(fresh), mlp_specs(fresh)
    except Exception:  # noqa: BLE001 - any failure to build means: leave the config as it is
        return False
    if len(f_att) != len(att) or len(f_mlp) != len(mlp):
        return False
    if "heads" in kinds and [(s.num_heads, s.num_kv_heads, s.head_dim) for s in f_att] != [
        (s.num_heads, s.num_kv_heads, s.head_dim) for s in att
    ]:
        return False
    if "neurons" in kinds and [s.size for s in f_mlp] != [s.size for s in mlp]:
        return False
    blocks = [n for s in att for n in (*s.inputs, s.o)] + [n for s in mlp for n in (*s.inputs, s.output)]

    def outside(named):
        return {k: tuple(v.shape) for k, v in named if not any(k.startswith(b + ".") for b in blocks)}

    return outside(fresh.named_parameters()) == outside(model.named_parameters())


def _update_config(model: nn.Module, att: list[AttentionSpec], mlp: list[MLPSpec]) -> dict[str, int]:
    """Set the size fields of ``model.config`` that a fresh model would read correctly; returns them."""
    candidates = _config_candidates(model.config, att, mlp)
    if not candidates:
        return {}
    tries = [tuple(candidates)] + ([(k,) for k in candidates] if len(candidates) > 1 else [])
    for kinds in tries:
        config = copy.deepcopy(model.config)
        fields = {f: v for k in kinds for f, v in candidates[k].items()}
        for f, v in fields.items():
            setattr(config, f, v)
        if _config_builds(model, config, att, mlp, kinds):
            for f, v in fields.items():
                setattr(model.config, f, v)
            return fields
    return {}


def record_sizes(model: nn.Module) -> dict[str, Any] | None:
    """Record the per-block sizes on every Hugging Face model inside ``model``, for saving and reloading.

    Every ``transformers.PreTrainedModel`` in ``model`` (``model`` itself, or
    one held by a wrapper such as
    :class:`~xprune.transformers.minilm.EmbeddingSimilarity`) gets
    ``config.xprune_pruning = {"heads": [...], "kv_heads": [...], "neurons":
    [...]}`` (one entry per block of its own sub-tree, in module order), which
    :func:`load_pruned` reads to rebuild the pruned model.

    Where every block kept the same number of heads (or MLP neurons) and a
    model built from the config would read the changed field correctly, the
    config's own size field is set as well, so that plain ``from_pretrained``
    rebuilds the model too:

    - ``intermediate_size`` (BERT family, ViT, Llama family) and ``n_inner``
      (GPT-2) when every MLP keeps the same number of neurons;
    - ``num_attention_heads`` / ``num_key_value_heads`` when every attention
      block keeps the same number of heads and the config states the head
      width itself (``head_dim``: Llama family). BERT, ViT and GPT-2 derive the
      head width as ``hidden_size / num_attention_heads``, so their head
      counts stay as they are and only :func:`load_pruned` rebuilds them.

    Each change is checked by building the model from the changed config on
    the ``meta`` device (no memory, no weights) and comparing every block's
    sizes and every other parameter's shape; a change that would build a
    different model is not made.

    Returns
    -------
    dict or None
        The record of the outermost Hugging Face model; ``None`` when ``model``
        holds none (and has no ``config`` itself).
    """
    found = hf_models(model)
    if not found:
        config = getattr(model, "config", None)
        if config is None or not hasattr(config, "to_dict"):
            return None
        record, _, _ = _sizes(model)
        config.xprune_pruning = record
        return record
    written: dict[int, tuple[str, dict[str, Any]]] = {}
    first = None
    for name, m in found:
        record, att, mlp = _sizes(m)
        if id(m.config) in written:  # e.g. BertForSequenceClassification and its .bert share one config
            other, rec = written[id(m.config)]
            if rec != record:
                warnings.warn(
                    f"{name!r} and {other or 'the model'!r} share one config but were pruned to different "
                    f"sizes; the saved record describes {other or 'the model'!r} only. Give each model "
                    "its own config (copy.deepcopy) before pruning to save both",
                    XpruneWarning,
                    stacklevel=3,
                )
            continue
        m.config.xprune_pruning = record  # type: ignore[union-attr]  # a transformers model: config is a PretrainedConfig
        _update_config(m, att, mlp)
        written[id(m.config)] = (name, record)
        first = record if first is None else first
    return first


def _shrink(model: nn.Module, record: dict[str, Any]) -> None:
    """Remove the last heads / neurons of every block down to the sizes of ``record``, in place."""
    att, mlp = attention_specs(model), mlp_specs(model)
    if len(att) != len(record.get("heads", [])) or len(mlp) != len(record.get("neurons", [])):
        raise XpruneError(
            f"the pruning record lists {len(record.get('heads', []))} attention blocks and "
            f"{len(record.get('neurons', []))} MLPs, the model has {len(att)} and {len(mlp)}"
        )
    for spec, heads, kv in zip(att, record["heads"], record["kv_heads"], strict=True):
        if spec.group_size * kv != heads or kv > spec.units:
            raise XpruneError(
                f"{spec.name!r}: cannot shrink {spec.num_heads}/{spec.num_kv_heads} heads to {heads}/{kv}"
            )
        remove_heads(model, spec, range(kv, spec.units), "remove")
    for mspec, size in zip(mlp, record["neurons"], strict=True):
        if size > mspec.size:
            raise XpruneError(f"{mspec.name!r}: cannot grow {mspec.size} neurons to {size}")
        remove_neurons(model, mspec, range(size, mspec.size), "remove")


def resize_to(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Shrink a freshly built model to the sizes of ``record`` (keeping the first units), in place."""
    _shrink(model, record)
    record_sizes(model)
    return model


def _concrete(model_class: Any, config: Any) -> type:
    """The model class an ``AutoModel...`` class would build from ``config`` (other classes unchanged)."""
    mapping = getattr(model_class, "_model_mapping", None)
    if mapping is None:
        return model_class
    try:
        return mapping[type(config)]
    except KeyError:
        raise XpruneError(
            f"{model_class.__name__} has no model for a {type(config).__name__}; "
            "pass the model class the folder was saved with"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_pruned(path: str | Path, model_class: Any = None, **config_overrides: Any) -> nn.Module:
    """Load a Hugging Face model saved with ``save_pretrained`` after xprune removed heads/neurons.

    Parameters
    ----------
    path : str or Path
        The directory written by ``save_pretrained`` (or
        :func:`xprune.transformers.hub.save`). Local files only: nothing is
        downloaded.
    model_class : class, optional
        E.g. ``transformers.GPT2LMHeadModel`` or an ``AutoModelFor...`` class;
        default: the first class named in ``config.architectures``, else
        ``AutoModel``.
    **config_overrides :
        Passed to ``from_pretrained`` (e.g. ``attn_implementation="eager"``,
        ``dtype=torch.float32``, or config fields).

    Returns
    -------
    nn.Module
        The model in eval mode, with the recorded per-layer sizes and the saved
        weights. A directory without an ``xprune_pruning`` record is loaded
        with plain ``from_pretrained``.

    Raises
    ------
    XpruneError
        ``path`` is not a folder with a ``config.json``, or its weights do not
        fit the rebuilt model (missing, unexpected or of other sizes).

    Notes
    -----
    :func:`xprune.apply` records the per-block sizes of every Hugging Face
    model it prunes (also one held by a wrapper module) in
    ``config.xprune_pruning``; ``save_pretrained`` writes it into
    ``config.json``. This function runs transformers' own ``from_pretrained``
    (checkpoint formats, shards, dtype, tied weights) on the architecture
    shrunk to the recorded sizes right after it is built. Where every block
    kept the same size and the config can say so (see :func:`record_sizes`),
    plain ``from_pretrained`` works as well.

    Examples
    --------
    Prune two heads of each layer of a tiny random GPT-2, save, reload:

    >>> import tempfile, torch, transformers, xprune
    >>> from xprune.transformers import load_pruned
    >>> config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16)
    >>> model = transformers.GPT2LMHeadModel(config).eval()
    >>> ids = torch.randint(0, 50, (8, 6))
    >>> scores = xprune.score(model, [({"input_ids": ids}, ids[:, -1])], "weight", "heads")
    >>> pruned = xprune.apply(model, xprune.select(scores, 0.5, scope="local"))
    >>> folder = tempfile.mkdtemp()
    >>> pruned.save_pretrained(folder)  # or xprune.transformers.hub.save(pruned, folder)
    >>> again = load_pruned(folder)
    >>> bool(torch.equal(again(ids).logits, pruned(ids).logits))
    True
    """
    try:
        import transformers
    except ImportError:
        raise XpruneError("loading Hugging Face models needs transformers: pip install 'xprune[hf]'") from None

    path = Path(path)
    if not path.is_dir():
        raise XpruneError(f"{path} is not a folder; pass the folder written by save_pretrained")
    if not (path / "config.json").is_file():
        raise XpruneError(f"{path} has no config.json; pass the folder written by save_pretrained")
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    if model_class is None:
        arch = (getattr(config, "architectures", None) or [None])[0]
        model_class = getattr(transformers, arch, None) if arch else None
        model_class = model_class or transformers.AutoModel
    record = getattr(config, "xprune_pruning", None)
    if record is None:
        return model_class.from_pretrained(path, local_files_only=True, **config_overrides).eval()
    base = _concrete(model_class, config)
    wanted = getattr(base, "config_class", None)
    if isinstance(wanted, type) and not isinstance(config, wanted):
        raise XpruneError(
            f"{base.__name__} does not take the {type(config).__name__} in {path}; pass a model class "
            f"of model type {getattr(config, 'model_type', '?')!r}, or none to use config.architectures"
        )

    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        _shrink(self, record)

    # transformers builds this class (same name, so its checkpoint conventions apply), we shrink it before the
    # weights arrive; the loaded model is then an instance of ``base`` again
    shrinking: Any = type(
        base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__, "__qualname__": base.__qualname__}
    )
    try:
        with _quiet():
            model, info = shrinking.from_pretrained(
                path, config=config, local_files_only=True, output_loading_info=True, **config_overrides
            )
    except XpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers reports size mismatches "above", in its log
        raise XpruneError(
            f"the weights in {path} do not fit {base.__name__} shrunk to the recorded sizes: {_first_line(exc)}"
        ) from None
    model.__class__ = base
    bad = [
        f"{what} {sorted(map(str, info[key]))[:3]}"
        for key, what in (("missing_keys", "missing"), ("mismatched_keys", "of other sizes"))
        if info.get(key)
    ]
    if bad:
        raise XpruneError(
            f"the weights in {path} do not fit {base.__name__} shrunk to the recorded sizes "
            f"({'; '.join(bad)}); load it with the class it was saved with"
        )
    record_sizes(model)
    return model.eval()
