"""Sharded scoring: how a criterion runs here (:func:`mode`), the session checking it reduced its sums, the reduction.

See docs/distributed.md for which criteria are split and why the result is exact.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import XpruneError
from .collectives import gather_object
from .group import DistributedError, _collective, _comm_device, is_active, world_size

__all__ = ["all_reduce_sums", "mode", "sharded_session"]

_SESSION: contextvars.ContextVar[_Session | None] = contextvars.ContextVar("xprune_distributed_session", default=None)


class _Session:
    def __init__(self) -> None:
        self.reduced = 0


def mode(criterion: Any, kind: str) -> str | None:
    """How :func:`xprune.score` runs ``criterion`` on unit kind ``kind`` here.

    Returns
    -------
    None, "shard", "replicate" or "fallback"
        ``None`` outside an active process group; see docs/distributed.md.
    """
    if not is_active():
        return None
    if not criterion.requires_data:
        return "replicate"
    if criterion.distributed_sums(kind):
        return "shard"
    return "fallback"


_FAILED = "__xprune_rank_failed__"  # key of the message a failing rank sends in place of its sums' keys


@contextlib.contextmanager
def sharded_session(criterion: Any) -> Iterator[_Session]:
    """Scope in which :func:`all_reduce_sums` communicates (opened by :func:`xprune.score`).

    On exit, checks that the criterion did reduce its sums: otherwise its
    scores would cover this rank's shard only. A rank whose criterion fails
    before reducing (e.g. NaN inputs in its shard) tells the others, which
    are waiting in :func:`all_reduce_sums`: every rank then raises, none hangs.
    """
    session = _Session()
    token = _SESSION.set(session)
    try:
        yield session
    except Exception as e:
        if session.reduced == 0 and is_active() and not isinstance(e, DistributedError):
            with contextlib.suppress(DistributedError):  # peers gone too: this rank's own error says more
                gather_object({_FAILED: f"{type(e).__name__}: {str(e).strip()[:500]}"}, "report of a failure")
        raise
    finally:
        _SESSION.reset(token)
    if session.reduced == 0:
        raise XpruneError(
            f"criterion {criterion.name or type(criterion).__name__!r} says it reduces its sums across ranks "
            "(distributed_sums() is true) but never called xprune.distributed.all_reduce_sums: its scores "
            "would cover one rank's samples only. Call it on the running sums before finalising, or make "
            "distributed_sums() return False (then every rank scores all the data)"
        )


def all_reduce_sums(totals: dict, counts: dict | None = None) -> tuple[dict, dict | None]:
    """Sum per-unit running sums (and their counts) over all ranks.

    A no-op (returns the arguments) unless called inside a sharded scoring
    session opened by :func:`xprune.score`, so criteria may call it
    unconditionally between accumulation and finalisation.

    Parameters
    ----------
    totals : dict
        Key -> tensor of running sums. Ranks may hold different keys (a rank
        whose shard was empty holds none): missing ones count as zeros.
    counts : dict, optional
        Key -> number of values summed (int or float).

    Returns
    -------
    (dict, dict or None)
        The global sums (float64 reduction, cast back to each tensor's dtype
        and device) and counts, with the union of keys of all ranks.
    """
    session = _SESSION.get()
    if session is None or not is_active():
        return totals, counts
    import torch.distributed as dist

    session.reduced += 1
    counts = {} if counts is None else counts
    local_spec = {
        k: (tuple(torch.as_tensor(v).shape), str(torch.as_tensor(v).dtype).replace("torch.", ""))
        for k, v in totals.items()
    }
    gathered = gather_object(local_spec, "gathering of the score keys")
    failed = [(r, part[_FAILED]) for r, part in enumerate(gathered) if _FAILED in part]
    if failed:
        raise XpruneError(
            f"rank {failed[0][0]} of {world_size()} failed while scoring its share of the data, so "
            f"every rank stops: {failed[0][1]}" + (f" ({len(failed)} ranks failed)" if len(failed) > 1 else "")
        )
    spec: dict = {}
    for part in gathered:
        for k, s in part.items():
            if k in spec and spec[k][0] != s[0]:
                raise XpruneError(f"ranks disagree on the shape of the sums for {k!r}: {spec[k][0]} vs {s[0]}")
            spec.setdefault(k, s)
    keys = sorted(spec, key=repr)
    home = next((v.device for v in totals.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    dev = _comm_device()
    flat = []
    for k in keys:
        shape = spec[k][0]
        v = totals.get(k)
        flat.append(
            torch.zeros(shape, dtype=torch.float64, device=dev).reshape(-1)
            if v is None
            else torch.as_tensor(v).detach().to(dev, torch.float64).reshape(-1)
        )
    flat.append(torch.tensor([float(counts.get(k, 0)) for k in keys], dtype=torch.float64, device=dev))
    buffer = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=dev)
    _collective("all-reduce of the per-unit sums", dist.all_reduce, buffer)
    out_totals, out_counts, pos = {}, {}, 0
    for k in keys:
        shape, dtype = spec[k]
        n = int(torch.Size(shape).numel())
        device = totals[k].device if isinstance(totals.get(k), torch.Tensor) else home
        out_totals[k] = buffer[pos : pos + n].reshape(shape).to(device, getattr(torch, dtype))
        pos += n
    for i, k in enumerate(keys):
        c = float(buffer[pos + i])
        out_counts[k] = int(c) if c.is_integer() else c
    return out_totals, out_counts
