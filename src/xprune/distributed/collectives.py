"""Collectives other than the sums of scoring: broadcasts, counts, objects, work on rank 0 only.

Each is a no-op (returns its input) outside an active process group; a
failing peer raises :class:`~xprune.distributed.DistributedError` instead of
hanging (see docs/distributed.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..errors import XpruneError
from .group import DistributedError, _collective, _comm_device, is_active, is_main, rank, world_size

__all__ = ["broadcast", "broadcast_object", "gather_object", "run_on_main", "sum_counts"]


def broadcast(values: dict[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s per-unit scores on every rank (same keys and shapes everywhere).

    A no-op outside an active process group.
    """
    if not is_active():
        return values
    import torch.distributed as dist

    keys = list(values)
    dev = _comm_device()
    parts = [torch.as_tensor(values[k]).detach().to(dev, torch.float64).reshape(-1) for k in keys]
    sizes = torch.tensor([p.numel() for p in parts], dtype=torch.int64, device=dev)
    check = sizes.clone()
    _collective("check of the score sizes", dist.all_reduce, check, op=dist.ReduceOp.MAX)
    if not torch.equal(check, sizes):
        raise XpruneError("ranks found different units: pass the same model and unit kind on every rank")
    buffer = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=dev)
    _collective("broadcast of the scores", dist.broadcast, buffer, src=src)
    out, pos = {}, 0
    for k, p in zip(keys, parts, strict=True):
        v = torch.as_tensor(values[k])
        out[k] = buffer[pos : pos + p.numel()].reshape(v.shape).to(v.device, v.dtype)
        pos += p.numel()
    return out


def sum_counts(*counts: int, failed: bool = False) -> tuple[int, ...]:
    """Integer counts (e.g. correct and total predictions) summed over ranks (unchanged outside a group).

    A rank that could not count (its evaluation raised) calls it with
    ``failed=True`` before raising: the other ranks then raise an
    :class:`~xprune.errors.XpruneError` instead of waiting for it.
    """
    if not is_active():
        return counts
    import torch.distributed as dist

    t = torch.tensor([*counts, int(failed)], dtype=torch.int64, device=_comm_device())
    _collective("all-reduce of the evaluation counts", dist.all_reduce, t)
    n_failed = int(t[-1])
    if n_failed and not failed:
        raise XpruneError(
            f"{n_failed} of the {world_size()} ranks failed while evaluating their share of the "
            "samples (their error is in their own output), so every rank stops"
        )
    return tuple(int(v) for v in t[:-1].tolist())


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself outside a process group)."""
    if not is_active():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    _collective(
        "broadcast of an object",
        dist.broadcast_object_list,
        box,
        src=src,
        device=_comm_device() if dist.get_backend() == "nccl" else None,
    )
    return box[0]


def gather_object(obj: Any, what: str = "gathering of an object") -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` outside a process group).

    ``what`` names the step in the error raised when a peer fails or times out.
    """
    if not is_active():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world_size()
    _collective(what, dist.all_gather_object, gathered, obj)
    return gathered


def run_on_main(fn, what: str) -> Any:
    """Run ``fn()`` on rank 0 only (e.g. what writes files); every rank learns whether it failed.

    Returns ``fn()``'s result on rank 0 and ``None`` on the others. When
    ``fn`` raises on rank 0, the other ranks raise an
    :class:`~xprune.errors.XpruneError` naming ``what`` and the error, so no
    rank waits for a peer that has stopped.
    """
    if not is_active():
        return fn()
    if is_main():
        try:
            result = fn()
        except Exception as e:
            if not isinstance(e, DistributedError):
                with contextlib.suppress(DistributedError):
                    broadcast_object(f"{type(e).__name__}: {str(e).strip()[:1000]}")
            raise
        broadcast_object(None)
        return result
    error = broadcast_object()
    if error is not None:
        raise XpruneError(f"rank 0 failed {what}, so every rank stops: {error}")
    return None
