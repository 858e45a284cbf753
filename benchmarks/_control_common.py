"""What the three control demos share: the order of the data-free baselines and the figure of the curves.

Used by ``control_lm.py``, ``control_shortcut.py`` and ``control_minilm.py``.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any, Callable


import xprune


def data_free_contrast(model, example, criterion: str, units: str, **options):
    """The removal order of a criterion that reads no data (``weight``, ``random``) as a Contrast.

    Its behaviour and general scores are equal, so their contrast is zero everywhere; the baseline instead
    removes in the criterion's own order: smallest weight norm first (per-layer mean-normalised, as the
    contrast is), or a seeded random order.
    """
    from xprune.control import Contrast

    s = xprune.score(model, None, criterion, units, example_inputs=example, normalize=None, **options)
    s = s.normalized("mean")
    return Contrast({g: -s[g] for g in s}, s, s, s, meta={"criterion": criterion, "units": units})


def plot(d: dict, path, *, units: str | None = None, behaviour: str = "behaviour",
         general: str = "general") -> None:
    """PNG from a stored JSON: mean behaviour and general metric over seeds against the units removed, per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [units] if units else list(dict.fromkeys(r.get("units") for r in d["rows"] if "curve" in r))
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(r["method"] for r in d["rows"]))}
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 3.8 * len(kinds)), squeeze=False)
    for row_axes, kind in zip(axes, kinds):
        rows = [r for r in d["rows"] if "curve" in r and r.get("units") in (kind, None)]
        for method in dict.fromkeys(r["method"] for r in rows):
            rs = [r for r in rows if r["method"] == method]
            ns = sorted({c["removed"] for r in rs for c in r["curve"]})
            for ax, key in zip(row_axes, ("behaviour", "general")):
                ys = [statistics.fmean(c[key] for r in rs for c in r["curve"] if c["removed"] == n) for n in ns]
                ax.plot(ns, ys, "o-", ms=3, label=method, color=colour[method])
        for ax, name in zip(row_axes, (behaviour, general)):
            ax.set_xlabel(f"{kind or 'units'} removed (top-n of each method's order)")
            ax.set_ylabel(name)
            ax.set_xscale("symlog", linthresh=1)
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.suptitle(f"mean over seeds {d['seeds']} (selection data)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, render: Callable[[dict], str], **plot_options: Any) -> None:
    """``out``.md (the tables of ``render``) and ``out``.png (:func:`plot`) from the stored ``out``.json.

    Outside quick runs the figure is also copied to ``docs/img`` (the docs site embeds it from inside its folder).
    """
    d = json.loads(out.with_suffix(".json").read_text())
    table = render(d)
    out.with_suffix(".md").write_text(table + "\n")
    print("\n" + table)
    try:
        plot(d, out.with_suffix(".png"), **plot_options)
    except ImportError:
        print("no figure: matplotlib is not installed")
        return
    if not out.stem.endswith("_quick"):
        shutil.copyfile(out.with_suffix(".png"), Path(__file__).resolve().parents[1] / "docs" / "img" / f"{out.stem}.png")
