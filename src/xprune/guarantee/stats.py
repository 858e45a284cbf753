"""Binomial math of the guarantee: the exact binomial c.d.f., the test's p-value, the Clopper-Pearson bound.

See docs/guarantee.md for how :func:`xprune.guarantee.choose_rate` uses them.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError, XpruneError

__all__ = ["binomial_cdf", "binomial_p_value", "clopper_pearson_upper"]


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
    """Binomial distribution function
    :math:`P(\\mathrm{Bin}(n, p) \\le k) = \\sum_{i \\le k} \\binom{n}{i} p^i (1-p)^{n-i}`.

    Exact up to floating point (the terms are summed in log space, so large
    ``n`` neither overflows nor underflows). Agrees with
    ``scipy.stats.binom.cdf(k, n, p)``.
    """
    k, n = math.floor(k), int(n)
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
    """One-sided Clopper-Pearson upper confidence bound of a binomial proportion.

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
