"""Interpretations Steered Pruning (Ganjdanesh, Gao, Huang, ECCV 2022): the ``"steered"`` method.

A classifier is explained by an amortised *selector* that predicts, per image
and class, a Gaussian (RBF) saliency mask; channel gates are then learned so
that the gated classifier keeps the same explanations at a target MACs
budget, and the closed-gate channels are removed.

Modules: :mod:`.rbf` (masks and relaxed-Bernoulli samples), :mod:`.explainer`
(predictor and selector), :mod:`.gates` (gates, free gates, exact MACs model), :mod:`.generator` (the
authors' hypernetwork gate generator, the default),
:mod:`.pipeline` (:func:`steer`, :func:`prune`), :mod:`.config` (their settings), :mod:`.criterion`
(``"steered"`` for :func:`xprune.score`).

Quick use::

    import xprune, xprune.steered as st
    pruned, plan, result = st.prune(model, train_split, reduction=0.5, fine_tune_steps=100)
    print(result.stages)                      # training time of each stage
    scores = xprune.score(model, train_split, "steered", reduction=0.5)
"""

from . import criterion, rbf  # noqa: F401  (criterion registers "steered")
from .explainer import Selector, feature_layers, features
from .gates import ChannelGates, GateGenerator, MacsModel, select_for_macs
from .generator import HyperGates
from .pipeline import SteeredConfig, SteeredResult, prune, steer

__all__ = [
    "ChannelGates",
    "GateGenerator",
    "HyperGates",
    "MacsModel",
    "Selector",
    "SteeredConfig",
    "SteeredResult",
    "feature_layers",
    "features",
    "prune",
    "rbf",
    "select_for_macs",
    "steer",
]
