"""Prune with a guarantee: the largest rate whose accuracy loss is bounded with stated confidence.

:func:`choose_rate` scores the model once on reference samples, prunes it (by
masking) at every rate of a grid fixed in advance, measures per-sample
correctness on held-out calibration samples and returns the largest rate whose
accuracy drop is certified (:class:`RateChoice`). :func:`calibration_size` says
how much calibration data a certificate needs.

Parameters of the guarantee: ``max_drop`` (largest acceptable accuracy drop,
e.g. 0.01 = one point), ``confidence`` (probability over the calibration draw
that it holds), ``rates`` (the candidate grid, tested in increasing order) and
``method``: ``"ltt"`` (default) or ``"crc"``.

Method: **Learn-then-Test** (Angelopoulos, Bates, Candès, Jordan & Lei 2021,
"Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control")
with fixed-sequence testing of exact binomial tail p-values, in the spirit of
*Confident magnitude-based neural network pruning* (J. Alvarez 2024,
arXiv:2408.04759); ``"crc"`` is **Conformal Risk Control** (Angelopoulos,
Bates, Fisch, Lei & Schuster 2022).

The controlled quantity, the procedures, the proof sketch and the assumptions
are in `docs/guarantee.md <../../../docs/guarantee.md>`_.

Modules: :mod:`.stats` (binomial math), :mod:`.calibration`
(:func:`calibration_size`), :mod:`.result` (:class:`RateChoice`),
:mod:`.choose` (the procedures).
"""

from __future__ import annotations

from .calibration import calibration_size
from .choose import METHODS, GuaranteeWarning, choose_from_outcomes, choose_rate, correctness
from .result import RateChoice
from .stats import binomial_cdf, binomial_p_value, clopper_pearson_upper

__all__ = [
    "METHODS",
    "GuaranteeWarning",
    "RateChoice",
    "binomial_cdf",
    "binomial_p_value",
    "calibration_size",
    "choose_from_outcomes",
    "choose_rate",
    "clopper_pearson_upper",
    "correctness",
]
