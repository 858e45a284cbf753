"""xprune: prune neural networks by what their explanations say does not matter.

The pipeline, one stage per module::

    units (what can go) -> criteria (how much it matters) -> select (a Plan)
    -> surgery (remove or mask) -> evaluate (what it cost, what it saved)

Quick use::

    import xprune
    scores = xprune.score(model, (X_ref, y_ref), criterion="lrp")
    plan = xprune.select(scores, ratio=0.5)
    small = xprune.apply(model, plan)            # physically smaller
    small = xprune.prune(model, (X_ref, y_ref), "lrp", 0.5)   # the same in one call
"""

from . import criteria, guarantee, lrp, units
from .criteria import Criterion, HookedCriterion, register
from .errors import DataError, NothingToPrune, XpruneError
from .guarantee import RateChoice, calibration_size, choose_rate
from .scores import Scores, score
from .select import Plan, select
from .io import export_onnx, load, save
from .lrp import explain
from .surgery import apply, history, prune, unit_costs
from .tune import TuneResult, tune  # optuna is imported only when tune() runs
from .units import UnitGroup, UnitSet, discover

from . import transformers as _transformers  # noqa: E402,F401  (registers the "heads"/"neurons" kinds)
from . import llm  # noqa: E402  (calibration text, perplexity)

__version__ = "0.1.0"

__all__ = [
    "Criterion", "DataError", "RateChoice", "calibration_size", "choose_rate", "guarantee", "explain", "lrp", "HookedCriterion", "NothingToPrune", "Plan", "Scores", "UnitGroup", "UnitSet",
    "XpruneError", "apply", "criteria", "discover", "export_onnx", "history", "load", "prune", "register", "save",
    "llm", "score", "select", "unit_costs", "units", "tune", "TuneResult",
]
