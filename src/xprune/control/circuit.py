"""Circuit discovery: the smallest set of units whose keeping preserves a behaviour.

The circuit-discovery use of attribution-guided pruning (Hatefi et al. 2025,
arXiv 2506.13727; their code is not released, so the procedure below is
xprune's reading of it, not a reproduction): units are ranked by their
relevance on reference samples of one behaviour; keeping the top-k and
removing every other unit of the kind gives a subgraph, and the circuit is the
smallest one that still shows the behaviour. Faithfulness of the top-k
subgraph, with ``m`` the behaviour metric:

.. math:: F(k) = \\frac{m(k) - m(0)}{m(\\text{full}) - m(0)}

(1 = the behaviour as in the full model, 0 = as with no unit kept); the
circuit is the smallest ``k`` of the grid with ``F(k) >= faithfulness``.
A kind may forbid emptying a layer (heads, neurons, channels: a layer keeps
at least one unit, as must every concatenated branch): where all of a layer's
units would go, its *least* relevant unit stays as a placeholder. It is not
part of the circuit, and ``m(0)`` is measured with only the placeholders.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DataError, XpruneError
from ..plan import Plan
from ..scores import Scores, score
from ..surgery import inexact_masks
from ._common import check_counts, geometric_counts, measured, pyplot, removed, save_figure, write_json
from .metrics import Metric, default_metric

__all__ = ["Circuit", "circuit", "keep_plan"]


@dataclass
class Circuit:
    """The units that carry a behaviour (see :func:`circuit`).

    Attributes
    ----------
    units : list of (str, int, float)
        ``(layer, unit, score)`` of the circuit's units, highest score first.
    curve : list of dict
        ``{"kept", "metric", "faithfulness", "mode"}`` per grid point.
    model : nn.Module
        A copy of the model with every unit outside the circuit removed
        physically (placeholders excepted; single weights: masked).
    scores : Scores
        The relevance of every unit on the behaviour set.
    placeholders : list of (str, int)
        Units kept only because their layer may not be emptied.
    """

    units: list[tuple[str, int, float]]
    curve: list[dict[str, Any]]
    model: nn.Module
    scores: Scores
    faithfulness: float
    threshold: float
    placeholders: list[tuple[str, int]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "xprune": "circuit",
            "kind": self.scores.kind,
            "k": self.k,
            "total": self.scores.total,
            "faithfulness": self.faithfulness,
            "threshold": self.threshold,
            "units": [{"layer": g, "unit": int(i), "score": float(s)} for g, i, s in self.units],
            "placeholders": [{"layer": g, "unit": int(i)} for g, i in self.placeholders],
            "curve": self.curve,
            "settings": self.settings,
            "scores": {g: self.scores[g].tolist() for g in self.scores},
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically): ``"units"`` is the list ``[{"layer", "unit", "score"}]``."""
        return write_json(self.to_dict(), path)

    def plot(self, path: str | Path) -> Path:
        """PNG: a layer x unit map of the scores, the circuit's units ringed; its faithfulness curve beside it."""
        plt = pyplot()
        import numpy as np

        names = list(self.scores)
        width = max(self.scores[g].numel() for g in names)
        grid = np.full((len(names), width), np.nan)
        for r, g in enumerate(names):
            grid[r, : self.scores[g].numel()] = self.scores[g].numpy()
        fig, (ax, cax) = plt.subplots(
            1, 2, figsize=(10, max(3.0, 0.35 * len(names) + 1.5)), dpi=120, gridspec_kw={"width_ratios": [3, 1.4]}
        )
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.04, label=f"relevance ({self.scores.criterion})")
        row = {g: r for r, g in enumerate(names)}
        if self.units:
            ax.scatter(
                [i for _, i, _ in self.units],
                [row[g] for g, _, _ in self.units],
                s=60,
                facecolors="none",
                edgecolors="red",
                linewidths=1.5,
                label=f"circuit ({self.k})",
            )
            ax.legend(fontsize=8, loc="upper right")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names, fontsize=7)
        ax.set_xlabel(f"{self.scores.kind[:-1] if self.scores.kind.endswith('s') else self.scores.kind} index")
        ax.set_title(
            f"circuit: {self.k} of {self.scores.total} {self.scores.kind}, faithfulness {self.faithfulness:.3f}",
            fontsize=10,
        )
        cax.plot([r["kept"] for r in self.curve], [r["faithfulness"] for r in self.curve], "o-", ms=3)
        cax.axhline(self.threshold, color="gray", ls="--", lw=1)
        cax.axvline(self.k, color="red", ls=":", lw=1)
        cax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        cax.set_xlabel("units kept")
        cax.set_ylabel("faithfulness")
        cax.grid(alpha=0.3)
        return save_figure(fig, path)

    def __str__(self) -> str:
        listed = ", ".join(f"{g}[{i}]" for g, i, _ in self.units[:10]) + (", ..." if self.k > 10 else "")
        return (
            f"Circuit: {self.k} of {self.scores.total} {self.scores.kind} (faithfulness {self.faithfulness:.3f}"
            f" >= {self.threshold}): {listed}"
        )


def ranking(scores: Scores) -> list[tuple[str, int, float]]:
    """Every unit as ``(group, unit, score)``, highest score first (ties: forward order, then unit index)."""
    rows = [(g, i, float(v)) for g in scores for i, v in enumerate(scores[g].tolist())]
    return sorted(rows, key=lambda r: -r[2])  # stable: ties keep forward order and index


def keep_plan(scores: Scores, keep: set[tuple[str, int]]) -> tuple[Plan, list[tuple[str, int]]]:
    """The plan removing every unit outside ``keep``, and the placeholders it must keep.

    A layer (and every part of a layer, see :attr:`Scores.parts`) that would lose
    all its units keeps its least relevant one.
    """
    remove, holders = {}, []
    for g in scores:
        values = scores[g]
        gone = {i for i in range(values.numel()) if (g, i) not in keep}
        for part in scores.parts.get(g) or [list(range(values.numel()))]:
            part = [u for u in part if 0 <= u < values.numel()]
            if part and all(u in gone for u in part):
                low = min(part, key=lambda u: (float(values[u]), u))
                gone.discard(low)
                holders.append((g, low))
        remove[g] = sorted(gone)
    plan = Plan(
        scores.kind,
        remove,
        {g: scores[g].numel() for g in scores},
        dict(scores.members),
        dict(scores.roots),
        scores.example,
        {"criterion": scores.criterion, "kept": len(keep)},
    )
    return plan, holders


def circuit(
    model: nn.Module,
    behaviour: Any,
    *,
    units: str = "heads",
    criterion: Any = "lrp",
    faithfulness: float = 0.9,
    metric: Any = None,
    counts: Sequence[int] | None = None,
    target: Any = "label",
    scores: Scores | None = None,
    behaviour_test: Any = None,
    **score_options: Any,
) -> Circuit:
    """The smallest top-relevance set of units that keeps ``faithfulness`` of a behaviour.

    Parameters
    ----------
    model : nn.Module
        Never modified.
    behaviour : data
        Samples of the behaviour, labelled with the answer it gives (anything
        :func:`xprune.score` reads).
    units, criterion, target, **score_options :
        As for :func:`xprune.score` (default: attention heads, LRP; the
        criterion's default per-layer normalisation unless ``normalize=``).
    faithfulness : float in (0, 1]
        Share of the behaviour the circuit must keep (see the module's docstring).
    metric : callable or Metric, optional
        ``model -> float`` measuring the behaviour (either direction). Default:
        accuracy on ``behaviour`` w.r.t. its labels (classifiers), mean
        probability of its labelled tokens (causal LMs).
    counts : sequence of int, optional
        Numbers of units kept to try (default: every count up to 64 units,
        else ``0, 1, 2, 4, ...`` and all of them).
    scores : Scores, optional
        Precomputed relevance (then the scoring settings are not used).
    behaviour_test : data, optional
        Where the default metric is measured (default: ``behaviour``).

    Returns
    -------
    Circuit
    """
    if isinstance(faithfulness, bool) or not isinstance(faithfulness, (int, float)) or not 0 < faithfulness <= 1:
        raise XpruneError(f"faithfulness must lie in (0, 1], got {faithfulness!r}")
    if scores is None:
        if behaviour is None:
            raise DataError("the behaviour set is None: pass samples of the behaviour (e.g. (X, y)) or scores=")
        with warnings.catch_warnings():  # one behaviour: few classes are meant to be covered
            warnings.filterwarnings("ignore", message="the reference samples cover")
            try:
                scores = score(model, behaviour, criterion, units, target=target, **score_options)
            except DataError as e:
                if "data is empty" in str(e):
                    raise DataError("the behaviour set is empty: pass at least one sample of the behaviour") from None
                raise
    total = scores.total
    grid = (
        list(range(total + 1))
        if counts is None and total <= 64
        else (geometric_counts(total) if counts is None else check_counts(counts, total, "units of the kind"))
    )
    if grid[-1] != total:
        grid.append(total)
    m = metric if isinstance(metric, Metric) or callable(metric) else None
    if metric is not None and m is None:
        raise XpruneError(f"metric must be a callable model -> float, got {type(metric).__name__}")
    if m is None:
        m = default_metric(model, behaviour if behaviour_test is None else behaviour_test, "behaviour")
    order = ranking(scores)
    inexact = inexact_masks(model, scores) if scores.kind == "channels" else {}
    full = float(m(model))
    rows: list[dict[str, Any]] = []  # kept, metric, mode (+ faithfulness below)
    plans = []
    for k in grid:
        plan, holders = keep_plan(scores, {(g, i) for g, i, _ in order[:k]})
        pruned, mode = measured(model, plan, inexact) if k < total else (model, None)
        rows.append({"kept": k, "metric": full if k == total else float(m(pruned)), "mode": mode})
        plans.append((plan, holders))
    empty = rows[0]["metric"]
    if abs(full - empty) <= 1e-12 * max(1.0, abs(full)):
        raise XpruneError(
            f"the behaviour metric is {full:.6g} both with every unit and with each layer reduced to "
            f"its least relevant unit (the placeholder the kind requires): no circuit of these "
            f"{scores.kind} can be measured; try other units, another criterion or check the "
            "behaviour set's labels"
        )
    for r in rows:
        r["faithfulness"] = (r["metric"] - empty) / (full - empty)
    j = next(j for j, r in enumerate(rows) if r["faithfulness"] >= faithfulness)
    k = rows[j]["kept"]
    plan, holders = plans[j]
    chosen = [(g, i, s) for g, i, s in order[:k]]
    settings = {
        "criterion": scores.criterion,
        "units": scores.kind,
        "metric": getattr(m, "name", "metric"),
        "full": full,
        "empty": empty,
        "counts": [r["kept"] for r in rows],
    }
    return Circuit(
        chosen, rows, removed(model, plan), scores, rows[j]["faithfulness"], float(faithfulness), holders, settings
    )
