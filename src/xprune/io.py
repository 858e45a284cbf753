"""Saving and loading pruned models.

:func:`save` writes the weights as safetensors and, in the file's metadata,
every plan :func:`xprune.apply` applied to reach the model (its removal
history). :func:`load` replays that history on a freshly built base model
(the unpruned architecture) and loads the weights, which gives back a model
with bit-identical outputs, without pickling code.

For users who prefer it, ``torch.save(pruned, path)`` of the whole module also
works (load with ``torch.load(path, weights_only=False)``; that unpickles
code, so only load files you trust).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._io import atomic_write
from .errors import XpruneError
from .surgery import HISTORY, apply, history

FORMAT = "xprune-model-1"


def save(model: nn.Module, path: str | Path, *, overwrite: bool = True) -> Path:
    """Save ``model``'s weights and pruning history to ``path`` (``.safetensors``), atomically."""
    from safetensors.torch import save as st_save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise XpruneError(f"xprune.save writes .safetensors files; got {path.name!r} (use torch.save for pickles)")
    if path.exists() and not overwrite:
        raise XpruneError(f"{path} exists; pass overwrite=True to replace it")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    # safetensors refuses tensors sharing memory: keep the first name of each storage
    seen: dict[Any, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and key in seen:
            aliases[k] = seen[key]
        else:
            seen[key] = k
            tensors[k] = v.clone() if not v.is_contiguous() else v
    meta = {
        "format": FORMAT,
        "history": json.dumps(getattr(model, HISTORY, [])),
        "aliases": json.dumps(aliases),
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    atomic_write(path, st_save(tensors, metadata=meta))
    return path


def load(path: str | Path, base_model: nn.Module, *, strict: bool = True) -> nn.Module:
    """Rebuild a model saved by :func:`save` on ``base_model`` (the unpruned architecture).

    ``base_model`` is not modified: the removal history is replayed on a copy,
    then the saved weights are loaded into it.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise XpruneError(f"no model file at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys() but is not iterable
    except (SafetensorError, OSError, ValueError) as e:
        raise XpruneError(f"{path} is not a readable safetensors file (truncated or corrupt?): {e}") from e
    if meta.get("format") != FORMAT:
        raise XpruneError(f"{path} was not written by xprune.save (no '{FORMAT}' metadata)")
    for k, src in json.loads(meta.get("aliases", "{}")).items():
        tensors[k] = tensors[src]
    model = base_model
    steps = json.loads(meta["history"])
    for step in steps:
        from .plan import Plan

        model = apply(model, Plan.from_dict(step["plan"]), step["mode"])
    if not steps:
        import copy

        model = copy.deepcopy(base_model)
    own = model.state_dict()
    mismatched = [k for k, v in tensors.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise XpruneError(
            f"the saved weights do not fit the rebuilt model ({mismatched[:3]} differ in shape): is "
            f"base_model the architecture the pruned model came from ({meta.get('class')})?"
        )
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise XpruneError(
            f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}; "
            f"is base_model a {meta.get('class')}?"
        )
    return model


def export_onnx(
    model: nn.Module,
    path: str | Path,
    example_inputs: torch.Tensor,
    *,
    check: bool = True,
    atol: float = 1e-4,
    opset: int = 17,
) -> dict:
    """Export ``model`` to ONNX (dynamic batch size) and check it in onnxruntime against torch.

    Uses the TorchScript-based exporter (no extra dependency). Returns
    ``{"path", "max_abs_diff"}``; raises :class:`XpruneError` when onnxruntime's
    outputs differ from torch's by more than ``atol``.
    """
    import io as _io
    import warnings

    path = Path(path)
    if not isinstance(example_inputs, torch.Tensor):
        raise XpruneError("export_onnx needs one example input tensor (batch first)")
    buf = _io.BytesIO()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example_inputs,),
                buf,  # type: ignore[arg-type]  # a file object works too
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        result: dict[str, Any] = {"path": str(path), "max_abs_diff": None}
        if check:
            try:
                import onnxruntime as ort
            except ImportError as e:
                raise XpruneError(
                    "checking the export needs onnxruntime: pip install onnxruntime (or pass check=False)"
                ) from e
            session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
            with torch.no_grad():
                expected = model(example_inputs).detach().cpu().numpy()
            got = session.run(None, {"input": example_inputs.detach().cpu().numpy()})[0]
            diff = float(abs(got - expected).max())
            result["max_abs_diff"] = diff
            if diff > atol:
                raise XpruneError(f"onnxruntime's outputs differ from torch's by {diff:.2e} > atol={atol}")
    finally:
        model.train(was_training)
    atomic_write(path, buf.getvalue())
    return result


__all__ = ["save", "load", "history", "export_onnx"]
