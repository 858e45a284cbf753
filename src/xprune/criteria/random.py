"""Random criterion ``"random"``: seeded uniform scores, the floor every criterion must beat."""

from __future__ import annotations

import torch

from .base import Criterion, register


@register("random")
class Random(Criterion):
    """Uniform random scores in [0, 1), reproducible with ``seed``."""

    requires_data = False
    # uniform scores share one scale in every layer already (each layer loses the global fraction in expectation);
    # a per-layer normalisation would only tilt the draw by layer width (L1: wide layers lose more)
    default_normalize = None

    def __init__(self, seed: int = 0):
        self.seed = seed

    def compute(self, model, units, data=None, *, target="label"):
        g = torch.Generator().manual_seed(self.seed)
        return {group.name: torch.rand(group.size, generator=g, dtype=torch.float64) for group in units}
