"""Criteria: how much each unit matters. A registry by name, one module per family.

Built in: ``"weight"``, ``"l2"`` (magnitude), ``"gradient"``, ``"taylor"``
(Molchanov et al. 2017, per sample, loss), ``"taylor-mean"`` (the mean form of
Yeom et al.'s baseline), ``"activation"``, ``"random"``, ``"lrp"`` (LRP relevance,
PXP's aggregate), ``"pbe"`` (Pruning by Explaining as published), ``"singe"``
(SInGE, per unit), ``"singe-fast"`` (its shared-path simplification),
``"integrated-gradients"`` and ``"steered"`` (Interpretations Steered Pruning). See
:mod:`xprune.criteria.base` for writing your own.

The registry (:func:`register`, :func:`get`) is filled by the modules that
define the criteria: the built-in families below register when this package is
imported; ``"steered"``, ``"wanda"`` and ``"llm-pruner"`` are entries loaded on
first use (:mod:`xprune.steered.criterion`, :mod:`xprune.transformers.criteria`).
"""

from . import activation, gradient, integrated, lrp, magnitude, random, singe  # noqa: F401  (the built-ins)
from .base import (
    Criterion,
    HookedCriterion,
    Objective,
    Signal,
    WeightCriterion,
    available,
    get,
    register,
    resolve_target,
)

__all__ = [
    "Criterion",
    "HookedCriterion",
    "Objective",
    "Signal",
    "WeightCriterion",
    "available",
    "get",
    "register",
    "resolve_target",
]
