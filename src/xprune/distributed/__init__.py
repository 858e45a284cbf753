"""Scale: scoring across processes (``torch.distributed``), on a device, in bf16.

Inside an initialised process group of more than one process (``torchrun``,
or ``torch.distributed.init_process_group``), :func:`xprune.score` and
:func:`xprune.evaluate.accuracy` split the data by rank (rank ``r`` of ``W``
takes samples ``r, r + W, ...``, as a ``DistributedSampler`` without padding),
and the criteria all-reduce their raw per-unit sums and counts (float64)
before finalising them, so the scores equal the single-process ones up to
summation order. Criteria that cannot be split exactly are computed on every
rank and rank 0's values broadcast (a warning says so). Outside a group every
function here is a no-op.

Parameters: the process group's ``timeout`` (``XPRUNE_DIST_TIMEOUT`` under
``torchrun``, default 600 s: a failing or silent peer raises
:class:`DistributedError` instead of hanging); ``score(..., device=...)``
(the device the model is moved to for the call) and ``precision="bf16"``
(autocast for the criteria in :data:`BF16_CRITERIA`).

Method: data-parallel reduction of sufficient statistics with
``torch.distributed`` collectives (gloo on CPU, NCCL on CUDA).

Which criteria are split, how each kind of data is split, failures, devices
and precision: `docs/distributed.md <../../../docs/distributed.md>`_.

Modules: :mod:`.group` (the process group), :mod:`.split` (each rank's share
of the data), :mod:`.scoring` (sharded scoring sessions and the reduction of
sums), :mod:`.collectives` (broadcasts, counts, objects), :mod:`.devices`
(device and precision).
"""

from __future__ import annotations

from .collectives import broadcast, broadcast_object, gather_object, run_on_main, sum_counts
from .devices import BF16_CRITERIA, bf16_allowed, on_device, precision_context
from .group import DistributedError, init_from_env, is_active, is_main, local, rank, world_size
from .scoring import all_reduce_sums, mode, sharded_session
from .split import batches, shard

__all__ = [
    "BF16_CRITERIA",
    "DistributedError",
    "all_reduce_sums",
    "batches",
    "broadcast",
    "broadcast_object",
    "gather_object",
    "init_from_env",
    "is_active",
    "is_main",
    "local",
    "mode",
    "on_device",
    "precision_context",
    "rank",
    "run_on_main",
    "shard",
    "sum_counts",
    "world_size",
    "bf16_allowed",
    "sharded_session",
]
