"""Shared by correct and circuit: grids of unit counts, how each point is pruned, JSON and figures."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import XpruneError
from ..plan import Plan
from ..surgery import apply, evaluation_mode


def geometric_counts(limit: int) -> list[int]:
    """``0, 1, 2, 4, ...`` below ``limit``, then ``limit``."""
    counts, n = [0], 1
    while n < limit:
        counts.append(n)
        n *= 2
    if limit > 0:
        counts.append(limit)
    return counts


def check_counts(counts: Sequence[float], limit: int, what: str) -> list[int]:
    """``counts`` as sorted distinct ints in ``[0, limit]``, with 0 added (the model as it is)."""
    try:
        values = sorted({0} | {int(c) for c in counts})
    except (TypeError, ValueError):
        raise XpruneError(f"counts must be integers (numbers of units), got {counts!r}") from None
    if any(isinstance(c, bool) or (isinstance(c, float) and not c.is_integer()) for c in counts):
        raise XpruneError(f"counts must be whole numbers of units, got {list(counts)}")
    if values[0] < 0 or values[-1] > limit:
        raise XpruneError(f"counts must lie in [0, {limit}] ({what}), got {list(counts)}")
    return values


def measured(model: nn.Module, plan: Plan, inexact: dict) -> tuple[nn.Module, str | None]:
    """The model ``plan`` prunes, for measuring a curve point, and the mode used (None: nothing removed).

    Single weights are masked (their only form of removal); other kinds are
    masked where masking computes what removal computes (heads and neurons
    always, tested in tests/test_transformers.py; channels unless a layer reads
    across them, :func:`xprune.surgery.inexact_masks`), else removed.
    """
    if plan.n_removed == 0:
        return model, None
    mode = "mask" if plan.kind == "weights" else evaluation_mode("mask", plan, inexact)
    return apply(model, plan, mode), mode


def removed(model: nn.Module, plan: Plan) -> nn.Module:
    """A copy of ``model`` with ``plan`` applied physically (single weights: masked, their only removal)."""
    if plan.n_removed == 0:
        return copy.deepcopy(model)
    return apply(model, plan, "mask" if plan.kind == "weights" else "remove")


def write_json(obj: Any, path: str | Path) -> Path:
    from .._io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(obj, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return path


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported only when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path
