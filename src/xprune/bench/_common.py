"""Shared helpers of the benchmark suite: criterion specs, the scenario context, formatting,
the PXP-tuning helper, labelled curves, AUC ranking, standalone scripts and the run record."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import evaluate, report
from .._io import atomic_write
from ..errors import XpruneError

ROOT = Path(__file__).resolve().parents[3]  # the source checkout (benchmarks/, tests/) when there is one

# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class Spec:
    """A criterion as the suite runs it: a display label, a registry name and options."""

    label: str
    name: str
    options: tuple = ()

    def kwargs(self, seed: int) -> dict[str, Any]:
        kw = dict(self.options)
        if self.name == "random":
            kw["seed"] = seed
        return kw

    @property
    def data_free(self) -> bool:
        return self.name in ("weight", "l2", "random")


def _specs(quick: bool) -> list[Spec]:
    out = [
        Spec("weight", "weight"),
        Spec("l2", "l2"),
        Spec("gradient", "gradient"),
        Spec("taylor", "taylor"),
        Spec("activation", "activation"),
        Spec("random", "random"),
        Spec("lrp (epsilon-plus)", "lrp"),
        Spec("lrp (zplus)", "lrp", (("composite", "zplus"),)),
        Spec("lrp (epsilon)", "lrp", (("composite", "epsilon"),)),
        Spec("integrated-gradients", "integrated-gradients", (("n_steps", 4 if quick else 16),)),
        Spec("singe", "singe", (("n_steps", 3 if quick else 10),)),  # per unit, geometric, loss (the paper)
        Spec("singe-fast", "singe-fast", (("n_steps", 3 if quick else 10),)),
    ]  # xprune's shared-path simplification
    if not quick:
        out.insert(9, Spec("lrp (epsilon-alpha2-beta1)", "lrp", (("composite", "epsilon-alpha2-beta1"),)))
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = _mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


class Context:
    """What a scenario gets: output folder, size, seeds and a progress callback."""

    def __init__(
        self, out: Path, quick: bool, seeds: Sequence[int], advance: Callable[[float], None], log: Callable[[str], None]
    ):
        self.out, self.quick, self.seeds, self.advance, self.log = out, quick, list(seeds), advance, log

    def write(self, name: str, payload: dict, markdown: str) -> None:
        report.save_json(payload, self.out / f"{name}.json")
        atomic_write(self.out / f"{name}.md", markdown.rstrip() + "\n")


# --------------------------------------------------------------------------- PXP tuning, labelled curves

#: the PXP search inside the suite: scenario -> ((trials, sampler) full, (trials, sampler) quick, validation samples)
_TUNE = {
    "transfer": ((15, "random"), (3, "random"), 600),  # random search: it beat the GP (docs/tune.md)
    "vit": ((10, "random"), (3, "random"), 300),
}


def _tuned_lrp(
    ctx: Context,
    scenario: str,
    model: nn.Module,
    reference: Any,
    val: Any,
    rates: Sequence[float],
    seed: int,
    *,
    folder: str | None = None,
    **tune_options: Any,
) -> tuple[dict, dict]:
    """PXP: tune an LRP composite on ``val`` (a seeded subset); ``(score options, summary)``.

    The study is kept in ``out/tune/<folder or scenario>-seed<seed>``.
    """
    from ..tune import tune

    full, quick, n_val = _TUNE[scenario]
    trials, sampler = quick if ctx.quick else full
    idx = torch.randperm(len(val.X), generator=torch.Generator().manual_seed(seed))[:n_val]
    t0 = time.perf_counter()
    # the study lives in the output folder: an interrupted suite resumes it instead of starting again
    res = tune(
        model,
        reference,
        (val.X[idx], val.y[idx]),
        trials=trials,
        sampler=sampler,
        seed=seed,
        rates=rates,
        out=ctx.out / "tune" / f"{folder or scenario}-seed{seed}",
        progress=False,
        **tune_options,
    )
    summary = {
        "trials": trials,
        "sampler": sampler,
        "validation_samples": n_val,
        "val_auc": res.best_value,
        "params": res.best_params,
        "counts": res.counts,
        "seconds": time.perf_counter() - t0,
        "composite": os.path.relpath(res.composite, ctx.out),
    }
    return dict(res.options), summary


def _curves(
    model: nn.Module, reference: Any, test: Any, runs: Sequence[tuple[str, str, dict]], seed: int, **curve_options: Any
) -> list:
    """One accuracy-vs-rate curve per ``(label, criterion, options)`` run, labelled and tagged with the seed."""
    out = []
    for label, name, kwargs in runs:
        c = evaluate.curve(model, reference, test, name, **curve_options, **kwargs)
        c.criterion = label
        c.meta["seed"] = seed
        out.append(c)
    return out


# --------------------------------------------------------------------------- standalone scripts


def _script(ctx: Context, script: str, stem: str, args: Sequence[str] = ()) -> dict:
    path = ROOT / "benchmarks" / script
    if not path.exists():
        raise XpruneError(f"scenario needs {path} (a source checkout of xprune); it is not there")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path), "--out", str(ctx.out), *args], capture_output=True, text=True)
    if proc.returncode:
        raise XpruneError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    ctx.advance(1)
    payload = json.loads((ctx.out / f"{stem}.json").read_text())
    payload.setdefault("bench_seconds", time.perf_counter() - t0)
    return payload


# --------------------------------------------------------------------------- results-page helpers


def _include(md_file: Path, rel: str) -> str:
    """A markdown file's text with its relative image links made relative to the page."""
    import re

    text = md_file.read_text().strip()
    return re.sub(r"\]\((?!https?://|/)([^)]+)\)", lambda m: f"]({rel}/{m.group(1)})", text)


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _auc_ranking(curves: Sequence[dict]) -> tuple[dict[str, list[float]], list[str]]:
    """Per-seed AUCs by criterion of saved curves, and the criteria from best to worst mean AUC."""
    by: dict[str, list[float]] = {}
    for c in curves:
        by.setdefault(c["criterion"], []).append(statistics.fmean(c["accuracies"]))
    return by, sorted(by, key=lambda k: -statistics.fmean(by[k]))


# --------------------------------------------------------------------------- the run record (summary.json)


def _commit() -> str | None:
    """The source checkout's git commit (short hash, ``+`` if it has uncommitted changes), if there is one."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


def _record(
    summary_path: Path,
    summary: dict,
    name: str,
    *,
    seconds: float,
    quick: bool,
    seeds: list[int],
    names: Sequence[str],
    out: Path,
) -> dict:
    """Add scenario ``name``'s run (command, commit, threads, date) to ``summary.json``; the summary written."""
    if summary_path.exists():  # another `xprune bench` may have written to the same folder meanwhile
        summary = json.loads(summary_path.read_text())
        summary.setdefault("scenarios", {})
    summary["scenarios"][name] = {
        "seconds": seconds,
        "quick": quick,
        "seeds": seeds,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": "xprune bench "
        + " ".join(names)
        + (" --quick" if quick else "")
        + f" --seeds {','.join(map(str, seeds))} --out {out}",
        "threads": torch.get_num_threads(),
        "commit": _commit(),
    }
    atomic_write(summary_path, json.dumps(summary, indent=1))
    return summary
