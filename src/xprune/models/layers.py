"""Moved to :mod:`xprune.layers` (a leaf module the LRP engine imports without the model zoo)."""

from ..layers import Add, Concat, MatMul

__all__ = ["Add", "Concat", "MatMul"]
