"""Targeted correction: remove the few units that carry an unwanted behaviour, guarded by a general set.

Hatefi et al. (2025, "Attribution-guided Pruning for Compression, Circuit
Discovery, and Targeted Correction in LLMs", arXiv 2506.13727) rank units by
relevance on samples of the unwanted behaviour contrasted with relevance on
general samples and prune the top ones (their code is not released; the grid,
the stopping rule and the guard below are xprune's). :func:`correct` does that
with :func:`~xprune.control.contrast.contrastive_scores`, sweeps the
number of units removed on a grid, measures the behaviour and the general
metric at each point (a curve), and picks the smallest removal that meets a
target suppression while the general metric stays within a bound.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import XpruneError
from ..plan import Plan
from ..select import select
from ..surgery import inexact_masks
from ._common import check_counts, geometric_counts, measured, pyplot, removed, save_figure, write_json
from .contrast import Contrast, contrastive_scores
from .metrics import Metric, as_metric, default_metric

__all__ = ["Correction", "correct"]


@dataclass
class Correction:
    """What :func:`correct` did.

    Attributes
    ----------
    model : nn.Module
        A copy of the model with the chosen units removed physically (single
        weights: masked); the caller's model is untouched.
    n : int
        Units removed at the chosen point.
    plan : Plan
        Which units (``xprune.Plan``; ``plan.meta["contrast"]`` their contrast).
    curve : list of dict
        ``{"removed", "behaviour", "general", "mode"}`` per grid point (``mode``:
        how the point was pruned for measuring, ``None`` when nothing was removed;
        with ``confidence``, also ``"flips"`` and ``"p_value"``).
    before, after : dict
        ``{"behaviour", "general"}`` of the model before and of :attr:`model`.
    met : bool
        Whether some grid point met the target; otherwise ``reason`` says why
        and the chosen point is the one with the least behaviour among those
        whose general metric stayed within the bound.
    """

    model: nn.Module
    n: int
    plan: Plan
    curve: list[dict[str, Any]]
    before: dict[str, float]
    after: dict[str, float]
    met: bool
    reason: str = ""
    contrast: Contrast | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Units of the kind in the model before."""
        return self.plan.n_total

    @property
    def suppression(self) -> float:
        """Fraction of the behaviour metric removed: ``1 - after / before`` (0 when it was 0 before)."""
        b0 = self.before["behaviour"]
        return 1 - self.after["behaviour"] / b0 if b0 else 0.0

    def removed_units(self) -> list[dict[str, Any]]:
        """``[{"layer", "unit", "contrast"}]`` of the units removed, highest contrast first."""
        rows = [
            {
                "layer": g,
                "unit": int(i),
                "contrast": float(self.contrast.contrast[g][i]) if self.contrast is not None else None,
            }
            for g, idxs in self.plan.remove.items()
            for i in idxs
        ]
        return sorted(rows, key=lambda r: -(r["contrast"] or 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "xprune": "correction",
            "removed": self.n,
            "total": self.plan.n_total,
            "kind": self.plan.kind,
            "met": self.met,
            "reason": self.reason,
            "before": self.before,
            "after": self.after,
            "suppression": self.suppression,
            "curve": self.curve,
            "settings": self.settings,
            "units": self.removed_units(),
            "plan": self.plan.to_dict(),
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(self.to_dict(), path)

    def plot(self, path: str | Path) -> Path:
        """PNG: the behaviour and the general metric against the units removed, the chosen point marked."""
        plt = pyplot()
        xs = [r["removed"] for r in self.curve]
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
        ax.plot(
            xs,
            [r["behaviour"] for r in self.curve],
            "o-",
            color="tab:red",
            ms=3,
            label=f"behaviour ({self.settings.get('behaviour_metric', '')})",
        )
        ax.set_xlabel(f"{self.plan.kind} removed (of {self.plan.n_total})")
        ax.set_ylabel("behaviour", color="tab:red")
        if max(xs) > 0 and min(x for x in xs if x > 0) * 8 < max(xs):
            ax.set_xscale("symlog", linthresh=1)
        other = ax.twinx()
        other.plot(
            xs,
            [r["general"] for r in self.curve],
            "s-",
            color="tab:blue",
            ms=3,
            label=f"general ({self.settings.get('general_metric', '')})",
        )
        other.set_ylabel("general", color="tab:blue")
        ax.axvline(self.n, color="gray", ls="--", lw=1)
        ax.set_title(
            f"correction: {self.n} {self.plan.kind} removed" + ("" if self.met else " (target not met)"), fontsize=10
        )
        lines = ax.get_legend_handles_labels()
        more = other.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="best")
        ax.grid(alpha=0.3)
        return save_figure(fig, path)

    def __str__(self) -> str:
        b0, b1, g0, g1 = (
            self.before["behaviour"],
            self.after["behaviour"],
            self.before["general"],
            self.after["general"],
        )
        head = (
            f"Correction: removed {self.n} of {self.plan.n_total} {self.plan.kind}; behaviour {b0:.4g} -> "
            f"{b1:.4g}, general {g0:.4g} -> {g1:.4g}"
        )
        return head + ("" if self.met else f"; target not met: {self.reason}")


def _budget(budget: Any, total: int, removable: int) -> int:
    if budget is None:
        return min(max(1, round(0.01 * total)), removable)
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise XpruneError(
            f"budget must be a number of units (int) or a fraction of them (float in (0, 1)), got {budget!r}"
        )
    if not isinstance(budget, numbers.Integral):
        budget = float(budget)
    if isinstance(budget, float) and 0 < budget < 1:
        n = max(1, round(budget * total))
    elif isinstance(budget, float) and not budget.is_integer():
        raise XpruneError(f"budget must be a count (int) or a fraction in (0, 1), got {budget}")
    else:
        n = int(budget)
    if n < 1:
        raise XpruneError(f"budget must be at least one unit, got {budget!r}")
    if n > removable:
        raise XpruneError(
            f"budget {budget!r} exceeds the {removable} of {total} units that can be removed (every "
            f"layer keeps at least one); give a budget <= {removable}"
        )
    return n


def _certify(rows: list[dict], base, pruned_rows, max_change: float, confidence: float) -> list[bool]:
    """Fixed-sequence Learn-then-Test over the grid in increasing order: certified prefix of the rows."""
    from ..guarantee.stats import binomial_p_value

    ok, alive = [], True
    n = int(base.numel())
    for row, correct_k in zip(rows, pruned_rows, strict=True):
        if row["removed"] == 0:
            row["flips"], row["p_value"] = 0, 0.0
        else:
            flips = int((base & ~correct_k).sum())
            row["flips"], row["p_value"] = flips, binomial_p_value(flips, n, max_change)
            alive = alive and row["p_value"] <= 1 - confidence
        ok.append(alive)
    return ok


def correct(
    model: nn.Module,
    behaviour: Any,
    general: Any,
    *,
    units: str = "neurons",
    criterion: Any = "lrp",
    combine: str = "difference",
    floor: float = 0.05,
    budget: int | float | None = None,
    counts: Sequence[int] | None = None,
    behaviour_metric: Any = None,
    general_metric: Any = None,
    general_higher_is_worse: bool | None = None,
    suppression: float = 0.5,
    max_general_change: float = 0.02,
    confidence: float | None = None,
    behaviour_test: Any = None,
    general_test: Any = None,
    contrast: Contrast | None = None,
    target: Any = "label",
    **score_options: Any,
) -> Correction:
    """Remove the units that carry ``behaviour`` more than ``general``, as few as meet the target.

    Parameters
    ----------
    model : nn.Module
        Never modified (the result holds a pruned copy).
    behaviour, general : data
        As for :func:`~xprune.control.contrast.contrastive_scores`: samples of
        the unwanted behaviour, labelled with the unwanted answer (classifiers:
        the class it should no longer give; causal LMs: the continuation tokens
        it should no longer produce, other tokens ``-100``), and samples of
        the task to keep.
    units, criterion, combine, floor, target, **score_options :
        The contrastive scores' settings (``units`` default ``"neurons"``,
        transformers' MLP neurons; ``"channels"`` for CNNs).
    budget : int or float, optional
        Most units removed: a count, or a fraction of all units of the kind;
        default 1% of them (at least one).
    counts : sequence of int, optional
        Numbers of units to try (default ``0, 1, 2, 4, ...`` up to ``budget``).
        The top-``n`` contrast units are removed at each (nested sets).
    behaviour_metric : callable or Metric, optional
        ``model -> float``, higher = more of the behaviour. Default: accuracy
        on the behaviour set w.r.t. its labels (classifiers), the mean
        probability of its labelled tokens (causal LMs); see
        :mod:`xprune.control.metrics`.
    general_metric : callable or Metric, optional
        ``model -> float`` of the task to keep. Default: accuracy on the general
        set (classifiers), perplexity (causal LMs). A plain callable needs
        ``general_higher_is_worse``.
    suppression : float in (0, 1]
        The behaviour metric must fall to at most ``(1 - suppression)`` times its value before.
    max_general_change : float in [0, 1)
        Largest relative worsening of the general metric: an accuracy may fall
        to ``(1 - max_general_change)`` times its value, a perplexity rise to
        ``(1 + max_general_change)`` times.
    confidence : float in (0, 1), optional
        Instead of the measured bound, certify the general accuracy drop
        (classifiers with the default general metric): the drop of accuracy
        on ``general_test`` (required, held out from the scores) is at most
        ``max_general_change`` (absolute, as in :func:`xprune.choose_rate`)
        with this probability, by fixed-sequence Learn-then-Test over the grid
        in increasing order (exact binomial p-values,
        :func:`xprune.guarantee.stats.binomial_p_value`).
    behaviour_test, general_test : data, optional
        Where the default metrics are measured (default: the scored sets).
    contrast : Contrast, optional
        Precomputed contrastive scores (then the scoring settings are not used).

    Returns
    -------
    Correction
    """
    if not 0 < suppression <= 1:
        raise XpruneError(
            f"suppression must lie in (0, 1] (the fraction of the behaviour metric to remove), got {suppression!r}"
        )
    if not 0 <= max_general_change < 1:
        raise XpruneError(f"max_general_change must lie in [0, 1) (relative change), got {max_general_change!r}")
    if confidence is not None and not 0 < confidence < 1:
        raise XpruneError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")
    if isinstance(behaviour_metric, Metric) and not behaviour_metric.higher_is_worse:
        raise XpruneError(
            "the behaviour metric must grow with the unwanted behaviour (higher_is_worse=True); "
            "pass e.g. Metric(lambda m: 1 - f(m)) for a metric that falls with it"
        )
    if contrast is None:
        contrast = contrastive_scores(
            model, behaviour, general, criterion, units, combine=combine, floor=floor, target=target, **score_options
        )
    keep = contrast.scores
    total = keep.total
    removable = sum(max(0, keep[g].numel() - 1) for g in keep)
    if counts is None:
        counts = geometric_counts(_budget(budget, total, removable))
    else:
        if budget is not None:
            raise XpruneError("give counts= (the grid) or budget= (its end), not both")
        counts = check_counts(counts, removable, "units that can be removed: every layer keeps one")
    bm = as_metric(
        behaviour_metric,
        higher_is_worse=True,
        default=default_metric(model, behaviour if behaviour_test is None else behaviour_test, "behaviour"),
        what="behaviour_metric",
    )
    gm = as_metric(
        general_metric,
        higher_is_worse=general_higher_is_worse,
        default=default_metric(model, general if general_test is None else general_test, "general"),
        what="general_metric",
    )
    certify = None
    if confidence is not None:
        from .._inputs import is_causal_lm

        if general_metric is not None or is_causal_lm(model):
            raise XpruneError(
                "confidence= certifies the default general metric of a classifier (accuracy); drop "
                "confidence or general_metric"
            )
        if general_test is None:
            raise XpruneError("confidence= needs general_test= held-out labelled samples that the scores never saw")
        from ..guarantee.choose import correctness

        certify = functools.partial(correctness, data=general_test)

    inexact = inexact_masks(model, keep) if keep.kind == "channels" else {}
    rows: list[dict[str, Any]] = []  # removed, behaviour, general, mode
    plans, outcomes = [], []
    for n in counts:
        plan = select(keep, n / total, warn=False)
        pruned, mode = measured(model, plan, inexact)
        rows.append({"removed": plan.n_removed, "behaviour": bm(pruned), "general": gm(pruned), "mode": mode})
        plans.append(plan)
        if certify is not None:
            outcomes.append(certify(pruned))
    b0, g0 = rows[0]["behaviour"], rows[0]["general"]

    def general_ok(g):
        slack = abs(g0) * max_general_change  # relative to the size of the value before
        return g <= g0 + slack if gm.higher_is_worse else g >= g0 - slack

    within = (
        _certify(rows, outcomes[0], outcomes, max_general_change, confidence)
        if certify is not None and confidence is not None
        else [general_ok(r["general"]) for r in rows]
    )
    good = [j for j, r in enumerate(rows) if within[j] and r["behaviour"] <= (1 - suppression) * b0]
    met = bool(good)
    reason = ""
    if met:
        j = good[0]
    else:
        allowed = [j for j in range(len(rows)) if within[j]] or [0]
        j = min(allowed, key=lambda k: (rows[k]["behaviour"], rows[k]["removed"]))
        last = rows[-1]
        reason = (
            f"no grid point up to {last['removed']} units brings the behaviour metric to "
            f"<= {(1 - suppression) * b0:.4g} ({suppression:.0%} below {b0:.4g}) with the general metric "
            f"{'certified' if certify is not None else 'within'} {max_general_change:g} of {g0:.4g}; the best "
            f"allowed point ({rows[j]['removed']} units) reaches {rows[j]['behaviour']:.4g}; raise the budget, "
            "loosen max_general_change or lower suppression"
        )
    plan = plans[j]
    plan.meta["contrast"] = {g: [float(contrast.contrast[g][i]) for i in idxs] for g, idxs in plan.remove.items()}
    final = removed(model, plan)
    after = {"behaviour": bm(final), "general": gm(final)}
    settings = {
        "criterion": contrast.meta.get("criterion"),
        "units": keep.kind,
        "combine": contrast.combine,
        "floor": contrast.floor,
        "suppression": suppression,
        "max_general_change": max_general_change,
        "confidence": confidence,
        "counts": [r["removed"] for r in rows],
        "behaviour_metric": bm.name,
        "general_metric": gm.name,
        "general_higher_is_worse": gm.higher_is_worse,
    }
    return Correction(
        final, plan.n_removed, plan, rows, {"behaviour": b0, "general": g0}, after, met, reason, contrast, settings
    )
