"""Scenario ``minilm``: heads and neurons of all-MiniLM-L6-v2 (runs ``benchmarks/minilm.py``)."""

from __future__ import annotations

from ._common import Context, _script


def minilm(ctx: Context) -> dict:
    """all-MiniLM-L6-v2 heads and neurons (runs ``benchmarks/minilm.py``)."""
    return _script(ctx, "minilm.py", "minilm")
