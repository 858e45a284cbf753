"""Each rank's share of the data: :func:`shard` and :func:`batches`.

See docs/distributed.md for how Splits, ``(X, y)`` pairs, DataLoaders and
other iterables are split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .. import _inputs
from ..errors import XpruneError
from .group import is_active, rank, world_size

__all__ = ["batches", "shard"]


def _is_indexable_split(data: Any) -> bool:
    return (
        hasattr(data, "batches")
        and callable(data.batches)
        and hasattr(data, "__getitem__")
        and hasattr(data, "__len__")
    )


def _is_xy_pair(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
        and data[0].dim() >= 1
        and data[1].dim() == 1
        and len(data[0]) == len(data[1])
    )


def _presharded(data: Any) -> bool:
    sampler = getattr(data, "sampler", None)
    batch_sampler = getattr(data, "batch_sampler", None)
    from torch.utils.data.distributed import DistributedSampler

    return isinstance(sampler, DistributedSampler) or isinstance(
        getattr(batch_sampler, "sampler", None), DistributedSampler
    )


def _take(x: Any, index: slice, n: int) -> Any:
    """``x[index]`` along the sample dimension for tensors (with ``n`` samples) inside ``x``."""
    if isinstance(x, torch.Tensor):
        return x[index] if x.dim() >= 1 and x.shape[0] == n else x
    if isinstance(x, dict):
        return {k: _take(v, index, n) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_take(v, index, n) for v in x)
    return x


def _n_samples(x: Any, y: Any) -> int:
    if isinstance(y, torch.Tensor) and y.dim() >= 1:
        return int(y.shape[0])
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    leaves = [
        v
        for v in (x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else [])
        if isinstance(v, torch.Tensor) and v.dim() >= 1
    ]
    if not leaves:
        raise XpruneError("cannot split a batch across ranks: found no tensor with a sample dimension in it")
    return int(leaves[0].shape[0])


def _strided(stream: Iterable, r: int, w: int) -> Iterator[tuple[Any, Any]]:
    offset = 0  # global position of the batch's first sample
    for x, y in stream:
        n = _n_samples(x, y)
        start = (r - offset) % w
        offset += n
        if start >= n:
            continue
        index = slice(start, None, w)
        yield _take(x, index, n), _take(y, index, n)


def shard(data: Any, batch_size: int = 128, stream: Iterable | None = None) -> Iterable:
    """This rank's share of ``data`` as ``(inputs, labels)`` batches (all of it outside a group).

    Parameters
    ----------
    data : Split, (X, y), DataLoader or iterable of batches
        The same data on every rank.
    batch_size : int
        Batch size for splits and ``(X, y)`` pairs.
    stream : iterable, optional
        Batches already drawn from ``data`` (e.g. by :func:`xprune._inputs.peek`)
        to use instead of iterating ``data`` again when ``data`` is a one-shot
        iterable.

    Returns
    -------
    iterable of (inputs, labels)
        Rank ``r`` of ``W`` gets the samples at global positions ``r, r+W, ...``.
    """
    if not is_active():
        return stream if stream is not None else _inputs.batches(data, batch_size)
    r, w = rank(), world_size()
    if _is_xy_pair(data):
        return _inputs.batches((data[0][r::w], data[1][r::w]), batch_size)
    if _is_indexable_split(data):
        try:
            part = data[slice(r, None, w)]
        except Exception:  # noqa: BLE001 - not sliceable after all: split batch by batch
            part = None
        if part is not None and len(part) == len(range(r, len(data), w)):
            return _inputs.batches(part, batch_size)
    if _presharded(data):
        return stream if stream is not None else _inputs.batches(data, batch_size)
    return _strided(stream if stream is not None else _inputs.batches(data, batch_size), r, w)


def batches(data: Any, batch_size: int = 128) -> Iterable:
    """Alias of :func:`shard` without a pre-drawn stream (used by evaluation)."""
    return shard(data, batch_size)
