"""Contrastive relevance: which units carry a *behaviour* more than the *general* task.

Both reference sets are scored with the same criterion (:func:`xprune.score`,
``normalize=None``: the raw per-unit values). Each side is then divided, per
group (layer), by its own mean absolute score over the group
(:func:`xprune.scores.normalize` with ``"mean"``), so that a unit's value says
how much it matters *relative to its layer* on that set and the two sets are
on one scale whatever their sizes or the magnitude of their outputs. With
``n_b`` and ``n_g`` the normalised behaviour and general scores of a unit:

- ``combine="difference"``: :math:`c = n_b - n_g`;
- ``combine="ratio"``: :math:`c = n_b / \\max(n_g, \\text{floor})`, the floor
  (in the normalised units, where a layer's mean is 1) keeping units that the
  general task does not use at all from dividing by zero.

High contrast = carries the behaviour more than the general task. This is the
"targeted correction" use of attribution-guided pruning (Hatefi et al. 2025,
arXiv 2506.13727): relevances on the behaviour's reference samples
contrasted with those on general samples; the combinations above are
xprune's (their code is not released).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import DataError, XpruneError, XpruneWarning
from ..scores import Scores, score

__all__ = ["COMBINATIONS", "Contrast", "combine_scores", "contrastive_scores"]

COMBINATIONS = ("difference", "ratio")
#: Keyword arguments of xprune.score that are not criterion options.
_SCORE_KEYWORDS = ("example_inputs", "include_output", "ignore", "batch_size", "progress", "device", "precision")


@dataclass
class Contrast:
    """Contrastive scores (see the module's docstring).

    Attributes
    ----------
    contrast : dict
        Group name -> 1-D tensor; high = the unit carries the behaviour more than the general task.
    behaviour, general : Scores
        Each side's scores, normalised per group by its mean absolute value.
    scores : Scores
        Keep-scores ``-contrast``: ``xprune.select(contrast.scores, ratio)`` removes the most
        behaviour-specific units first.
    combine : str
    floor : float
    """

    contrast: dict[str, torch.Tensor]
    behaviour: Scores
    general: Scores
    scores: Scores
    combine: str = "difference"
    floor: float = 0.05
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, n: int = 10) -> list[tuple[str, int, float]]:
        """The ``n`` units of highest contrast: ``(group, unit, contrast)``, highest first."""
        rows = [(g, i, float(v)) for g, t in self.contrast.items() for i, v in enumerate(t.tolist())]
        return sorted(rows, key=lambda r: -r[2])[:n]


def _check_options(combine: str, floor: float) -> None:
    if combine not in COMBINATIONS:
        raise XpruneError(f"combine must be one of {', '.join(COMBINATIONS)}, got {combine!r}")
    if not isinstance(floor, (int, float)) or not floor > 0:
        raise XpruneError(f"floor must be a positive number (in units of a layer's mean score), got {floor!r}")


def combine_scores(nb: torch.Tensor, ng: torch.Tensor, combine: str, floor: float) -> torch.Tensor:
    """The contrast of normalised behaviour scores ``nb`` and general scores ``ng`` (one group)."""
    if combine == "difference":
        return nb - ng
    return nb / ng.clamp(min=floor)


def contrastive_scores(
    model: nn.Module,
    behaviour: Any,
    general: Any,
    criterion: Any = "lrp",
    units: str = "channels",
    *,
    combine: str = "difference",
    floor: float = 0.05,
    target: Any = "label",
    **score_options: Any,
) -> Contrast:
    """Contrastive scores of ``model``'s units between a behaviour set and a general set.

    Parameters
    ----------
    model : nn.Module
        Never modified.
    behaviour, general : data
        Anything :func:`xprune.score` reads (``(X, y)``, batches, dict batches,
        :class:`xprune.llm.TokenBlocks`, ...): the samples showing the
        behaviour to remove (labelled with the unwanted answer, so ``target="label"``
        explains it) and samples of the task to keep.
    criterion, units, target, **score_options :
        As for :func:`xprune.score` (every registered criterion; units
        ``"weights"``, ``"channels"``, ``"heads"``, ``"neurons"``).
        ``normalize`` is not an option here: the sides are normalised as
        described in :mod:`xprune.control.contrast`.
    combine : "difference" or "ratio"
    floor : float
        The ratio's floor on the general side, in units of a layer's mean (default 0.05).

    Returns
    -------
    Contrast
    """
    _check_options(combine, floor)
    if "normalize" in score_options:
        raise XpruneError("contrastive_scores normalises each side per layer itself (by its mean); drop normalize=")
    from ..criteria import get

    if not get(criterion, **{k: v for k, v in score_options.items() if k not in _SCORE_KEYWORDS}).requires_data:
        warnings.warn(
            f"criterion {criterion!r} does not read the data: both sets score alike, so the contrast is "
            "0 (difference) or about 1 (ratio) everywhere and the ranking is by layer order; use a "
            "criterion that reads the data, or rank by its scores directly",
            XpruneWarning,
            stacklevel=2,
        )
    sides = []
    for name, data in (("behaviour", behaviour), ("general", general)):
        if data is None:
            raise DataError(f"the {name} set is None: pass reference samples of the {name} (e.g. (X, y))")
        try:
            with warnings.catch_warnings():
                if name == "behaviour":  # one unwanted answer: few classes are meant to be covered
                    warnings.filterwarnings("ignore", message="the reference samples cover")
                raw = score(model, data, criterion, units, target=target, normalize=None, **score_options)
        except DataError as e:
            if "data is empty" in str(e):
                raise DataError(f"the {name} set is empty: pass at least one sample of the {name}") from None
            raise
        sides.append(raw.normalized("mean"))
    nb, ng = sides
    if list(nb) != list(ng):
        raise XpruneError(
            "the behaviour and general sets reach different units of the model (their inputs take "
            "different paths); pass data of the same form for both"
        )
    contrast = {g: combine_scores(nb[g], ng[g], combine, floor) for g in nb}
    keep = Scores(
        {g: -c for g, c in contrast.items()},
        kind=nb.kind,
        criterion=f"contrast({nb.criterion})",
        members=nb.members,
        roots=nb.roots,
        example=nb.example,
        parts=nb.parts,
        meta={**nb.meta, "combine": combine, "floor": floor, "normalize": "mean per side"},
    )
    return Contrast(contrast, nb, ng, keep, combine, float(floor), {"criterion": nb.criterion, "units": nb.kind})
