"""Criteria: how much each unit matters. A registry by name, one module per family.

Built in: ``"weight"``, ``"l2"`` (magnitude), ``"gradient"``, ``"taylor"``
(gradient), ``"activation"``, ``"random"``, ``"lrp"`` (Pruning by Explaining),
``"singe"`` (SInGE), ``"integrated-gradients"`` and ``"steered"``
(Interpretations Steered Pruning). See :mod:`xprune.criteria.base` for writing your own.
"""

import importlib.util

from . import activation, gradient, integrated, magnitude, random, singe  # noqa: F401  (register built-ins)
from .base import Criterion, HookedCriterion, WeightCriterion, available, get, register, resolve_target

if importlib.util.find_spec(__name__ + ".lrp") is not None:  # the LRP criterion, beside the LRP engine
    from . import lrp  # noqa: F401

__all__ = ["Criterion", "HookedCriterion", "WeightCriterion", "available", "get", "register", "resolve_target"]

from ..steered import criterion as _steered  # noqa: E402,F401  (registers "steered", Interpretations Steered Pruning)
