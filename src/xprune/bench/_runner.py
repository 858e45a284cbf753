"""The runner of the benchmark suite: the scenario table, time estimates and :func:`run`."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import XpruneError
from ._common import Context, _record
from ._heatmaps import heatmaps
from ._minilm import minilm
from ._page import results_page
from ._perf import perf
from ._resnet import resnet
from ._toy import _toy_steps, toy
from ._transfer import transfer_task
from ._vit import vit

#: name -> (function, steps per seed or per run, estimated seconds (quick, full per seed), per-seed?)
SCENARIOS: dict[str, tuple[Callable[[Context], dict], Callable[[bool, int], int], tuple[float, float], bool]] = {
    "toy": (toy, _toy_steps, (4, 320), True),
    "transfer": (transfer_task, lambda q, s: s, (6, 120), True),
    "resnet": (resnet, lambda q, s: s * (4 if q else 11), (30, 480), True),
    "vit": (vit, lambda q, s: s, (25, 90), True),
    "minilm": (minilm, lambda q, s: 1, (400, 400), False),
    "perf": (perf, lambda q, s: 3, (6, 120), False),
    "heatmaps": (heatmaps, lambda q, s: 1, (3, 5), False),
}
QUICK = ("toy", "transfer", "perf", "heatmaps")


def estimate(name: str, quick: bool, seeds: int) -> float:
    """Rough seconds a scenario takes on 2 CPU cores (pretrained models cached)."""
    _, _, (q, full), per_seed = SCENARIOS[name]
    return (q if quick else full) * (seeds if per_seed else 1)


def run(
    scenarios: Sequence[str] | None = None,
    *,
    out: str | os.PathLike = "docs/bench",
    quick: bool = False,
    seeds: Sequence[int] | None = None,
    page: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run benchmark scenarios and write their outputs.

    ``scenarios`` default to all of :data:`SCENARIOS` (``quick``: :data:`QUICK`); each writes
    ``NAME.json``, ``NAME.md`` and plots into ``out``, and ``summary.json`` records what ran.
    Returns scenario name -> its payload; raises :class:`~xprune.errors.XpruneError` on an
    unknown scenario name. Parameters in full: ``docs/bench.md``.
    """
    names = list(scenarios or (QUICK if quick else SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise XpruneError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    seeds = list(seeds) if seeds else ([0] if quick else [0, 1, 2])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from .._progress import Progress

    total_est = sum(estimate(n, quick, len(seeds)) for n in names)
    if progress:
        print(
            f"xprune bench: {', '.join(names)}; seeds {seeds}; {'quick' if quick else 'full'}; "
            f"estimated {total_est / 60:.1f} min on 2 CPU cores -> {out}",
            file=sys.stderr,
            flush=True,
        )
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.setdefault("scenarios", {})
    results = {}
    with Progress(enabled=progress, transient=False) as bar:
        for name in names:
            fn, steps, _, _ = SCENARIOS[name]
            task = bar.add_task(f"{name} (~{estimate(name, quick, len(seeds)):.0f} s)", total=steps(quick, len(seeds)))
            ctx = Context(out, quick, seeds, functools.partial(bar.advance, task), bar.log)
            t0 = time.perf_counter()
            results[name] = fn(ctx)
            seconds = time.perf_counter() - t0
            summary = _record(
                summary_path, summary, name, seconds=seconds, quick=quick, seeds=seeds, names=names, out=out
            )
            bar.update(task, completed=steps(quick, len(seeds)))
    if page is not None:
        results_page(out, page)
    return results
