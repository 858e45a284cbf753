"""The procedures: :func:`choose_rate` (prune, measure, test) and its statistical core :func:`choose_from_outcomes`.

See docs/guarantee.md for the procedures (Learn-then-Test, conformal risk
control), the proof sketch and the assumptions.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..evaluate import DEFAULT_RATES
from ..scores import Scores, score
from ..select import select
from ..surgery import apply, blamed_modules, evaluation_meta, evaluation_mode, inexact_masks
from .result import RateChoice
from .stats import _check_level, binomial_cdf

__all__ = ["METHODS", "GuaranteeWarning", "choose_from_outcomes", "choose_rate", "correctness"]

METHODS = ("ltt", "crc")


class GuaranteeWarning(UserWarning):
    """The data given to :func:`choose_rate` may void its guarantee (e.g. calibration overlaps the reference)."""


def choose_from_outcomes(
    base_correct: Any,
    pruned_correct: Any,
    rates: Sequence[float],
    *,
    max_drop: float = 0.01,
    confidence: float = 0.95,
    method: str = "ltt",
    removed: Sequence[int] | None = None,
) -> RateChoice:
    """The statistical core of :func:`choose_rate`, on per-sample correctness already measured.

    Parameters
    ----------
    base_correct : bool array ``[n]``
        Whether the unpruned model classifies each calibration sample correctly.
    pruned_correct : bool array ``[K, n]``
        The same for the model pruned at each of the ``K`` ``rates``.
    rates : sequence of float
        Increasing candidate rates, fixed before seeing the calibration data.
    removed : sequence of int, optional
        Units removed at each rate; rates removing nothing are the unpruned
        model and are accepted without a test. Default: only rate 0.

    Returns
    -------
    RateChoice
    """
    alpha = _check_level("max_drop", max_drop)
    conf = _check_level("confidence", confidence)
    delta = 1 - conf
    if method not in METHODS:
        raise XpruneError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    base = np.asarray(base_correct, dtype=bool).reshape(-1)
    pruned = np.asarray(pruned_correct, dtype=bool)
    rates = [float(r) for r in rates]
    n = base.size
    if n == 0:
        raise DataError("the calibration set is empty: the guarantee needs held-out labelled samples")
    if pruned.shape != (len(rates), n):
        raise XpruneError(f"pruned_correct must have shape (len(rates), n) = ({len(rates)}, {n}), got {pruned.shape}")
    if any(b <= a for a, b in itertools.pairwise(rates)):
        raise XpruneError(f"rates must be strictly increasing (the order of the tests), got {rates}")
    removed = [0 if r == 0 else 1 for r in rates] if removed is None else [int(v) for v in removed]
    trivial = np.array([v == 0 for v in removed])
    loss = base[None, :] & ~pruned  # [K, n]: broken by pruning
    loss[trivial] = False
    flips = loss.sum(axis=1).astype(int)
    p_values = crc = None
    chosen = None
    if method == "ltt":
        p_values = [0.0 if trivial[j] else binomial_cdf(int(flips[j]), n, alpha) for j in range(len(rates))]
        for j, p in enumerate(p_values):
            if p > delta:
                break
            chosen = j
    else:
        envelope = np.maximum.accumulate(loss, axis=0).sum(axis=1)  # monotone envelope of the flip loss
        crc = [0.0 if trivial[j] else (float(envelope[j]) + 1) / (n + 1) for j in range(len(rates))]
        ok = [crc[j] <= alpha for j in range(len(rates))]
        # the envelope's risk increases with the rate, so the admissible rates form a prefix; rates that
        # remove nothing are admissible whatever the data (loss exactly 0)
        last = max([j for j in range(len(rates)) if all(ok[: j + 1])], default=None)
        safe = max([j for j in range(len(rates)) if trivial[j]], default=None)
        chosen = max([j for j in (last, safe) if j is not None], default=None)
    if chosen is None:  # nothing certified: keep the model as it is
        if 0.0 not in rates:
            raise XpruneError("include rate 0.0 in the grid (the fallback when nothing is certified)")
        chosen = rates.index(0.0)
    accs = (pruned.sum(axis=1) / n).tolist()
    return RateChoice(rates[chosen], alpha, conf, method, n, rates, accs, flips.tolist(), removed, p_values, crc)


@torch.no_grad()
def correctness(
    model: nn.Module, data: Any, *, classes: Sequence[int] | None = None, batch_size: int = 256
) -> torch.Tensor:
    """Per-sample top-1 correctness (bool tensor ``[n]``) in eval mode, as :func:`xprune.evaluate.accuracy` counts it.

    With ``classes``, only samples of those classes are kept and the prediction
    is the arg-max over their logits.
    """
    from ..evaluate import predictions

    out_all = [(pred == y).cpu() for pred, y in predictions(model, _inputs.batches(data, batch_size), classes=classes)]
    return torch.cat(out_all) if out_all else torch.zeros(0, dtype=torch.bool)


def _inputs_tensor(data: Any) -> torch.Tensor | None:
    if hasattr(data, "X") and isinstance(data.X, torch.Tensor):
        return data.X
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0]
    return None


def _check_independent(reference: Any, calibration: Any) -> None:
    """Refuse calibration data that is the reference data; warn when some samples are shared."""
    if reference is None:
        return
    if reference is calibration:
        raise XpruneError(
            "the calibration set is the reference set: the guarantee needs held-out calibration "
            "samples that the scores never saw (e.g. the dataset's val split)"
        )
    xr, xc = _inputs_tensor(reference), _inputs_tensor(calibration)
    if xr is None or xc is None or len(xr) == 0 or len(xc) == 0 or xr.shape[1:] != xc.shape[1:]:
        return
    if xr.shape == xc.shape and torch.equal(xr, xc):
        raise XpruneError(
            "the calibration inputs are identical to the reference inputs: the guarantee needs "
            "held-out calibration samples that the scores never saw (e.g. the dataset's val split)"
        )
    seen = {row.numpy().tobytes() for row in xr.detach().reshape(len(xr), -1).cpu()}
    shared = sum(row.numpy().tobytes() in seen for row in xc.detach().reshape(len(xc), -1).cpu())
    if shared:
        warnings.warn(
            f"{shared} of {len(xc)} calibration samples also occur among the reference samples; the "
            "guarantee assumes calibration data independent of the scores (use a disjoint split)",
            GuaranteeWarning,
            stacklevel=3,
        )


def choose_rate(
    model: nn.Module,
    reference: Any,
    calibration: Any,
    criterion: Any = "lrp",
    *,
    max_drop: float = 0.01,
    confidence: float = 0.95,
    rates: Sequence[float] = DEFAULT_RATES,
    units: str = "channels",
    scope: str = "global",
    method: str = "ltt",
    scores: Scores | None = None,
    classes: Sequence[int] | None = None,
    min_keep: int | float = 1,
    round_to: int | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **options: Any,
) -> RateChoice:
    """The largest pruning rate whose accuracy drop is at most ``max_drop`` with probability ``confidence``.

    Relevance is computed once on ``reference``; for each candidate rate the
    model is pruned by masking (nested unit sets from one ranking; physically
    where masking would not equal removal, e.g. a LayerNorm across the pruned
    channels: ``meta["mode"]``, ``meta["modes"]`` per rate) and its
    per-sample correctness on ``calibration`` is recorded in one pass. The
    rates are then tested in increasing order by Learn-then-Test with exact
    binomial p-values (see docs/guarantee.md for the procedure, the
    proof sketch and the assumptions):

    .. math::  P_{\\text{calibration}}\\big(\\operatorname{acc}(f) - \\operatorname{acc}(f_{\\hat\\lambda})
               \\le \\text{max\\_drop}\\big) \\ge \\text{confidence},

    the accuracies being expectations over the deployment distribution that
    the calibration samples are i.i.d. draws from.

    Parameters
    ----------
    model : nn.Module
        The trained model; never modified.
    reference : data or None
        Reference samples the criterion sees (e.g. 10 per class of the train
        split). ``None`` when ``scores`` is given.
    calibration : data
        Held out labelled samples (e.g. the dataset's val split): disjoint from
        the reference and the training data, i.i.d. from the deployment
        distribution, not used for anything else. Checked where both are
        tensors or Splits: identical to the reference raises
        :class:`~xprune.XpruneError`, sharing samples with it warns
        (:class:`GuaranteeWarning`); data loaders are not checked.
    criterion : str or Criterion
        See :func:`xprune.criteria.available`.
    max_drop : float in (0, 1)
        Largest acceptable drop of accuracy (0.01 = one point).
    confidence : float in (0, 1)
        Probability, over the calibration draw, that the guarantee holds.
    rates : sequence of float in [0, 1)
        Candidate rates, fixed in advance; sorted increasingly (the order of
        the tests) and 0.0 added if missing (the fallback: nothing pruned).
    units, scope, min_keep, round_to :
        As for :func:`xprune.score` and :func:`xprune.select`; pass the same
        values when pruning at the chosen rate.
    method : "ltt" or "crc"
        Learn-then-Test (high-probability bound, default) or conformal risk
        control (bound on the expected drop averaged over calibration draws).
    scores : Scores, optional
        Precomputed scores (from data independent of ``calibration``).
    classes : sequence of int, optional
        Domain restriction, as in :func:`xprune.evaluate.accuracy`.
    **options :
        Passed to :func:`xprune.score`.

    Returns
    -------
    RateChoice
        ``.rate`` to prune at, ``.bound``, ``.p_values``, calibration accuracies,
        ``.needed_calibration(tightness)`` and ``.explain()``.

    Examples
    --------
    >>> choice = xprune.choose_rate(model, ref, ds.val, "lrp", max_drop=0.01, confidence=0.95)  # doctest: +SKIP
    >>> small = xprune.prune(model, ref, "lrp", choice.rate)  # doctest: +SKIP
    """
    alpha = _check_level("max_drop", max_drop)
    conf = _check_level("confidence", confidence)
    if method not in METHODS:
        raise XpruneError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    grid = sorted({float(r) for r in rates} | {0.0})
    if any(not 0 <= r < 1 for r in grid):
        raise XpruneError(f"rates must be numbers in [0, 1), got {list(rates)}")
    if scores is None and reference is None:
        raise DataError("pass reference samples (for the scores) or precomputed scores=")
    _check_independent(reference, calibration)
    base = correctness(model, calibration, classes=classes, batch_size=batch_size)
    if base.numel() == 0:
        raise DataError(
            "the calibration set is empty"
            + ("" if classes is None else " for the given classes")
            + ": the guarantee needs held-out labelled samples"
        )
    if scores is None:
        scores = score(model, reference, criterion, units, **options)
    iterator: Iterable[float] = grid
    if progress:
        from .._progress import track

        iterator = track(grid, f"calibrating ({scores.criterion})", unit="rates")
    inexact = inexact_masks(model, scores)  # groups whose masking is not their removal: those are removed
    rows: list[torch.Tensor] = []
    removed: list[int] = []
    modes: list[str | None] = []
    for r in iterator:
        plan = select(scores, r, scope=scope, min_keep=min_keep, round_to=round_to, warn=False)
        removed.append(plan.n_removed)
        if plan.n_removed == 0:
            rows.append(base)
            modes.append(None)
            continue
        mode = evaluation_mode("mask", plan, inexact)
        modes.append(mode)
        rows.append(correctness(apply(model, plan, mode), calibration, classes=classes, batch_size=batch_size))
    choice = choose_from_outcomes(
        base.numpy(), torch.stack(rows).numpy(), grid, max_drop=alpha, confidence=conf, method=method, removed=removed
    )
    choice.criterion = scores.criterion or (criterion if isinstance(criterion, str) else "")
    choice.scope, choice.units = scope, scores.kind
    choice.meta.update(
        total=scores.total,
        min_keep=min_keep,
        round_to=round_to,
        **evaluation_meta(modes, "mask", blamed_modules(inexact)),
    )
    return choice
