"""Tune the LRP composite for pruning: Bayesian optimisation over layer-group rules (PXP).

Hatefi et al. ("Pruning By Explaining Revisited: Optimizing Attribution
Methods to Prune CNNs and Transformers", arXiv:2408.12568, 2024) treat the
attribution method as a hyper-parameter of pruning: :func:`tune` chooses the
LRP rule of each layer group (with its parameter), the aggregation over the
reference samples, the per-layer normalisation and, for transformers, the
softmax rule (AttnLRP or CP-LRP), to maximise the area under the validation
accuracy-vs-pruning-rate curve, as an optuna study (random search by default,
PXP's Gaussian-process Bayesian optimisation with ``sampler="gp"``; resumable,
shareable across processes and ``torchrun`` ranks).

Parameters of :func:`tune`: ``model``, ``reference`` (samples the relevance is
computed from), ``validation`` (where the AUC is measured), ``units``,
``space`` (:class:`Space`), ``trials``, ``sampler``, ``storage``,
``study_name``, ``out``, ``seed``, ``rates``, ``classes``, ``timeout``,
``progress``, ``pruner`` (:class:`BoundPruner` by default), ``scope``,
``device``, ``precision`` and ``options`` (fixed scoring options). It returns a
:class:`TuneResult` and writes ``out/best_composite.json``.

The objective, the search space, fast trials, persistence and the distributed
mode are described in ``docs/tune.md``. Modules: :mod:`.space` (search space,
layer groups), :mod:`.evaluator` (accuracy-vs-rate evaluation of a
candidate), :mod:`.study` (the optuna study, :func:`tune`), :mod:`.trials`
(running trials, across ranks), :mod:`.plots`. optuna and matplotlib are
imported only when :func:`tune` runs (or :class:`BoundPruner` is asked for).
"""

from __future__ import annotations

from .evaluator import Evaluator as _Evaluator  # noqa: F401  (tests and benchmarks/pxp_tune.py use it)
from .space import RULE_CHOICES, TRANSFORMER_KINDS, Space, default_groups  # noqa: F401 - re-exported
from .study import TuneResult, bound_pruner_cls as _bound_pruner_cls, tune

__all__ = ["tune", "Space", "TuneResult", "BoundPruner", "RULE_CHOICES", "TRANSFORMER_KINDS"]


def __getattr__(name: str):  # BoundPruner needs optuna, imported only when asked for
    if name == "BoundPruner":
        return _bound_pruner_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
