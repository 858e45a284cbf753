"""Prune with a guarantee: the largest rate whose accuracy loss is bounded with stated confidence.

Users rarely want "remove 50%"; they want "remove as much as possible while
losing at most one point of accuracy". :func:`choose_rate` turns that wish into
a decision with a finite-sample, distribution-free guarantee, in the spirit of
*Confident magnitude-based neural network pruning* (J. Alvarez 2024,
arXiv:2408.04759, which calibrates magnitude pruning the same way), using **Learn-then-Test** (Angelopoulos, Bates, Candès, Jordan & Lei
2021, "Learn then Test: Calibrating Predictive Algorithms to Achieve Risk
Control") with **fixed-sequence testing** of **exact binomial tail p-values**.

The quantity that is controlled
-------------------------------
Let :math:`f` be the unpruned model and :math:`f_\\lambda` the model with a
fraction :math:`\\lambda` of its units pruned (relevance computed once on the
reference samples; the plans at the candidate rates
:math:`0 = \\lambda_0 < \\lambda_1 < \\dots < \\lambda_K` are fixed before the
calibration data is looked at). For a sample :math:`(x, y)` of the deployment
distribution :math:`P` the *flip loss* is

.. math::  L(\\lambda) = \\mathbf 1[f(x) = y \\;\\wedge\\; f_\\lambda(x) \\ne y] \\in \\{0, 1\\},

and its risk :math:`R(\\lambda) = \\mathbb E_P L(\\lambda)` is the probability
that pruning breaks a sample the unpruned model got right. It bounds the
expected accuracy drop from above:

.. math::  \\Delta(\\lambda) = \\operatorname{acc}(f) - \\operatorname{acc}(f_\\lambda)
           = R(\\lambda) - P(f(x) \\ne y \\wedge f_\\lambda(x) = y) \\le R(\\lambda).

(The signed per-sample drop lies in {-1, 0, 1}; bounding the one-sided flips
instead keeps the loss Bernoulli, so the binomial test below is exact, and
it is much tighter than a Hoeffding bound for a [-1, 1]-valued loss when the
drops of interest are small.)

The procedure (``method="ltt"``, the default)
---------------------------------------------
With :math:`n` calibration samples and :math:`S(\\lambda) = \\sum_i L_i(\\lambda)`,
test :math:`H_\\lambda: R(\\lambda) > \\alpha` (``alpha = max_drop``) with the
p-value

.. math::  p(\\lambda) = P\\big(\\mathrm{Bin}(n, \\alpha) \\le S(\\lambda)\\big),

which is valid (super-uniform under :math:`H_\\lambda`) because
:math:`S(\\lambda) \\sim \\mathrm{Bin}(n, R(\\lambda))` for i.i.d. samples and the
binomial c.d.f. decreases in its success probability. The hypotheses are
tested in the fixed order of increasing rate at level
:math:`\\delta = 1 - \\text{confidence}` each, stopping at the first that is not
rejected; the chosen rate :math:`\\hat\\lambda` is the last rejected one
(:math:`0` if none). Fixed-sequence testing controls the family-wise error
rate at :math:`\\delta` for any dependence between the p-values, so
(Angelopoulos et al. 2021, Theorem 1)

.. math::  P_{\\text{calibration}}\\big( \\Delta(\\hat\\lambda) \\le R(\\hat\\lambda) \\le \\alpha \\big) \\ge 1 - \\delta .

Neither nested unit sets nor a monotone risk are needed for validity; they only
make it likely that the sequence does not stop early. Rates whose plan removes
nothing give exactly the unpruned model (:math:`R = 0` with certainty) and are
accepted without a test.

Conformal risk control (``method="crc"``)
-----------------------------------------
Angelopoulos, Bates, Fisch, Lei & Schuster (2022, "Conformal Risk Control")
control the risk *in expectation* over the calibration draw. It needs a loss
that is monotone in :math:`\\lambda`; the flip loss is not (a sample can be
broken at 20% and repaired at 25%), so it is applied to the monotone envelope
:math:`\\tilde L_i(\\lambda_k) = \\max_{j \\le k} L_i(\\lambda_j) \\ge L_i(\\lambda_k)`
(bounded by :math:`B = 1`), choosing the largest rate with

.. math::  \\frac{n}{n+1}\\hat R_n(\\lambda) + \\frac{B}{n+1} = \\frac{\\tilde S(\\lambda) + 1}{n + 1} \\le \\alpha,

which guarantees :math:`\\mathbb E[\\Delta(\\hat\\lambda)] \\le \\mathbb E[\\tilde L_{n+1}(\\hat\\lambda)] \\le \\alpha`
for exchangeable calibration and test samples. This is a weaker statement than
LTT's (a mean over calibration draws, no confidence level): ``confidence``
then only sets the level of the reported upper bounds.

Assumptions (both methods)
--------------------------
- Calibration and deployment samples are i.i.d. draws from the same
  distribution (for ``"crc"``: exchangeable); no distribution shift.
- The calibration samples were used for nothing else: not to train the model,
  not as reference samples for the scores, not to choose ``max_drop``,
  ``confidence``, the rate grid, the criterion or any other setting after
  looking at the results (choosing among ``m`` criteria on the same
  calibration set needs ``confidence = 1 - delta / m``, Bonferroni).
- The guarantee is over the draw of the calibration set and concerns the
  *expected* accuracy on the deployment distribution, not the accuracy on any
  particular finite test set, which fluctuates around it.
- Pruning is evaluated by masking; in eval mode physical removal computes the
  same function (see :mod:`xprune.surgery`), except where a norm normalises
  across the pruned units (LayerNorm/GroupNorm over channels). Fine-tuning
  after pruning changes the model and voids the guarantee.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import _inputs
from .errors import DataError, XpruneError
from .evaluate import DEFAULT_RATES
from .scores import Scores, score
from .select import select
from .surgery import apply

__all__ = [
    "METHODS", "GuaranteeWarning", "RateChoice", "binomial_cdf", "binomial_p_value", "calibration_size",
    "choose_from_outcomes", "choose_rate", "clopper_pearson_upper", "correctness",
]

METHODS = ("ltt", "crc")


class GuaranteeWarning(UserWarning):
    """The data given to :func:`choose_rate` may void its guarantee (e.g. calibration overlaps the reference)."""


# --------------------------------------------------------------------------- binomial math


def _check_level(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise XpruneError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _log_binom_coeffs(k: int, n: int) -> np.ndarray:
    """``log C(n, i)`` for ``i = 0..k`` (cumulative sum of ``log((n - i) / (i + 1))``)."""
    i = np.arange(k, dtype=np.float64)
    return np.concatenate([[0.0], np.cumsum(np.log(n - i) - np.log(i + 1))])


def _cdf_from_coeffs(logc: np.ndarray, n: int, p: float) -> float:
    k = len(logc) - 1
    i = np.arange(k + 1, dtype=np.float64)
    logs = logc + i * math.log(p) + (n - i) * math.log1p(-p)
    top = logs.max()
    return float(min(1.0, math.exp(top) * np.exp(logs - top).sum()))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """Binomial distribution function :math:`P(\\mathrm{Bin}(n, p) \\le k) = \\sum_{i \\le k} \\binom{n}{i} p^i (1-p)^{n-i}`.

    Exact up to floating point (the terms are summed in log space, so large
    ``n`` neither overflows nor underflows). Agrees with
    ``scipy.stats.binom.cdf(k, n, p)``.
    """
    k, n = int(math.floor(k)), int(n)
    if n < 0 or not 0 <= p <= 1:
        raise XpruneError(f"binomial_cdf needs n >= 0 and p in [0, 1], got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n or p == 0:
        return 1.0
    if p == 1:
        return 0.0
    return _cdf_from_coeffs(_log_binom_coeffs(k, n), n, p)


def binomial_p_value(flips: int, n: int, max_drop: float) -> float:
    """P-value of :math:`H_0: R > \\alpha` given ``flips`` losses in ``n`` i.i.d. Bernoulli(R) samples.

    .. math::  p = P(\\mathrm{Bin}(n, \\alpha) \\le \\text{flips}),

    valid because :math:`P(\\mathrm{Bin}(n, R) \\le s) \\le P(\\mathrm{Bin}(n, \\alpha) \\le s)`
    for every :math:`R \\ge \\alpha`. Rejecting when :math:`p \\le \\delta` is the same
    as :func:`clopper_pearson_upper` at level :math:`1 - \\delta` being at most
    :math:`\\alpha`.
    """
    if n < 1:
        raise DataError("a p-value needs at least one calibration sample")
    if not 0 <= flips <= n:
        raise XpruneError(f"flips must lie in [0, n={n}], got {flips}")
    return binomial_cdf(flips, n, _check_level("max_drop", max_drop))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper confidence bound of a binomial proportion.

    The largest :math:`u` with :math:`P(\\mathrm{Bin}(n, u) \\le k) \\ge \\delta`
    (:math:`\\delta = 1 - \\text{confidence}`), i.e. the
    :math:`1 - \\delta` quantile of :math:`\\mathrm{Beta}(k + 1, n - k)`:
    :math:`P(R \\le u) \\ge 1 - \\delta` over the draw of the sample. Closed
    forms: :math:`1 - \\delta^{1/n}` for :math:`k = 0` and :math:`1` for
    :math:`k = n`; otherwise solved by bisection to 1e-12.
    """
    delta = 1 - _check_level("confidence", confidence)
    k, n = int(k), int(n)
    if n < 1:
        raise DataError("a confidence bound needs at least one sample")
    if not 0 <= k <= n:
        raise XpruneError(f"k must lie in [0, n={n}], got {k}")
    if k == n:
        return 1.0
    if k == 0:
        return float(-math.expm1(math.log(delta) / n))
    logc = _log_binom_coeffs(k, n)
    lo, hi = k / n, 1.0  # cdf(k, n, k/n) >= ~1/2 > delta for delta < 1/2; guard below for larger delta
    if _cdf_from_coeffs(logc, n, lo) < delta:
        lo = 0.0
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        if mid <= 0 or _cdf_from_coeffs(logc, n, mid) >= delta:
            lo = mid
        else:
            hi = mid
    return hi


def _observed(n: int, c: float) -> int:
    return int(math.floor(n * c + 1e-9))


def calibration_size(max_drop: float, confidence: float = 0.95, tightness: float | None = None) -> int:
    """Calibration samples needed to certify a rate whose observed flip rate is ``max_drop - tightness``.

    With :math:`n` samples, a rate is certified by the binomial test when
    :math:`P(\\mathrm{Bin}(n, \\alpha) \\le \\lfloor n(\\alpha - t) \\rfloor) \\le \\delta`,
    equivalently when the Clopper–Pearson upper bound at the observed flip
    rate :math:`\\alpha - t` is at most :math:`\\alpha`: ``tightness`` :math:`t`
    is the room the bound needs above the observed rate. Returns the smallest
    :math:`n` from which on *every* larger :math:`n` certifies (the condition
    is a saw-tooth in :math:`n` because counts are integers).

    ``tightness=None`` (or ``= max_drop``) asks for zero observed flips, the
    least data that can certify anything:
    :math:`n = \\lceil \\log\\delta / \\log(1 - \\alpha) \\rceil` (299 for a 1% drop at 95%).
    Roughly, :math:`n \\approx z_{1-\\delta}^2\\,\\alpha(1-\\alpha)/t^2` for small :math:`t`.

    Examples
    --------
    >>> calibration_size(0.01, 0.95)
    299
    """
    alpha = _check_level("max_drop", max_drop)
    delta = 1 - _check_level("confidence", confidence)
    t = alpha if tightness is None else float(tightness)
    if not 0 < t <= alpha * (1 + 1e-12):
        raise XpruneError(f"tightness must be in (0, max_drop={alpha}], got {tightness!r}")
    c = max(0.0, alpha - t)
    if c * 1e9 < 1:  # zero flips observed, for any n
        n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
        while n > 1 and math.exp((n - 1) * math.log1p(-alpha)) <= delta:
            n -= 1
        while math.exp(n * math.log1p(-alpha)) > delta:
            n += 1
        return n

    def f(n: int) -> bool:
        return binomial_cdf(_observed(n, c), n, alpha) <= delta

    def start(k: int) -> int:  # the smallest n whose observed count is k
        n = max(1, math.ceil(k / c) - 2)
        while _observed(n, c) < k:
            n += 1
        return n

    def good(k: int) -> bool:  # the worst n of block k (its first) certifies: then all of the block does
        return f(start(k))

    # f decreases within a block of constant count; the block starts' values decrease in k (up to
    # rare discreteness), so search for the first good block, then verify the following ones.
    k_lo = 0
    while True:
        hi = max(1, 2 * k_lo)
        while not good(hi):
            k_lo, hi = hi, 2 * hi
            if hi > 10**8:
                raise XpruneError("calibration_size: tightness too small to compute (over 10^10 samples)")
        lo = k_lo  # not good (or 0, which is checked below)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if good(mid):
                hi = mid
            else:
                lo = mid
        first = 0 if good(0) else hi
        bad = next((j for j in range(first + 1, first + 65) if not good(j)), None)
        if bad is None:
            break
        k_lo = bad
    if first == 0:
        return 1
    # the tail of the block before the first good block may already certify (f decreases there)
    a, b = start(first - 1), start(first) - 1
    if not f(b):
        return start(first)
    while b - a > 0:
        mid = (a + b) // 2
        if f(mid):
            b = mid
        else:
            a = mid + 1
    return a


# --------------------------------------------------------------------------- the result


@dataclass
class RateChoice:
    """The rate :func:`choose_rate` picked, and the evidence for it.

    Attributes
    ----------
    rate : float
        Chosen pruning rate (fraction of units removed); 0.0 when no positive
        rate could be certified.
    max_drop, confidence, method :
        The requested guarantee and the procedure (``"ltt"`` or ``"crc"``).
    n_calibration : int
        Number of calibration samples.
    rates : list of float
        Candidate rates, increasing (0.0 always included).
    accuracies : list of float
        Calibration accuracy of the pruned model at each rate (``accuracies[0]``
        is the unpruned model's).
    flips : list of int
        Calibration samples right before pruning and wrong after, per rate
        (:math:`S(\\lambda)`); ``flips / n_calibration`` is the observed flip rate,
        at least the observed accuracy drop.
    removed : list of int
        Units removed at each rate.
    p_values : list of float or None
        LTT: binomial p-value of :math:`H: R(\\lambda) > \\text{max\\_drop}` per rate
        (0 for rates that remove nothing). The sequence stops at the first
        p-value above ``1 - confidence``; later ones are shown, not used.
    crc_risk : list of float or None
        CRC: :math:`(\\tilde S(\\lambda) + 1) / (n + 1)` per rate (monotone envelope).
    criterion, scope, units : str
        How the units were ranked.
    """

    rate: float
    max_drop: float
    confidence: float
    method: str
    n_calibration: int
    rates: list[float]
    accuracies: list[float]
    flips: list[int]
    removed: list[int]
    p_values: list[float] | None = None
    crc_risk: list[float] | None = None
    criterion: str = ""
    scope: str = "global"
    units: str = "channels"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> int:
        """Position of the chosen rate in :attr:`rates`."""
        return self.rates.index(self.rate)

    @property
    def base_accuracy(self) -> float:
        """Calibration accuracy of the unpruned model."""
        return self.accuracies[0]

    @property
    def drops(self) -> list[float]:
        """Observed calibration accuracy drop at each rate (may be negative)."""
        return [self.base_accuracy - a for a in self.accuracies]

    @property
    def drop(self) -> float:
        """Observed calibration accuracy drop at the chosen rate."""
        return self.drops[self.index]

    @functools.cached_property
    def ucb(self) -> list[float]:
        """Upper confidence bounds on the flip risk :math:`R(\\lambda)` at every rate, simultaneous over the grid.

        Clopper–Pearson at level :math:`1 - \\delta / m` for the :math:`m` rates
        that remove something (Bonferroni; rates removing nothing have risk 0),
        so that they remain valid at a rate chosen from the data.
        """
        m = max(1, sum(v > 0 for v in self.removed))
        level = 1 - (1 - self.confidence) / m
        return [0.0 if rm == 0 else clopper_pearson_upper(k, self.n_calibration, level)
                for k, rm in zip(self.flips, self.removed)]

    @property
    def bound(self) -> float:
        """Upper confidence bound (level ``confidence``, simultaneous over the grid) on the flip risk at the chosen rate.

        It bounds the expected accuracy drop there. It is a separate statement
        from the certificate ``drop <= max_drop`` (each holds with probability
        at least ``confidence``; both together with at least ``1 - 2 delta``),
        and may lie above ``max_drop``: Bonferroni over the grid is looser than
        the fixed-sequence test that chose the rate.
        """
        return self.ucb[self.index]

    @property
    def certified(self) -> bool:
        """Whether a rate that removes something was certified."""
        return self.removed[self.index] > 0

    def needed_calibration(self, tightness: float | None = None) -> int:
        """Calibration samples needed to certify a rate with observed flip rate ``max_drop - tightness``.

        See :func:`calibration_size`; ``None`` asks for zero observed flips.
        """
        return calibration_size(self.max_drop, self.confidence, tightness)

    def explain(self) -> str:
        """What was chosen, what the guarantee says, and what it does not."""
        pct = lambda v: f"{100 * v:.2f}".rstrip("0").rstrip(".") + "%"  # noqa: E731
        n, i = self.n_calibration, self.index
        delta = 1 - self.confidence
        total = self.meta.get("total")
        head = (f"Chosen pruning rate: {100 * self.rate:g}% of the {self.units}"
                + (f" ({self.removed[i]} of {total} removed)" if total else "")
                + f", ranked by {self.criterion or 'the given scores'} ({self.scope} ranking).")
        lines = [head]
        if self.method == "ltt":
            lines.append(
                f"Guarantee (Learn-then-Test, fixed-sequence exact binomial tests over {len(self.rates)} "
                f"rates in increasing order, {n} calibration samples): with probability at least "
                f"{pct(self.confidence)} over the draw of the calibration set, the expected accuracy of the "
                f"pruned model on the deployment distribution is at most {pct(self.max_drop)} below that of the "
                "unpruned model. Precisely, it bounds the probability that pruning breaks a sample the unpruned "
                "model gets right (the flip risk), which is at least the accuracy drop.")
        else:
            lines.append(
                f"Guarantee (conformal risk control on the monotone flip loss, {n} calibration samples): "
                f"averaged over calibration draws, the expected accuracy drop of the pruned model on the "
                f"deployment distribution is at most {pct(self.max_drop)}. This is an average, not a "
                f"high-probability statement; confidence {pct(self.confidence)} only sets the reported bound.")
        lines.append(
            f"On the calibration set: accuracy {pct(self.base_accuracy)} unpruned, {pct(self.accuracies[i])} "
            f"pruned (drop {pct(self.drop)}; {self.flips[i]} of {n} samples broken by pruning). "
            f"Upper {pct(self.confidence)} bound on the flip risk at this rate, simultaneous over the grid: "
            f"{pct(self.bound)}.")
        if not self.certified:
            need = self.needed_calibration()
            lines.append(
                "No rate that removes anything could be certified, so nothing is pruned. "
                + (f"With {n} calibration samples even zero broken samples cannot certify a "
                   f"{pct(self.max_drop)} drop at {pct(self.confidence)}: that needs at least {need} samples "
                   f"(calibration_size). " if n < need else
                   f"The first rate tested already broke too many samples. ")
                + "Use more calibration data, a larger max_drop or a lower confidence.")
        elif i + 1 < len(self.rates):
            nxt = self.rates[i + 1]
            why = (f"p-value {self.p_values[i + 1]:.3g} > {delta:.3g}" if self.p_values is not None
                   else f"adjusted risk {self.crc_risk[i + 1]:.3g} > {self.max_drop:.3g}")
            lines.append(f"The next rate, {100 * nxt:g}%, was not certified ({self.flips[i + 1]} broken samples, {why}).")
        half = self.max_drop / 2
        lines.append(
            f"Tightness: certifying a rate whose observed flip rate is {pct(self.max_drop - half)} "
            f"(half of the allowed drop) needs about {self.needed_calibration(half)} calibration samples.")
        lines.append(
            "What it does not mean: (1) it is not a bound on the drop measured on any particular finite test "
            "set, which fluctuates around the expected drop; (2) "
            + (f"up to {pct(delta)} of calibration draws can give a rate whose expected drop exceeds "
               f"{pct(self.max_drop)}; (3) " if self.method == "ltt" else "")
            + "it assumes calibration and deployment samples are independent draws from the same distribution "
            "(no shift) and that the calibration set was not used to train the model, to compute the scores or to "
            "pick settings (criterion, grid, max_drop) after seeing results; choosing among m criteria on the same "
            "calibration set needs confidence 1 - delta/m; fine-tuning after pruning voids it.")
        return "\n".join(lines)

    def table(self) -> str:
        """Markdown table: per rate, calibration accuracy, flips, p-value / risk, bound, chosen."""
        stat = "p-value" if self.p_values is not None else "CRC risk"
        rows = [f"| rate | removed | cal. acc. | drop | flips | {stat} | UCB | |",
                "|---:|---:|---:|---:|---:|---:|---:|:---|"]
        values = self.p_values if self.p_values is not None else self.crc_risk
        for j, r in enumerate(self.rates):
            rows.append(f"| {r:.2f} | {self.removed[j]} | {100 * self.accuracies[j]:.2f}% | "
                        f"{100 * self.drops[j]:+.2f}% | {self.flips[j]} | {values[j]:.3g} | "
                        f"{100 * self.ucb[j]:.2f}% | {'**chosen**' if j == self.index else ''} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (f"RateChoice(rate={self.rate:g}, max_drop={self.max_drop:g}, confidence={self.confidence:g}, "
                f"method={self.method!r}, n={self.n_calibration}, calibration drop={self.drop:+.4f}, "
                f"bound={self.bound:.4f})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(ucb=self.ucb, bound=self.bound, drop=self.drop, certified=self.certified)
        return d


# --------------------------------------------------------------------------- procedures


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
    if any(b <= a for a, b in zip(rates, rates[1:])):
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
    return RateChoice(rates[chosen], alpha, conf, method, n, rates, accs, flips.tolist(), removed,
                      p_values, crc)


@torch.no_grad()
def correctness(model: nn.Module, data: Any, *, classes: Sequence[int] | None = None,
                batch_size: int = 256) -> torch.Tensor:
    """Per-sample top-1 correctness (bool tensor ``[n]``) in eval mode, as :func:`xprune.evaluate.accuracy` counts it.

    With ``classes``, only samples of those classes are kept and the prediction
    is the arg-max over their logits.
    """
    from .evaluate import predictions

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
        raise XpruneError("the calibration set is the reference set: the guarantee needs held-out calibration "
                          "samples that the scores never saw (e.g. the dataset's val split)")
    xr, xc = _inputs_tensor(reference), _inputs_tensor(calibration)
    if xr is None or xc is None or len(xr) == 0 or len(xc) == 0 or xr.shape[1:] != xc.shape[1:]:
        return
    if xr.shape == xc.shape and torch.equal(xr, xc):
        raise XpruneError("the calibration inputs are identical to the reference inputs: the guarantee needs "
                          "held-out calibration samples that the scores never saw (e.g. the dataset's val split)")
    seen = {row.numpy().tobytes() for row in xr.detach().reshape(len(xr), -1).cpu()}
    shared = sum(row.numpy().tobytes() in seen for row in xc.detach().reshape(len(xc), -1).cpu())
    if shared:
        warnings.warn(f"{shared} of {len(xc)} calibration samples also occur among the reference samples; the "
                      "guarantee assumes calibration data independent of the scores (use a disjoint split)",
                      GuaranteeWarning, stacklevel=3)


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
    model is pruned by masking (nested unit sets from one ranking) and its
    per-sample correctness on ``calibration`` is recorded in one pass. The
    rates are then tested in increasing order by Learn-then-Test with exact
    binomial p-values (see the module documentation for the procedure, the
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
        raise DataError("the calibration set is empty" + ("" if classes is None else " for the given classes")
                        + ": the guarantee needs held-out labelled samples")
    if scores is None:
        scores = score(model, reference, criterion, units, **options)
    iterator = grid
    if progress:
        from rich.progress import track

        iterator = track(grid, description=f"calibrating ({scores.criterion})", transient=True)
    rows, removed = [], []
    for r in iterator:
        plan = select(scores, r, scope=scope, min_keep=min_keep, round_to=round_to)
        removed.append(plan.n_removed)
        if plan.n_removed == 0:
            rows.append(base)
            continue
        rows.append(correctness(apply(model, plan, "mask"), calibration, classes=classes, batch_size=batch_size))
    choice = choose_from_outcomes(base.numpy(), torch.stack(rows).numpy(), grid, max_drop=alpha,
                                  confidence=conf, method=method, removed=removed)
    choice.criterion = scores.criterion or (criterion if isinstance(criterion, str) else "")
    choice.scope, choice.units = scope, scores.kind
    choice.meta.update(total=scores.total, min_keep=min_keep, round_to=round_to)
    return choice
