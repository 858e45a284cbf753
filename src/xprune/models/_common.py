"""Helpers shared by the training, cache and transfer modules: seeding, devices, train/eval modes, progress bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..data import Split
from ..errors import XpruneError


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with the global CPU RNG seeded, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _as_split(data: Any, what: str) -> Split:
    if isinstance(data, Split):
        return data
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    ):
        return Split(data[0], data[1])
    raise XpruneError(f"{what} must be an xprune.data.Split or an (X, y) tensor pair; got {type(data).__name__}")


def _modes(model: nn.Module) -> dict[nn.Module, bool]:
    """The train/eval flag of every submodule (restored exactly by :func:`_restore_modes`)."""
    return {m: m.training for m in model.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, flag in modes.items():
        m.training = flag


def _progress(enabled: bool):
    """Progress on stderr (:mod:`xprune._progress`: a bar in a terminal, lines otherwise), or ``None``."""
    if not enabled:
        return None
    from .._progress import Progress

    return Progress(transient=False)
