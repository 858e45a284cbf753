"""Relevance for control: targeted correction and circuit discovery (issue 21).

- :func:`contrastive_scores`: which units carry a *behaviour* set more than a
  *general* set (difference or floored ratio of per-layer-normalised scores);
- :func:`correct`: remove the top contrast units, as few as bring the
  behaviour metric down by a target while the general metric stays within a
  bound, with the curve in between (:class:`Correction`);
- :func:`circuit`: the smallest top-relevance set of units that keeps a
  behaviour (faithfulness curve, JSON, layer x unit map; :class:`Circuit`).

After Hatefi et al. (2025), "Attribution-guided Pruning for Compression,
Circuit Discovery, and Targeted Correction in LLMs" (arXiv 2506.13727).
Floor 7 of docs/architecture.md: built on score / select / apply / measure
and the guarantee's statistics; nothing in the core imports it.
"""

from .circuit import Circuit, circuit
from .contrast import COMBINATIONS, Contrast, contrastive_scores
from .correct import Correction, correct
from .metrics import Metric

__all__ = ["COMBINATIONS", "Circuit", "Contrast", "Correction", "Metric", "circuit", "contrastive_scores", "correct"]
