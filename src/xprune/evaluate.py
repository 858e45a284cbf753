"""What pruning cost and saved: accuracy, parameters, MACs, latency (:mod:`xprune.measure`), and
accuracy-vs-rate curves (:mod:`xprune.pipeline`), under one name."""

from .measure import accuracy, count, latency, predictions
from .pipeline import DEFAULT_RATES, Curve, curve

__all__ = ["DEFAULT_RATES", "Curve", "accuracy", "count", "curve", "latency", "predictions"]
