"""The output layer of a classifier: find it, or replace it by a fresh one with another number of classes."""

from __future__ import annotations

from torch import nn

from ..errors import XpruneError
from ._common import _seeded

__all__ = ["output_layer", "replace_head"]


def output_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """Find the output layer: the last ``nn.Linear`` registered in ``model``.

    Returns
    -------
    (parent, name, layer)
        The module holding the layer, its attribute name there, and the layer.
    """
    found = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = qualified
    if found is None:
        raise XpruneError(f"{type(model).__name__} has no nn.Linear output layer")
    parent_name, _, name = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, name, getattr(parent, name)


def replace_head(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Linear:
    """Replace the output layer with a freshly initialised ``Linear(in_features, num_classes)``.

    Also updates ``model.config["num_classes"]`` when the model has a config.

    Parameters
    ----------
    model : nn.Module
        Modified in place.
    num_classes : int
        Outputs of the new layer.
    seed : int, default 0
        Seeds the new layer's initialisation.

    Returns
    -------
    nn.Linear
        The new layer (on the old layer's device and dtype).
    """
    parent, name, old = output_layer(model)
    with _seeded(seed):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(parent, name, new)  # also for nn.Sequential / nn.ModuleList children: their names are the keys
    config = getattr(model, "config", None)
    if isinstance(config, dict) and "num_classes" in config:
        config["num_classes"] = num_classes
    return new
