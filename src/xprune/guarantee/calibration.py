"""How much calibration data a guarantee needs: :func:`calibration_size`.

See docs/guarantee.md for the test it sizes.
"""

from __future__ import annotations

import math

from ..errors import XpruneError
from .stats import _check_level, binomial_cdf

__all__ = ["calibration_size"]


def _observed(n: int, c: float) -> int:
    return math.floor(n * c + 1e-9)


def calibration_size(max_drop: float, confidence: float = 0.95, tightness: float | None = None) -> int:
    """Calibration samples needed to certify a rate whose observed flip rate is ``max_drop - tightness``.

    With :math:`n` samples, a rate is certified by the binomial test when
    :math:`P(\\mathrm{Bin}(n, \\alpha) \\le \\lfloor n(\\alpha - t) \\rfloor) \\le \\delta`,
    equivalently when the Clopper-Pearson upper bound at the observed flip
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
