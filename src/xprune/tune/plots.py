"""Plots of a PXP study: ``history.png`` (AUC per trial, best so far) and ``importances.png``.

:func:`save_plots` takes a finished optuna study and the output folder and
returns the written files by name. matplotlib and optuna are imported when it
is called. Part of :mod:`xprune.tune` (PXP, Hatefi et al. 2024,
arXiv:2408.12568); see ``docs/tune.md``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from .._io import atomic_write

__all__ = ["save_plots"]


def save_plots(study, out: Path) -> dict[str, Path]:
    """History (AUC per trial, best so far) and parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    TS = optuna.trial.TrialState
    files: dict[str, Path] = {}
    trials = study.get_trials(deepcopy=False)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    done = [t for t in trials if t.state == TS.COMPLETE and "stopped_after" not in t.user_attrs]
    pruned = [
        t
        for t in trials  # stopped by the pruner (recorded as complete under the GP sampler)
        if (t.state == TS.PRUNED or "stopped_after" in t.user_attrs) and t.intermediate_values
    ]
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="complete (validation AUC)")
    if pruned:
        ax.scatter(
            [t.number for t in pruned],
            [t.intermediate_values[t.last_step] for t in pruned],
            marker="x",
            s=18,
            color="grey",
            label="pruned (projected AUC at stop)",
        )
    best, xs, ys = -math.inf, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("AUC (accuracy vs pruning rate)")
    ax.set_title(f"study {study.study_name}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    files["history"] = _savefig(fig, out / "history.png")
    plt.close(fig)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except Exception as e:  # noqa: BLE001  (too few trials, constant parameters)
        warnings.warn(f"no parameter importances: {e}", stacklevel=3)
        return files
    if imp:
        names = list(imp)[::-1]
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1.2))
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (optuna's default evaluator, normalised)")
        ax.set_title("parameter importances")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        files["importances"] = _savefig(fig, out / "importances.png")
        plt.close(fig)
    return files


def _savefig(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())
    return path
