"""xprune: prune neural networks by what their explanations say does not matter.

The pipeline, one stage per module::

    data -> units (what can go; one UnitKind per kind) -> criteria (how much it matters)
    -> select (a Plan) -> surgery (remove or mask) -> measure (what it cost, what it saved)

with the LRP engine (``lrp``) beside it and ``pipeline`` (prune, curve) on top.

Quick use::

    import xprune
    scores = xprune.score(model, (X_ref, y_ref), criterion="lrp")
    plan = xprune.select(scores, ratio=0.5)
    small = xprune.apply(model, plan)            # physically smaller
    small = xprune.prune(model, (X_ref, y_ref), "lrp", 0.5)   # the same in one call
"""

import importlib

from . import criteria, evaluate, guarantee, lrp, measure, pipeline, units
from ._version import __version__
from .costs import unit_costs
from .criteria import Criterion, HookedCriterion, register
from .errors import DataError, NothingToPrune, XpruneError
from .guarantee import RateChoice, calibration_size, choose_rate
from .io import export_onnx, load, save
from .lrp import explain
from .pipeline import prune
from .plan import Plan
from .scores import Scores, score
from .select import select
from .surgery import apply, history
from .tune import TuneResult, tune  # optuna is imported only when tune() runs
from .units import UnitGroup, UnitKind, UnitSet, discover, register_kind

#: Subpackages imported on first attribute access (``xprune.llm``, ``xprune.transformers``, ...).
_LAZY = ("llm", "transformers", "steered", "schedules", "data", "models", "bench", "report", "similarity", "control")
#: Functions of lazy subpackages, reached as ``xprune.NAME`` (``xprune.correct`` is ``xprune.control.correct``).
_LAZY_NAMES = {"correct": "control", "circuit": "control", "contrastive_scores": "control"}


def __getattr__(name: str):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "Criterion", "DataError", "RateChoice", "calibration_size", "choose_rate", "guarantee", "explain", "lrp",
    "HookedCriterion", "NothingToPrune", "Plan", "Scores", "UnitGroup", "UnitSet",
    "XpruneError", "apply", "criteria", "discover", "export_onnx", "history", "load", "prune", "register", "save",
    "llm", "score", "select", "unit_costs", "units", "tune", "TuneResult", "UnitKind", "register_kind",
    "evaluate", "measure", "pipeline", "control", "correct", "circuit", "contrastive_scores",
]  # fmt: skip
