"""Scale: scoring across processes (``torch.distributed``), on a device, in bf16.

Distributed scoring
-------------------
Scores are sums over samples followed by a per-unit finalisation (often
non-linear: ``|mean|``, ``abs`` of a sum). Inside an initialised process group
of ``W > 1`` processes (``torchrun``, or ``torch.distributed.init_process_group``
called by the user), :func:`xprune.score` therefore

1. splits the reference data by rank, as a ``DistributedSampler`` would
   without padding: rank ``r`` takes samples ``r, r + W, r + 2W, ...`` (every
   sample is scored exactly once; pass the *same* data on every rank);
2. lets the criterion accumulate its per-unit running sums on its shard;
3. all-reduces the raw *sums and counts* (float64), not the finished scores,
   through :func:`all_reduce_sums`, before the criterion finalises them.

The result equals the single-process scores up to float64 summation order.
How the data is split:

- an :class:`xprune.data.Split`, or an ``(X, y)`` pair: rank ``r`` takes
  ``data[r::W]`` and batches it with the requested batch size;
- a ``DataLoader`` whose sampler is a ``DistributedSampler``: taken as
  already split, used as given (note that such a sampler pads with repeated
  samples unless ``drop_last``);
- any other iterable of ``(inputs, labels)`` batches: every rank reads every
  batch and keeps the samples whose global position ``i`` has
  ``i % W == r`` (tensors are sliced along their first dimension).

Which criteria are split (``mode(criterion, kind)``):

- ``"shard"``: criteria whose :meth:`~xprune.criteria.Criterion.distributed_sums`
  is true for the unit kind. Built in:

  - every :class:`~xprune.criteria.HookedCriterion` (``lrp``, ``taylor``,
    ``gradient``, ``activation``, and custom hooked criteria) for kind
    ``"channels"``: their sums are reduced between the batch loop and
    :meth:`~xprune.criteria.HookedCriterion.finalize`;
  - ``lrp``, ``taylor`` and ``gradient`` for kind ``"weights"``: the summed
    weight relevance / weight gradients and the sample count are reduced
    before ``|.|`` and the division (a custom ``compute_weights`` is split
    only when marked with :func:`xprune.criteria.base.reduces_sums`);
  - ``lrp``, ``taylor``, ``gradient`` and ``activation`` for kinds
    ``"heads"`` and ``"neurons"``: the raw per-unit sums and the token counts
    are reduced before the mean, ``|.|`` of the mean or the per-unit total;
  - ``singe`` (every kind it has gate sites for): the *signed* integrals
    (sums over samples of per-sample gate gradients) are reduced, then
    ``|.|`` is taken;
  - ``integrated-gradients`` (kind ``"channels"``): the per-unit sums of the
    signed attributions (``aggregate="sum"``, ``|.|`` after the reduction) or
    of their absolute values (``aggregate="abs"``) are reduced.

  These are exact because each sample's contribution is computed on its own
  (models in eval mode). One caveat: an ``integrated-gradients`` baseline
  given as a callable of the whole batch (e.g. the batch mean) depends on
  how samples are batched, hence on the split.
- ``"replicate"``: criteria that need no data (``weight``, ``l2``,
  ``random``): computed on every rank, rank 0's values broadcast.
- ``"fallback"``: the others: ``steered`` (it *learns* gates by gradient
  descent over the reference data, an optimisation whose result is not a sum
  over samples, so it cannot be split exactly), custom criteria with their
  own ``compute`` that do not declare :meth:`~xprune.criteria.Criterion.distributed_sums`,
  and custom hooked criteria's own ``compute_weights``. Every rank scores
  *all* the data (exact, no speed-up) and rank 0's values are broadcast; a
  warning says so.

Evaluation: :func:`xprune.evaluate.accuracy` splits its samples the same way
and all-reduces the correct/total counts, so curves are split as well. Every
rank must then call it (it is a collective); :func:`local` turns the
splitting off for code that runs on one rank only.

Tuning (:func:`xprune.tune`): rank 0 owns the optuna study and broadcasts
each trial's parameters; every rank scores and evaluates its share (see
:mod:`xprune.tune`).

Failures: a collective that fails (a peer crashed or was killed, or the
process group's ``timeout`` passed) raises :class:`DistributedError` naming
the rank and the step, instead of hanging. A rank whose scoring or
evaluation raises (e.g. NaN inputs in its shard) tells the others, which
raise an :class:`~xprune.errors.XpruneError` naming it instead of waiting. Set the timeout when initialising
the group (``init_process_group(..., timeout=timedelta(seconds=...))``;
``xprune`` under ``torchrun`` reads ``XPRUNE_DIST_TIMEOUT``, default 600 s).

Devices and precision
---------------------
``score(..., device="cuda")`` moves the model there for the call (and back
afterwards) and every batch to it; ``device=None`` uses the model's device.
``precision="bf16"`` runs the forward and backward passes under
``torch.autocast(dtype=torch.bfloat16)`` for the criteria whose rule allows it
(:data:`BF16_CRITERIA`: ``activation``, ``gradient``, ``taylor``; running sums
stay float64 for every criterion). These keep fp32: ``lrp`` (the epsilon/gamma
stabilisers and the ratio ``z_ij / z_j`` of the LRP rules lose their meaning
with bf16's 8-bit mantissa), ``integrated-gradients`` and ``singe`` (path
integrals sum differences of nearby activations: cancellation). Asking bf16
for these warns and computes in fp32.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
import warnings
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from . import _inputs
from .errors import XpruneError

__all__ = [
    "BF16_CRITERIA", "DistributedError", "all_reduce_sums", "batches", "broadcast", "broadcast_object",
    "gather_object", "init_from_env", "is_active", "is_main", "local", "mode", "on_device", "precision_context", "rank",
    "run_on_main", "shard", "sum_counts", "world_size",
]

#: Criteria whose rule keeps its meaning under bf16 autocast (sums stay float64).
BF16_CRITERIA = frozenset({"activation", "gradient", "taylor"})

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("xprune_distributed_local", default=False)
_SESSION: contextvars.ContextVar["_Session | None"] = contextvars.ContextVar("xprune_distributed_session",
                                                                           default=None)


class DistributedError(XpruneError):
    """A collective operation failed: a peer process died, was killed or timed out."""


# ----------------------------------------------------------------------------- process group


def is_active() -> bool:
    """True inside an initialised process group of more than one process (and not in :func:`local`)."""
    if _LOCAL.get():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 outside a process group)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and outside a process group): the process that writes outputs."""
    return rank() == 0


@contextlib.contextmanager
def local() -> Iterator[None]:
    """Within this block, xprune neither splits data nor communicates (single-rank code)."""
    token = _LOCAL.set(True)
    try:
        yield
    finally:
        _LOCAL.reset(token)


def init_from_env(*, device: str | None = None, timeout: float | None = None) -> bool:
    """Initialise the default process group from ``torchrun``'s environment.

    Does nothing (returns False) when ``WORLD_SIZE`` is unset or 1, or a group
    is already initialised. The backend is NCCL when ``device`` is a CUDA
    device, gloo otherwise.

    Parameters
    ----------
    device : str, optional
        The device the run uses (``"cuda"`` selects NCCL and the GPU of
        ``LOCAL_RANK``).
    timeout : float, optional
        Seconds a collective may wait for its peers before failing (default
        ``XPRUNE_DIST_TIMEOUT`` or 600).

    Returns
    -------
    bool
        True when this call initialised a group (destroy it with
        ``torch.distributed.destroy_process_group()``).
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    if timeout is None:
        timeout = float(os.environ.get("XPRUNE_DIST_TIMEOUT", "600"))
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
    return True


def _comm_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(what: str, fn, *args, **kwargs):
    """Run one collective; turn a failure into a :class:`DistributedError` naming rank and step."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # gloo/NCCL raise RuntimeError subclasses (DistBackendError, timeouts)
        raise DistributedError(
            f"distributed {what} failed on rank {rank()} of {world_size()}: another process of the group did not "
            f"take part (it crashed, was killed, or exceeded the process group's timeout). Scores would be "
            f"incomplete, so the run stops. Cause: {type(e).__name__}: {str(e).strip()[:500]}"
        ) from e


# ----------------------------------------------------------------------------- splitting data


def _is_indexable_split(data: Any) -> bool:
    return (hasattr(data, "batches") and callable(data.batches) and hasattr(data, "__getitem__")
            and hasattr(data, "__len__"))


def _is_xy_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor)
            and isinstance(data[1], torch.Tensor) and data[0].dim() >= 1 and data[1].dim() == 1
            and len(data[0]) == len(data[1]))


def _presharded(data: Any) -> bool:
    sampler = getattr(data, "sampler", None)
    batch_sampler = getattr(data, "batch_sampler", None)
    from torch.utils.data.distributed import DistributedSampler

    return isinstance(sampler, DistributedSampler) or isinstance(getattr(batch_sampler, "sampler", None),
                                                                 DistributedSampler)


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
    leaves = [v for v in (x.values() if isinstance(x, dict) else x if isinstance(x, (tuple, list)) else [])
              if isinstance(v, torch.Tensor) and v.dim() >= 1]
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
        except Exception:  # not sliceable after all: split batch by batch
            part = None
        if part is not None and len(part) == len(range(r, len(data), w)):
            return _inputs.batches(part, batch_size)
    if _presharded(data):
        return stream if stream is not None else _inputs.batches(data, batch_size)
    return _strided(stream if stream is not None else _inputs.batches(data, batch_size), r, w)


def batches(data: Any, batch_size: int = 128) -> Iterable:
    """Alias of :func:`shard` without a pre-drawn stream (used by evaluation)."""
    return shard(data, batch_size)


# ----------------------------------------------------------------------------- reductions


class _Session:
    def __init__(self) -> None:
        self.reduced = 0


def mode(criterion: Any, kind: str) -> str | None:
    """How :func:`xprune.score` runs ``criterion`` on unit kind ``kind`` here.

    Returns
    -------
    None, "shard", "replicate" or "fallback"
        ``None`` outside an active process group; see the module documentation.
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
    local_spec = {k: (tuple(torch.as_tensor(v).shape), str(torch.as_tensor(v).dtype).replace("torch.", ""))
                  for k, v in totals.items()}
    gathered = gather_object(local_spec, "gathering of the score keys")
    failed = [(r, part[_FAILED]) for r, part in enumerate(gathered) if _FAILED in part]
    if failed:
        raise XpruneError(f"rank {failed[0][0]} of {world_size()} failed while scoring its share of the data, so "
                          f"every rank stops: {failed[0][1]}" + (f" ({len(failed)} ranks failed)" if len(failed) > 1
                                                                  else ""))
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
        flat.append(torch.zeros(shape, dtype=torch.float64, device=dev).reshape(-1) if v is None
                    else torch.as_tensor(v).detach().to(dev, torch.float64).reshape(-1))
    flat.append(torch.tensor([float(counts.get(k, 0)) for k in keys], dtype=torch.float64, device=dev))
    buffer = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=dev)
    _collective("all-reduce of the per-unit sums", dist.all_reduce, buffer)
    out_totals, out_counts, pos = {}, {}, 0
    for k in keys:
        shape, dtype = spec[k]
        n = int(torch.Size(shape).numel())
        device = totals[k].device if isinstance(totals.get(k), torch.Tensor) else home
        out_totals[k] = buffer[pos:pos + n].reshape(shape).to(device, getattr(torch, dtype))
        pos += n
    for i, k in enumerate(keys):
        c = float(buffer[pos + i])
        out_counts[k] = int(c) if c.is_integer() else c
    return out_totals, out_counts


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
    for k, p in zip(keys, parts):
        v = torch.as_tensor(values[k])
        out[k] = buffer[pos:pos + p.numel()].reshape(v.shape).to(v.device, v.dtype)
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
        raise XpruneError(f"{n_failed} of the {world_size()} ranks failed while evaluating their share of the "
                          "samples (their error is in their own output), so every rank stops")
    return tuple(int(v) for v in t[:-1].tolist())


def broadcast_object(obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (``obj`` itself outside a process group)."""
    if not is_active():
        return obj
    import torch.distributed as dist

    box = [obj if rank() == src else None]
    _collective("broadcast of an object", dist.broadcast_object_list, box, src=src,
                device=_comm_device() if dist.get_backend() == "nccl" else None)
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


# ----------------------------------------------------------------------------- devices and precision


def _model_devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """Run a block with ``model`` on ``device``; its previous device is restored afterwards.

    ``device=None`` leaves the model where it is. Yields the device in use
    (the model's; CPU for a model without tensors).
    """
    current = _model_devices(model)
    if device is None:
        yield next(iter(current)) if len(current) == 1 else torch.device("cpu")
        return
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise XpruneError(f"device {str(device)!r} was asked for but CUDA is not available here "
                          "(torch.cuda.is_available() is False); use device='cpu'")
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if len(current) > 1:
        raise XpruneError(f"the model is spread over several devices {sorted(map(str, current))}; "
                          "leave device=None to score it where it is")
    home = next(iter(current)) if current else target
    if home == target:
        yield target
        return
    model.to(target)
    try:
        yield target
    finally:
        model.to(home)


def bf16_allowed(criterion: Any) -> bool:
    """Whether ``criterion``'s rule may run under bf16 autocast (class attribute ``bf16_safe`` overrides)."""
    flag = getattr(type(criterion), "bf16_safe", None)
    if flag is not None:
        return bool(flag)
    return criterion.name in BF16_CRITERIA


def precision_context(criterion: Any, precision: str | None, device: torch.device):
    """Autocast context for scoring with ``criterion`` at ``precision`` (``None``/"fp32" or "bf16").

    Returns
    -------
    (context manager, str)
        The context and the precision actually used ("fp32" when the rule
        keeps fp32; a warning says so).
    """
    if precision in (None, "fp32", "float32"):
        return contextlib.nullcontext(), "fp32"
    if precision not in ("bf16", "bfloat16"):
        raise XpruneError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not bf16_allowed(criterion):
        warnings.warn(
            f"criterion {criterion.name!r} keeps fp32: its rule is not reliable under bf16 autocast "
            f"(bf16 is used for {', '.join(sorted(BF16_CRITERIA))})", stacklevel=3)
        return contextlib.nullcontext(), "fp32"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bf16"
