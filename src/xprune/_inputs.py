"""Normalisation of the many ways users hand data and example inputs to xprune."""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from .errors import DataError


def batches(data: Any, batch_size: int = 128) -> Iterator[tuple[Any, torch.Tensor]]:
    """Iterate ``(inputs, targets)`` batches from any supported data form.

    Accepted forms: an object with a ``batches(batch_size)`` method (an
    :class:`xprune.data.Split`), a pair ``(X, y)`` of tensors (split into
    batches of ``batch_size``), or any iterable of ``(inputs, targets)`` pairs
    such as a ``torch.utils.data.DataLoader``.
    """
    if hasattr(data, "batches") and callable(data.batches):
        yield from data.batches(batch_size)
        return
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
        and data[0].dim() >= 1
        and data[1].dim() == 1
        and len(data[0]) == len(data[1])
    ):
        X, y = data
        for start in range(0, len(X), batch_size):
            yield X[start : start + batch_size], y[start : start + batch_size]
        return
    if isinstance(data, torch.Tensor):
        raise DataError(
            "data is a bare tensor; pass (inputs, labels) as a pair `(X, y)`, "
            "a DataLoader yielding (inputs, labels), or an xprune.data.Split"
        )
    try:
        iterator = iter(data)
    except TypeError:
        raise DataError(
            f"cannot read batches from {type(data).__name__}; pass `(X, y)`, a "
            "DataLoader yielding (inputs, labels), or an xprune.data.Split"
        ) from None
    for item in iterator:
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DataError(
                "each batch must be an (inputs, labels) pair; got "
                f"{type(item).__name__}. Wrap unlabelled inputs as (x, y) with y the class to explain"
            )
        yield item[0], item[1]


def peek(data: Any, batch_size: int = 128) -> tuple[tuple[Any, torch.Tensor], Iterable]:
    """Return the first batch and an iterable over all batches (first included).

    Raises :class:`DataError` when the data holds no batch at all.
    """
    it = batches(data, batch_size)
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
            raise DataError("the inputs are on the 'meta' device (shapes without values), which cannot be scored "
                            "or evaluated; pass real tensors (e.g. load the data with values)")
        return x.to(device)
    if isinstance(x, dict):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x


def call(model: nn.Module, x: Any) -> Any:
    """Call ``model`` on inputs given as a tensor, a tuple of positional inputs or a dict."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple):
        return model(*x)
    return model(x)


def logits(output: Any) -> torch.Tensor:
    """The class scores inside a model output (a tensor, or an object with ``.logits``)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise DataError(f"cannot find class scores in a model output of type {type(output).__name__}")


def first_sample(x: Any) -> Any:
    """A batch of one sample taken from a batch of inputs (used as example inputs)."""
    if isinstance(x, torch.Tensor):
        return x[:1]
    if isinstance(x, dict):
        return {k: first_sample(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(first_sample(v) for v in x)
    return x


def spec(x: Any) -> Any:
    """A JSON-able description (shapes and dtypes) of example inputs."""
    if isinstance(x, torch.Tensor):
        return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    if isinstance(x, dict):
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
