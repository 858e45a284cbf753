"""Layer-wise relevance propagation (LRP) in the gradient x input formulation.

One forward and one backward pass give the relevance of every tensor of the
model: ``R(t) = t * (modified gradient at t)``. Rules (:mod:`.rules`) are small
objects attached to modules by a :class:`Composite` (by module type, name, or
the first layer; or by layer group for PXP); canonizers merge BatchNorm into
the preceding layer and give residual sums the norm rule, without ever
touching the model's parameters. Layers with their own forward, gating
products and norm layers are handled inside the forward (:mod:`.ops`; the
rules chosen and what is refused: ``docs/lrp.md``).

Main entry points: :func:`relevance`, :func:`explain`, :func:`weight_relevance`,
:func:`attribution` (context manager), :func:`composite` (resolver; also
reads composite files, :func:`save_composite`/:func:`load_composite`),
:func:`save_heatmap`.
"""

from .canonizers import Canonizer, MergeBatchNorm, ResidualNorm, RuleAssignment, default_canonizers
from .composites import (
    PRESETS,
    TYPE_GROUPS,
    Composite,
    GroupComposite,
    composite,
    conv_groups,
    load_composite,
    register_composite,
    save_composite,
)
from .core import Attribution, attribution
from .functions import explain, relevance, start_seed, weight_relevance
from .heatmap import heatmap_array, save_heatmap
from .rules import (
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gate,
    Gradient,
    LayerCall,
    LayerNormRule,
    Norm,
    Pass,
    Rule,
    WSquare,
    ZBox,
    ZPlus,
    make_rule,
    stabilize,
)

__all__ = [
    "Attribution", "attribution", "relevance", "explain", "weight_relevance", "start_seed",
    "Composite", "GroupComposite", "composite", "conv_groups", "register_composite", "PRESETS", "TYPE_GROUPS",
    "Canonizer", "MergeBatchNorm", "ResidualNorm", "RuleAssignment", "default_canonizers",
    "Rule", "LayerCall", "Gradient", "Epsilon", "ZPlus", "AlphaBeta", "Gamma", "Flat", "WSquare", "ZBox",
    "Pass", "Gate", "LayerNormRule", "Norm", "RULES", "make_rule", "stabilize",
    "heatmap_array", "save_heatmap", "load_composite", "save_composite",
]  # fmt: skip
