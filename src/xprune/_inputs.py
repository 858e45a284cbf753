"""Normalisation of the many ways users hand data and example inputs to xprune.

Batches are ``(inputs, labels)`` pairs. ``inputs`` is a tensor, a tuple of
positional inputs or a dict of keyword inputs (Hugging Face style);
``labels`` is one class per sample ``[N]``, one per token ``[N, T]`` (the
Hugging Face convention: ``-100`` = not counted; for causal language models
the model output at position ``t`` predicts ``labels[:, t + 1]``), or
``None`` for unlabelled batches (accepted where the target needs no labels).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .errors import DataError

#: Label value of positions that are not counted (the Hugging Face / PyTorch ``ignore_index``).
IGNORE = -100

#: Keys of a batch dict that hold the labels rather than model inputs.
LABEL_KEYS = ("labels", "label")

_FORMS = "pass `(X, y)`, a DataLoader yielding (inputs, labels) or dicts with 'labels', or an xprune.data.Split"


def _split_dict(item: Mapping) -> tuple[dict, Any]:
    """``(inputs without the labels, labels or None)`` of a batch given as a dict / ``BatchEncoding``."""
    keys = [k for k in LABEL_KEYS if k in item]
    if len(keys) > 1:
        raise DataError("a batch dict holds both 'labels' and 'label'; keep one of them (the labels)")
    inputs = {k: v for k, v in item.items() if k not in LABEL_KEYS}
    return inputs, (item[keys[0]] if keys else None)


def _as_inputs(x: Any) -> Any:
    """Inputs with any mapping (``BatchEncoding``, ``UserDict``) turned into a plain dict."""
    return dict(x) if isinstance(x, Mapping) and not isinstance(x, dict) else x


def _pair(item: Any) -> tuple[Any, Any]:
    """One batch of any accepted form as ``(inputs, labels or None)``."""
    if isinstance(item, Mapping):
        return _split_dict(item)
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) == 1:
        return _as_inputs(item[0]), None
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return _as_inputs(item[0]), item[1]
    raise DataError(
        f"each batch must be (inputs, labels), a dict of model inputs (with 'labels') or the inputs "
        f"alone; got {type(item).__name__}"
    )


def _n_rows(x: Any) -> int | None:
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() >= 1 else None


def _is_token_labels(X: torch.Tensor, y: torch.Tensor) -> bool:
    """``y`` holds one integer label per token of ``X`` (``y.shape == X.shape[:y.dim()]``, 2-D or more)."""
    return (
        y.dim() >= 2
        and not y.is_floating_point()
        and X.dim() >= y.dim()
        and tuple(X.shape[: y.dim()]) == tuple(y.shape)
    )


def _dataset_pair(data: Any) -> tuple[Any, Any] | None:
    """``(X, y)`` when ``data`` is a whole dataset to cut into batches, else None.

    A pair of tensors ``(X, y)`` with ``y`` one label per sample (a tuple or
    list) or, as a tuple, one label per token of ``X`` (``input_ids`` and
    causal-LM labels); a tuple ``(dict of input tensors, y)``; or a dict /
    ``BatchEncoding`` of input tensors with the same number of rows, the
    labels under ``'labels'`` (or none).
    """
    if isinstance(data, Mapping):
        if (
            data
            and all(isinstance(v, torch.Tensor) and v.dim() >= 1 for v in data.values())
            and len({int(v.shape[0]) for v in data.values()}) == 1
        ):
            return _split_dict(data)
        raise DataError(
            "data given as a dict must hold input tensors with the same number of rows (e.g. a "
            "tokenizer's output with return_tensors='pt'); got keys "
            f"{sorted(map(str, data))[:6]}. For batches, pass a list or DataLoader of dicts"
        )
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor)):
        return None
    X, y = data
    if (
        isinstance(X, torch.Tensor)
        and X.dim() >= 1
        and y.dim() >= 1
        and len(X) == len(y)
        and y.numel() == len(y)
        and (y.dim() == 1 or isinstance(data, tuple))
    ):
        return X, y  # one label per sample: [N] (or, as a tuple, [N, 1])
    if isinstance(data, tuple) and isinstance(X, torch.Tensor) and _is_token_labels(X, y):
        return X, y
    if isinstance(data, tuple) and isinstance(X, Mapping) and y.dim() >= 1:
        rows = {_n_rows(v) for v in X.values()}
        if rows == {len(y)}:
            return dict(X), y
    if isinstance(data, tuple) and isinstance(X, torch.Tensor):
        raise DataError(
            f"the pair (X, y) has X of shape {tuple(X.shape)} and y of shape {tuple(y.shape)}: y must "
            "hold one label per sample [N] or, for token inputs, one integer label per token "
            f"{list(X.shape[:2])}"
        )
    return None


def _cut(X: Any, y: Any, batch_size: int) -> Iterator[tuple[Any, Any]]:
    """Batches of ``batch_size`` rows of a whole data set ``X`` (a tensor or a dict of tensors) and ``y``."""
    n = _n_rows(y) if y is not None else _n_rows(X if isinstance(X, torch.Tensor) else next(iter(X.values())))
    assert n is not None  # _dataset_pair only passes tensors with a batch dimension
    for s in range(0, n, batch_size):
        x = {k: v[s : s + batch_size] for k, v in X.items()} if isinstance(X, dict) else X[s : s + batch_size]
        yield x, (None if y is None else y[s : s + batch_size])


def batches(data: Any, batch_size: int = 128, *, need_labels: bool = True) -> Iterator[tuple[Any, Any]]:
    """Iterate ``(inputs, labels)`` batches from any supported data form.

    Accepted forms: an object with a ``batches(batch_size)`` method (an
    :class:`xprune.data.Split`); a pair ``(X, y)`` of tensors, ``y`` one class
    per sample (or, as a tuple, one label per token: ``(input_ids, labels)``);
    a tuple ``(dict of input tensors, y)``; a dict / ``BatchEncoding`` of
    input tensors, the labels under ``'labels'`` (these are cut into batches
    of ``batch_size``); or any iterable of batches such as a
    ``torch.utils.data.DataLoader``, each batch an ``(inputs, labels)`` pair,
    a dict of model inputs with the labels under ``'labels'`` (``'label'``
    also accepted; the other keys are passed to the model as keyword
    arguments), or the inputs alone.

    Parameters
    ----------
    need_labels : bool
        Raise :class:`DataError` on a batch without labels (default). With
        ``False``, such batches come as ``(inputs, None)``.
    """
    pair = None if hasattr(data, "batches") and callable(data.batches) else _dataset_pair(data)
    if pair is not None:
        source = _cut(*pair, batch_size)
    elif hasattr(data, "batches") and callable(data.batches):
        source = data.batches(batch_size)
    elif isinstance(data, torch.Tensor):
        raise DataError(f"data is a bare tensor; {_FORMS} (for inputs without labels: a list of input batches)")
    else:
        try:
            source = iter(data)
        except TypeError:
            raise DataError(f"cannot read batches from {type(data).__name__}; {_FORMS}") from None
    for item in source:
        x, y = _pair(item)
        if y is None and need_labels:
            what = (
                f"a dict with keys {sorted(map(str, x))[:6]} and no 'labels'"
                if isinstance(x, dict)
                else f"{type(x).__name__} inputs without labels"
            )
            raise DataError(
                f"each batch needs labels here; got {what}. Add the labels (key 'labels' of a batch "
                "dict, or (inputs, labels) pairs)"
            )
        yield x, y


def peek(data: Any, batch_size: int = 128, *, need_labels: bool = True) -> tuple[tuple[Any, Any], Iterable]:
    """Return the first batch and an iterable over all batches (first included).

    Raises :class:`DataError` when the data holds no batch at all.
    """
    it = batches(data, batch_size, need_labels=need_labels)
    try:
        first = next(it)
    except StopIteration:
        raise DataError("the data is empty: scoring needs at least one (inputs, labels) batch") from None
    return first, itertools.chain([first], it)


def to_device(x: Any, device: torch.device | str | None) -> Any:
    """Move a tensor, or the tensors inside a tuple/list/dict, to ``device``."""
    if device is None:
        return x
    if isinstance(x, torch.Tensor):
        if x.is_meta and torch.device(device).type != "meta":
            raise DataError(
                "the inputs are on the 'meta' device (shapes without values), which cannot be scored "
                "or evaluated; pass real tensors (e.g. load the data with values)"
            )
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def call(model: nn.Module, x: Any) -> Any:
    """Call ``model`` on inputs given as a tensor, a tuple of positional inputs or a dict."""
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def logits(output: Any) -> torch.Tensor:
    """The class scores inside a model output (a tensor, or an object with ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    found = output.get("logits") if isinstance(output, Mapping) else getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if getattr(output, "last_hidden_state", None) is not None or (
        isinstance(output, Mapping) and "sentence_embedding" in output
    ):
        raise DataError(
            f"the model output ({type(output).__name__}) has no class scores (.logits): the model is "
            "an encoder without a task head; pass target='embedding' to explain its sentence "
            "embedding, or use a model with a head (e.g. AutoModelForSequenceClassification)"
        )
    raise DataError(
        f"cannot find class scores in a model output of type {type(output).__name__}; return a "
        "tensor or an object with .logits, or pass target='embedding' for an embedding model"
    )


def token_mask(inputs: Any) -> torch.Tensor | None:
    """The ``[N, T]`` attention mask of token inputs (1 = token, 0 = padding), or None."""
    if isinstance(inputs, Mapping):
        m = inputs.get("attention_mask")
        if isinstance(m, torch.Tensor) and m.dim() == 2:
            return m
    return None


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token states ``[N, T, D]`` over the tokens of ``mask`` ``[N, T]`` (all tokens without one)."""
    if mask is None or tuple(mask.shape) != tuple(hidden.shape[:2]):
        return hidden.mean(1)
    m = mask.to(device=hidden.device, dtype=hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def embedding(output: Any, inputs: Any = None) -> torch.Tensor:
    """The vector per sample ``[N, D]`` that ``target="embedding"`` explains.

    Read from the model output in this order: a ``sentence_embedding`` entry
    (sentence-transformers), the logits (``.logits`` or a tensor output), the
    ``last_hidden_state``, the first tensor of a tuple. A ``[N, D]`` tensor is
    taken as it is; token states ``[N, T, D]`` are averaged over the tokens
    of the ``attention_mask`` (all tokens without one), as sentence encoders
    such as all-MiniLM-L6-v2 do.
    """
    t = None
    if isinstance(output, torch.Tensor):
        t = output
    elif isinstance(output, Mapping) and isinstance(output.get("sentence_embedding"), torch.Tensor):
        t = output["sentence_embedding"]
    else:
        for name in ("logits", "last_hidden_state"):
            v = output.get(name) if isinstance(output, Mapping) else getattr(output, name, None)
            if isinstance(v, torch.Tensor):
                t = v
                break
        if t is None and isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
            t = output[0]
    if t is None:
        raise DataError(
            f"target='embedding' found no embedding in a model output of type {type(output).__name__} "
            "(expected a tensor, .last_hidden_state, .logits or 'sentence_embedding')"
        )
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        return mean_pool(t, token_mask(inputs))
    raise DataError(
        f"target='embedding' needs one vector per sample [N, D] or per token [N, T, D]; the model "
        f"output has shape {tuple(t.shape)}"
    )


def _unwrapped(model: Any) -> Any:
    for _ in range(4):
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile
            model = model._orig_mod
        else:
            break
    return model


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a causal language model whose output at position ``t`` predicts token ``t + 1``.

    True for Hugging Face models of the causal-LM task (``...ForCausalLM``,
    ``...LMHeadModel``, the classes of transformers'
    ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``) and for models whose config says
    ``is_decoder`` (unless encoder-decoder); False otherwise (token
    classification, masked LM, custom models).
    """
    model = _unwrapped(model)
    if model is None:
        return False
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) is True:
        return False
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    if type(model).__module__.startswith("transformers"):
        try:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as names
        except ImportError:  # pragma: no cover - another transformers layout
            names = {}  # type: ignore[assignment]  # the mapping's type differs by transformers version
        for v in names.values():
            if name == v or (isinstance(v, (tuple, list)) and name in v):
                return True
    return getattr(config, "is_decoder", False) is True


def last_positions(output: torch.Tensor, inputs: Any = None) -> torch.Tensor:
    """Index of the position explained per sample of ``[N, ..., C]`` outputs: the last token that is not padding.

    Without an attention mask fitting ``output`` ``[N, T, C]``: the last position.
    """
    n = output.shape[0]
    flat = output.reshape(n, -1, output.shape[-1]).shape[1]
    mask = token_mask(inputs)
    if output.dim() == 3 and mask is not None and tuple(mask.shape) == tuple(output.shape[:2]):
        ar = torch.arange(1, flat + 1, device=output.device)
        last = ((mask.to(output.device) != 0) * ar).argmax(1)  # the highest index holding a token
        return torch.where((mask != 0).any(1).to(output.device), last, torch.full_like(last, flat - 1))
    return torch.full((n,), flat - 1, dtype=torch.long, device=output.device)


def integral_labels(y: torch.Tensor) -> torch.Tensor:
    """``y`` as class indices (int64), refusing float labels with a fractional part."""
    if y.is_floating_point():
        bad = y[y != y.round()]
        if bad.numel():
            raise DataError(
                f"labels must be integer class indices; got non-integer values such as "
                f"{bad.flatten()[0].item()!r}. Pass class indices (e.g. y.argmax(-1) for one-hot "
                "or probability targets)"
            )
    return y.long()


def check_classes(classes: torch.Tensor, n_classes: int, what: str = "labels") -> None:
    """Refuse class indices outside ``[0, n_classes)`` (``-100`` = not counted is allowed)."""
    valid = classes[classes != IGNORE]
    if valid.numel() and (valid.min() < 0 or valid.max() >= n_classes):
        raise DataError(
            f"{what} must lie in [0, {n_classes - 1}] (the model has {n_classes} outputs; -100 = not counted); "
            f"got values from {int(valid.min())} to {int(valid.max())}. Check the labels match the model"
        )


def explained_labels(output: torch.Tensor, labels: Any, inputs: Any = None, model: Any = None) -> torch.Tensor:
    """The class each position of ``output`` ``[N, ..., C]`` is judged on, ``-100`` where none.

    Returns a LongTensor of shape ``output.shape[:-1]``.

    - one label per sample ``[N]``: on ``[N, C]`` outputs, the label of each
      row; on ``[N, ..., C]``, the label of the last position that is not
      padding (:func:`last_positions`), the other positions ``-100``;
    - one label per token ``[N, T]`` on ``[N, T, C]`` outputs: the label of
      each token (Hugging Face's convention: ``-100`` = not counted), shifted
      by one for causal language models (:func:`is_causal_lm`: position
      ``t`` is judged on ``labels[:, t + 1]``, the last position on none),
      positions whose token, or whose predicted token, is padding
      (``attention_mask`` 0) are not counted.
    """
    n, n_classes = output.shape[0], output.shape[-1]
    y = integral_labels(torch.as_tensor(labels).to(output.device))
    if y.numel() == n and y.dim() != 1 and not (output.dim() == 3 and tuple(y.shape) == tuple(output.shape[:2])):
        y = y.reshape(n)  # one label per sample given as [N, 1] (or a scalar for one sample)
    if output.dim() >= 2 and y.dim() == 1 and len(y) == n:
        if output.dim() == 2:
            classes = y.clone()
        else:
            classes = torch.full(output.shape[:-1], IGNORE, dtype=torch.long, device=output.device)
            classes.reshape(n, -1)[torch.arange(n, device=output.device), last_positions(output, inputs)] = y
    elif output.dim() == 3 and tuple(y.shape) == tuple(output.shape[:2]):
        mask = token_mask(inputs)
        mask = None if mask is None or tuple(mask.shape) != tuple(y.shape) else mask.to(output.device) != 0
        if mask is not None:
            y = y.masked_fill(~mask, IGNORE)
        if is_causal_lm(model):
            classes = torch.full_like(y, IGNORE)
            classes[:, :-1] = y[:, 1:]
            if mask is not None:
                classes[:, :-1] = classes[:, :-1].masked_fill(~mask[:, :-1], IGNORE)
        else:
            classes = y
    else:
        raise label_shape_error(tuple(y.shape), tuple(output.shape))
    check_classes(classes, n_classes)
    return classes


def label_shape_error(labels: tuple, output: tuple) -> DataError:
    """The error for labels of shape ``labels`` that do not fit model outputs of shape ``output``."""
    return DataError(
        f"labels of shape {labels} do not fit the model output of shape {output}: pass one class per sample "
        f"[{output[0]}]"
        + (f" or one label per token {list(output[:2])} (-100 = not counted)" if len(output) == 3 else "")
    )


def first_sample(x: Any) -> Any:
    """A batch of one sample taken from a batch of inputs (used as example inputs)."""
    if isinstance(x, torch.Tensor):
        return x[:1]
    if isinstance(x, Mapping):
        return {k: first_sample(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(first_sample(v) for v in x)
    return x


def spec(x: Any) -> Any:
    """A JSON-able description (shapes and dtypes) of example inputs."""
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    if isinstance(x, Mapping):
        return {"dict": {k: spec(v) for k, v in x.items()}}
    if isinstance(x, (tuple, list)):
        return {"tuple": [spec(v) for v in x]}
    raise DataError(f"example inputs of type {type(x).__name__} are not supported")


def from_spec(s: Any) -> Any:
    """Rebuild example inputs (zeros) from :func:`spec`'s description."""
    if "shape" in s:
        dtype = getattr(torch, s["dtype"])
        return torch.zeros(s["shape"], dtype=dtype)
    if "dict" in s:
        return {k: from_spec(v) for k, v in s["dict"].items()}
    return tuple(from_spec(v) for v in s["tuple"])


class preserved_state:
    """Context manager restoring the train/eval flags of every module and ``requires_grad``.

    Inside, the model is in eval mode; nothing about the parameters' values is touched.
    """

    def __init__(self, model: nn.Module, eval_mode: bool = True):
        self.model = model
        self.eval_mode = eval_mode

    def __enter__(self) -> nn.Module:
        self._training = [(m, m.training) for m in self.model.modules()]
        self._requires = [(p, p.requires_grad) for p in self.model.parameters()]
        if self.eval_mode:
            self.model.eval()
        return self.model

    def __exit__(self, *exc) -> None:
        for m, flag in self._training:
            m.training = flag
        for p, flag in self._requires:
            p.requires_grad_(flag)
