"""Reference architectures, training helpers, a weights cache and the transfer setting.

Architectures (all built from standard ``nn`` modules plus the hookable
:mod:`~xprune.layers` ``Add`` / ``MatMul`` / ``Concat``, so LRP hooks and
torch-pruning's dependency graph see every operation that matters):

======== =================================================================
name     class
======== =================================================================
mlp      :class:`MLP` (Flatten, Linear+ReLU layers, Linear)
vgg      :class:`VGG` (Conv3x3-BN-ReLU stages with MaxPool, 2-layer head)
resnet   :class:`ResNet` (ResNet-8 style :class:`BasicBlock` s)
vit      :class:`ViT` (patch embedding, pre-LN blocks, :class:`Attention`)
======== =================================================================

Every model stores its constructor arguments in ``model.config`` and its
registry name in ``model.arch``: ``build(model.arch, **model.config)`` rebuilds it.

Note that ``xprune.models.train`` is the :func:`train` *function*; the module
that defines it is ``sys.modules["xprune.models.train"]`` (import names from it
with ``from xprune.models.train import ...``). The training loops live in
``train``, the weights cache in ``cache``, the output-layer helpers in
``heads`` and the transfer setting in ``transfer_setting``; this package
re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import XpruneError
from ..layers import Add, Concat, MatMul
from ._base import Configurable, prod
from .mlp import MLP
from .resnet import BasicBlock, ResNet
from .vgg import VGG
from .vit import Attention, Block, FeedForward, ViT

#: Registry of architectures: name -> class.
ARCHITECTURES: dict[str, type[Configurable]] = {
    "mlp": MLP,
    "vgg": VGG,
    "resnet": ResNet,
    "vit": ViT,
}


def build(arch: str, *, input_shape: Sequence[int] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered architecture.

    Parameters
    ----------
    arch : str
        One of ``ARCHITECTURES`` (``"mlp"``, ``"vgg"``, ``"resnet"``, ``"vit"``).
    input_shape : sequence of int, optional
        Shape of one sample without the batch dimension, e.g. ``(1, 28, 28)``
        or ``(2,)``. When given, fills in the size arguments the architecture
        needs (``in_features`` for mlp; ``in_channels`` and ``image_size`` for
        vgg / vit; ``in_channels`` for resnet) unless they are in ``kwargs``.
    **kwargs
        Constructor arguments, e.g. ``num_classes=10`` or a saved
        ``model.config``.

    Returns
    -------
    nn.Module
        A freshly initialised model (uses the global random state).

    Raises
    ------
    XpruneError
        A ``ValueError``: unknown ``arch`` (lists the known ones) or an image architecture asked
        for non-image ``input_shape``.
    """
    if arch not in ARCHITECTURES:
        raise XpruneError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    kwargs = dict(kwargs)
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if arch == "mlp":
            kwargs.setdefault("in_features", prod(shape))
        else:
            if len(shape) != 3:
                raise XpruneError(
                    f"architecture {arch!r} needs image inputs (C, H, W); got input_shape={shape}. "
                    "Use 'mlp' for tabular data"
                )
            kwargs.setdefault("in_channels", shape[0])
            if arch in ("vgg", "vit"):
                kwargs.setdefault("image_size", shape[1] if shape[1] == shape[2] else [shape[1], shape[2]])
    return ARCHITECTURES[arch](**kwargs)


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return list(ARCHITECTURES)


from .cache import cache_dir, pretrained  # noqa: E402  (needs build / ARCHITECTURES above)
from .heads import output_layer, replace_head  # noqa: E402 - as above
from .train import accuracy, fine_tune, train  # noqa: E402 - as above
from .transfer_setting import TransferResult, transfer  # noqa: E402 - as above

__all__ = [
    "ARCHITECTURES",
    "Add",
    "Attention",
    "BasicBlock",
    "Block",
    "Concat",
    "Configurable",
    "FeedForward",
    "MLP",
    "MatMul",
    "ResNet",
    "TransferResult",
    "VGG",
    "ViT",
    "accuracy",
    "available",
    "build",
    "cache_dir",
    "fine_tune",
    "output_layer",
    "pretrained",
    "replace_head",
    "train",
    "transfer",
]
