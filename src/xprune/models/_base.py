"""Shared helpers of the reference architectures."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

from torch import nn


def image_hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    """Normalise an image size given as ``int`` or ``(H, W)`` to ``(H, W)``."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def plain(value: Any) -> Any:
    """Turn tuples into lists recursively so a config is JSON friendly."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class Configurable(nn.Module):
    """Base class: remembers its constructor arguments in ``config``.

    ``type(model)(**model.config)`` (or :func:`xprune.models.build` with
    ``model.arch``) rebuilds an architecture of the same shape. Pruning changes
    the weights' shapes but not ``config``; rebuild the pruned model by
    deep-copying it instead.
    """

    #: Registry name of the architecture (``"mlp"``, ``"vgg"``, ...).
    arch: str = ""

    def _remember(self, **kwargs: Any) -> None:
        self.config: dict[str, Any] = plain(copy.deepcopy(kwargs))

    def extra_repr(self) -> str:  # shown at the top of ``print(model)``
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def prod(shape: Any) -> int:
    """Number of elements of a shape (an ``int`` is returned as is)."""
    if isinstance(shape, int):
        return shape
    return math.prod(int(s) for s in shape)
