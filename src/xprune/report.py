"""Showing results: a terminal table (rich), a plot of accuracy against pruning rate, and JSON."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._io import atomic_write
from .pipeline import Curve


def _mean_std(values: Iterable[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_curves(curves: Iterable[Curve]) -> dict[str, list[Curve]]:
    """Curves by criterion name (several seeds per criterion)."""
    out: dict[str, list[Curve]] = {}
    for c in curves:
        out.setdefault(c.criterion, []).append(c)
    return out


def curves_table(
    curves: Iterable[Curve],
    *,
    at: Sequence[float] = (0.25, 0.5, 0.75),
    title: str | None = None,
    chosen_by: Iterable[Curve] | None = None,
):
    """A rich Table: per criterion, AUC (mean +- std over seeds) and accuracy at chosen rates, best AUC first.

    ``chosen_by``: curves of the same criteria on another split (the validation split a choice is made on);
    their AUC gets a column of its own before the others, and the rows are sorted by it.
    """
    from rich.table import Table

    grouped = group_curves(curves)
    chooser = group_curves(chosen_by) if chosen_by is not None else None
    table = Table(title=title)
    table.add_column("criterion")
    if chooser is not None:
        table.add_column("val AUC", justify="right", no_wrap=True)
    table.add_column("AUC" if chooser is None else "test AUC", justify="right", no_wrap=True)
    for r in at:
        table.add_column(f"acc@{round(100 * r)}%", justify="right", no_wrap=True)
    table.add_column("seeds", justify="right")
    rows = []
    for name, cs in grouped.items():
        auc = _mean_std(c.auc for c in cs)
        accs = [_mean_std(c.at(r) for c in cs) for r in at]
        val = _mean_std(c.auc for c in chooser[name]) if chooser is not None and name in chooser else None
        rows.append(((val or auc)[0], name, val, auc, accs, len(cs)))
    for _, name, val, auc, accs, n in sorted(rows, key=lambda t: -t[0]):
        fmt = (lambda m, s: f"{m:.3f}±{s:.3f}") if n > 1 else (lambda m, s: f"{m:.3f}")
        first = [] if chooser is None else [fmt(*val) if val is not None else "-"]
        table.add_row(name, *first, fmt(*auc), *[fmt(*a) for a in accs], str(n))
    return table


def curves_markdown(curves: Iterable[Curve], *, at: Sequence[float] = (0.25, 0.5, 0.75)) -> str:
    """The same table as :func:`curves_table`, as GitHub markdown."""
    grouped = group_curves(curves)
    head = "| criterion | AUC | " + " | ".join(f"acc@{round(100 * r)}%" for r in at) + " | seeds |"
    lines = [head, "|" + "---|" * (len(at) + 3)]
    rows = []
    for name, cs in grouped.items():
        auc = _mean_std(c.auc for c in cs)
        rows.append((auc, name, [_mean_std(c.at(r) for c in cs) for r in at], len(cs)))
    for auc, name, accs, n in sorted(rows, key=lambda t: -t[0][0]):
        fmt = (lambda m, s: f"{m:.3f} ± {s:.3f}") if n > 1 else (lambda m, s: f"{m:.3f}")
        lines.append(f"| {name} | {fmt(*auc)} | " + " | ".join(fmt(*a) for a in accs) + f" | {n} |")
    return "\n".join(lines)


def plot_curves(
    curves: Iterable[Curve], path: str | Path, *, title: str = "Accuracy vs pruning rate", baseline: float | None = None
) -> Path:
    """PNG of accuracy against pruning rate, one line per criterion (mean over seeds, band = +-1 std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grouped = group_curves(curves)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    order = sorted(grouped, key=lambda n: -statistics.fmean(c.auc for c in grouped[n]))
    for name in order:
        cs = grouped[name]
        rates = np.array(cs[0].rates) * 100
        acc = np.array([c.accuracies for c in cs])
        mean, std = acc.mean(0), acc.std(0)
        (line,) = ax.plot(rates, mean, marker="o", ms=3, label=f"{name} (AUC {mean.mean():.3f})")
        if len(cs) > 1:
            ax.fill_between(rates, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("units removed (%)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def save_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` (curves become dicts) as indented JSON, atomically."""

    def default(o):
        if isinstance(o, Curve):
            return o.to_dict()
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    atomic_write(path, json.dumps(obj, indent=1, default=default))
    return Path(path)


def ratio_text(better: str, worse: str):
    """``f(before, after)`` saying how many times smaller ``after`` is, with the word that fits.

    ``ratio_text("faster", "slower")(1.0, 0.8)`` is ``"1.25x faster"`` and ``(0.96, 1.0)`` gives
    ``"1.04x slower"``: the factor is always >= 1, the word says which way; equal values give ``"same"``.
    """

    def change(before: float, after: float) -> str:
        if before == after:
            return "same"
        if after <= 0 or before <= 0:
            return "n/a"
        return f"{before / after:.2f}x {better}" if before > after else f"{after / before:.2f}x {worse}"

    return change


def comparison_table(before: Mapping[str, Any], after: Mapping[str, Any], title: str = "Before and after pruning"):
    """A rich Table of accuracy / parameters / MACs / latency before and after pruning, with ratios."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("", "before", "after", "change"):
        table.add_column(col, justify="right" if col else "left")
    fewer, faster = ratio_text("fewer", "more"), ratio_text("faster", "slower")
    rows = [
        ("accuracy", "accuracy", lambda v: f"{v:.4f}", lambda b, a: f"{a - b:+.4f}"),
        ("parameters", "params", lambda v: f"{v:,}", fewer),
        ("MACs (1 mult-add = 1)", "macs", lambda v: f"{v:,}", fewer),
        ("latency bs=1 (ms)", "ms_1", lambda v: f"{v:.3f}", faster),
        ("latency bs=64 (ms)", "ms_64", lambda v: f"{v:.3f}", faster),
    ]
    for label, key, fmt, change in rows:
        if key in before and key in after:
            table.add_row(label, fmt(before[key]), fmt(after[key]), change(before[key], after[key]))
    return table
