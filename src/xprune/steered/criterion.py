"""The ``"steered"`` criterion: gate logits learned by Interpretations Steered Pruning.

``xprune.score(model, data, "steered", reduction=0.5)`` runs
:func:`xprune.steered.steer` (cached) on ``data`` and returns each unit's
learned gate logit :math:`a` (the generator's logit plus its ``base``;
higher = keep; a unit with :math:`a > 0` keeps its gate open). Select with
``xprune.select(scores, ratio)``, or with
:func:`xprune.steered.select_for_macs` for an exact MACs reduction. Options:
``reduction`` (the MACs target the gates were trained for), ``cache_dir``,
``progress`` and every field of :class:`~xprune.steered.SteeredConfig`.
``target`` is passed from :func:`xprune.score` (``"label"`` or ``"predicted"``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..criteria.base import Criterion, register
from ..errors import XpruneError


@register("steered")
class Steered(Criterion):
    """Gate logits of Interpretations Steered Pruning (Ganjdanesh et al., ECCV 2022)."""

    default_normalize: ClassVar[str | None] = None

    def __init__(self, reduction: float = 0.5, cache_dir: Any = "default", progress: bool = False, **options: Any):
        from .pipeline import SteeredConfig

        if "target" in options:
            raise XpruneError("pass target= to xprune.score, not as a steered option")
        self.reduction, self.cache_dir, self.progress = reduction, cache_dir, progress
        self.options = options
        SteeredConfig.from_options(**options)  # fail early on unknown options
        self.result = None

    def compute(self, model, units, data, *, target="label"):
        from .pipeline import SteeredConfig, as_tensors, steer

        if units.kind != "channels":  # its gates are trained against a MACs budget of conv channels
            raise XpruneError(
                f"criterion 'steered' prunes conv channels (Ganjdanesh et al. 2022), not units of kind "
                f"{units.kind!r}; pass units='channels', or use 'taylor' or 'lrp' for {units.kind}"
            )
        if not isinstance(target, str) or target not in ("label", "predicted"):
            raise XpruneError(f"criterion 'steered' explains target 'label' or 'predicted', got {target!r}")
        X, y = as_tensors(data)
        config = SteeredConfig.from_options(**self.options, target=target)
        self.result = steer(
            model, (X, y), self.reduction, config=config, units=units, cache_dir=self.cache_dir, progress=self.progress
        )
        scores = self.result.scores()
        return {name: scores[name] for name in scores}
