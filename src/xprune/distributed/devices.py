"""Devices and precision of scoring: :func:`on_device`, :func:`precision_context` (bf16 autocast).

See docs/distributed.md for which criteria may run in bf16.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError

__all__ = ["BF16_CRITERIA", "bf16_allowed", "on_device", "precision_context"]

#: Criteria whose rule keeps its meaning under bf16 autocast (sums stay float64).
BF16_CRITERIA = frozenset({"activation", "gradient", "taylor", "taylor-mean"})


def _model_devices(model: nn.Module) -> set[torch.device]:
    return {t.device for t in list(model.parameters()) + list(model.buffers())}


@contextlib.contextmanager
def on_device(model: nn.Module, device: str | torch.device | None) -> Iterator[torch.device]:
    """Run a block with ``model`` on ``device``; its previous device is restored afterwards.

    ``device=None`` leaves the model where it is. Yields the device in use
    (the model's; CPU for a model without tensors).
    """
    current = _model_devices(model)
    if device is None:
        yield next(iter(current)) if len(current) == 1 else torch.device("cpu")
        return
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise XpruneError(
            f"device {str(device)!r} was asked for but CUDA is not available here "
            "(torch.cuda.is_available() is False); use device='cpu'"
        )
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    if len(current) > 1:
        raise XpruneError(
            f"the model is spread over several devices {sorted(map(str, current))}; "
            "leave device=None to score it where it is"
        )
    home = next(iter(current)) if current else target
    if home == target:
        yield target
        return
    model.to(target)
    try:
        yield target
    finally:
        model.to(home)


def bf16_allowed(criterion: Any) -> bool:
    """Whether ``criterion``'s rule may run under bf16 autocast (class attribute ``bf16_safe`` overrides)."""
    flag = getattr(type(criterion), "bf16_safe", None)
    if flag is not None:
        return bool(flag)
    return criterion.name in BF16_CRITERIA


def precision_context(criterion: Any, precision: str | None, device: torch.device):
    """Autocast context for scoring with ``criterion`` at ``precision`` (``None``/"fp32" or "bf16").

    Returns
    -------
    (context manager, str)
        The context and the precision actually used ("fp32" when the rule
        keeps fp32; a warning says so).
    """
    if precision in (None, "fp32", "float32"):
        return contextlib.nullcontext(), "fp32"
    if precision not in ("bf16", "bfloat16"):
        raise XpruneError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if not bf16_allowed(criterion):
        warnings.warn(
            f"criterion {criterion.name!r} keeps fp32: its rule is not reliable under bf16 autocast "
            f"(bf16 is used for {', '.join(sorted(BF16_CRITERIA))})",
            stacklevel=3,
        )
        return contextlib.nullcontext(), "fp32"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16), "bf16"
