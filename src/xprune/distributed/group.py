"""The process group: whether xprune communicates, this process's rank, initialisation, failing collectives.

See docs/distributed.md for how scoring and evaluation are split across ranks.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import os
from collections.abc import Iterator

import torch

from ..errors import XpruneError

__all__ = ["DistributedError", "init_from_env", "is_active", "is_main", "local", "rank", "world_size"]

_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("xprune_distributed_local", default=False)


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
