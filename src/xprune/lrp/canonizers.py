"""Canonizers: rewrite a model into a form LRP rules handle well, for the duration of an attribution.

Unlike implementations that overwrite parameters and restore them afterwards,
the canonizers here never touch the model's parameters or buffers: they only
tell the :class:`~xprune.lrp.Attribution` engine how to treat modules (merged
parameters are computed on the fly, detached), so the model is left
bit-identical by construction, also when an exception interrupts the
attribution.

- :class:`MergeBatchNorm` - a BatchNorm right after a Linear/Conv layer is
  merged into it: the layer's rule sees the effective parameters
  :math:`w' = w \\cdot s`, :math:`b' = (b - \\mu) s + \\beta` with
  :math:`s = \\gamma / \\sqrt{\\sigma^2 + \\epsilon}`, its output is the
  BatchNorm's output, and the BatchNorm itself becomes the identity. Relevance
  read at the layer's output is therefore read *after* the BatchNorm.
- :class:`ResidualNorm` - residual sums (:class:`xprune.layers.Add`, or
  any modules named by the user) get the :class:`~xprune.lrp.rules.Norm` rule,
  so relevance splits over the branches in proportion to their contributions
  and is conserved through skip connections.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import nn

from ..errors import XpruneError
from ..layers import Add
from .composites import BATCHNORM, CONV, LINEAR
from .rules import Norm, Rule

__all__ = ["Canonizer", "MergeBatchNorm", "ResidualNorm", "RuleAssignment", "default_canonizers"]


@dataclass
class RuleAssignment:
    """What the engine will do to a model: rules by module name, BatchNorm merges (layer -> BatchNorm)."""

    rules: dict[str, Rule] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)


class Canonizer:
    """Base class: adjust the attribution :class:`RuleAssignment` of a model (never the model itself)."""

    def prepare(self, model: nn.Module, plan: RuleAssignment) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]


class MergeBatchNorm(Canonizer):
    """Merge each BatchNorm into the Linear/Conv layer that produces its input.

    Parameters
    ----------
    pairs : mapping of BatchNorm name to layer name, optional
        Explicit pairs. By default a BatchNorm is paired with the leaf module
        registered right before it if that is a Linear/Conv layer (the same
        convention as zennit's ``SequentialMergeBatchNorm``). The engine checks
        during the forward pass that the BatchNorm's input really is that
        layer's output and raises otherwise.

    Notes
    -----
    Merging uses the running statistics, i.e. eval-mode BatchNorm; the engine
    raises if a merged BatchNorm is in training mode (its forward would also
    update the running statistics).
    """

    def __init__(self, pairs: Mapping[str, str] | None = None):
        self.pairs = dict(pairs) if pairs is not None else None

    def prepare(self, model: nn.Module, plan: RuleAssignment) -> None:
        modules = dict(model.named_modules())
        if self.pairs is not None:
            for bn, layer in self.pairs.items():
                for n, types in ((bn, BATCHNORM), (layer, CONV + LINEAR)):
                    if n not in modules or not isinstance(modules[n], types):
                        raise XpruneError(f"MergeBatchNorm pair ({bn!r}, {layer!r}): {n!r} is not a suitable module")
                plan.merges[layer] = bn
            return
        previous: tuple[str, nn.Module] | None = None
        for name, leaf in _leaves(model):
            if (
                previous is not None
                and isinstance(leaf, BATCHNORM)
                and isinstance(previous[1], CONV + LINEAR)
                and leaf.track_running_stats
                and leaf.running_mean is not None
                and previous[1].weight.shape[0] == leaf.num_features
            ):
                plan.merges[previous[0]] = name
            previous = (name, leaf)

    def __repr__(self) -> str:
        return f"MergeBatchNorm(pairs={self.pairs!r})"


class ResidualNorm(Canonizer):
    """Give residual sums the norm rule.

    Parameters
    ----------
    types : tuple of module types
        Module types of residual sums (default :class:`xprune.layers.Add`);
        they get the norm rule unless the composite gives them another rule.
    names : iterable of str
        Further modules, by name (e.g. a custom residual module of a user
        model); these always get the norm rule.
    stabilizer : float
        Epsilon of the norm rule.
    """

    def __init__(self, types: tuple[type, ...] = (Add,), names: Iterable[str] = (), stabilizer: float = 1e-6):
        self.types = tuple(types)
        self.names = tuple(names)
        self.stabilizer = stabilizer

    def prepare(self, model: nn.Module, plan: RuleAssignment) -> None:
        modules = dict(model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise XpruneError(f"ResidualNorm names modules the model does not have: {missing}")
        rule = Norm(self.stabilizer)
        for name, module in modules.items():
            if name in self.names:
                plan.rules[name] = rule
            elif self.types and isinstance(module, self.types):
                plan.rules.setdefault(name, rule)  # a composite's explicit choice wins

    def __repr__(self) -> str:
        return f"ResidualNorm(types={self.types!r}, names={self.names!r})"


def default_canonizers() -> list[Canonizer]:
    """``[MergeBatchNorm(), ResidualNorm()]``."""
    return [MergeBatchNorm(), ResidualNorm()]
