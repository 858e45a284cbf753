"""zennit 0.5.1 as a test oracle for xprune.lrp (test-only; library code never imports zennit).

zennit imports torchvision at import time; torchvision is not installed (and
must not be), so a minimal stub with ``torchvision.models.resnet.BasicBlock``
and ``Bottleneck`` is placed in ``sys.modules`` first.

zennit's rules handle single-input modules only, so our residual
:class:`xprune.models.layers.Add` is replaced in a copy of the model by
:class:`StackSum` (stack the summands, then zennit's ``Sum`` layer), to which
the ``Norm`` rule applies - the zennit way of writing residual sums.
"""

from __future__ import annotations

import copy
import sys
import types

import pytest
import torch
from torch import nn

from xprune.models.layers import Add

_STUB = ("torchvision", "torchvision.models", "torchvision.models.resnet")


def _install_torchvision_stub() -> bool:
    if "torchvision" in sys.modules:
        return False
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")

    class BasicBlock(nn.Module):  # never instantiated; zennit only imports the names
        pass

    class Bottleneck(nn.Module):
        pass

    resnet.BasicBlock, resnet.Bottleneck = BasicBlock, Bottleneck  # type: ignore[attr-defined]  # stub modules
    tv.models, models.resnet = models, resnet  # type: ignore[attr-defined]  # stub modules
    tv.__path__ = []  # mark as package
    models.__path__ = []
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    return True


_stubbed = _install_torchvision_stub()
try:
    zennit = pytest.importorskip("zennit")
    from zennit import canonizers as zc, composites as zcomp, rules as zr
    from zennit.layer import Sum
    from zennit.types import Convolution, Linear as ZLinear
finally:
    # zennit holds its references now; other libraries (transformers) probe for torchvision
    # with importlib.util.find_spec, which a stub without a spec would break
    if _stubbed:
        for name in _STUB:
            sys.modules.pop(name, None)


class StackSum(nn.Module):
    """``a + b + ...`` written as ``Sum(stack(...))`` so that zennit's Norm rule can see it."""

    def __init__(self):
        super().__init__()
        self.sum = Sum(dim=-1)

    def forward(self, *tensors):
        return self.sum(torch.stack(tensors, dim=-1))


class ExactMergeBatchNorm(zc.SequentialMergeBatchNorm):
    """zennit's SequentialMergeBatchNorm, made exact.

    zennit 0.5.1 turns the merged BatchNorm into ``(x - 0) / sqrt(1 + eps) * 1 + 0``,
    which is not the identity (a relative error of ``eps / 2`` = 5e-6 per
    BatchNorm). The oracle sets ``eps = 0`` while merged and restores it.
    """

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self._eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self._eps


def zennit_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every :class:`Add` replaced by :class:`StackSum`."""
    twin = copy.deepcopy(model)
    for _name, module in list(twin.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Add):
                setattr(module, child_name, StackSum())
    return twin


def _map_name(name: str, twin: nn.Module) -> str:
    """Our module name -> the twin's (an Add ``x`` became ``x`` whose zennit-visible leaf is ``x.sum``)."""
    modules = dict(twin.named_modules())
    return name + ".sum" if isinstance(modules.get(name), StackSum) else name


def zennit_relevance(model, x, target, composite, layers=(), canonize=True):
    """Input relevance and relevance at the outputs of ``layers`` computed by zennit.

    ``composite`` is a zennit Composite *without* canonizers (they are added
    here when ``canonize``). ``target`` is a LongTensor ``[N]``; the starting
    relevance is one-hot (relevance 1 at the target logit).
    """
    return zennit_relevance_twin(zennit_model(model), x, target, composite, layers, canonize)


def zennit_relevance_twin(twin, x, target, composite, layers=(), canonize=True):
    """:func:`zennit_relevance` on a model already converted by :func:`zennit_model`."""
    if canonize:
        composite.canonizers = [ExactMergeBatchNorm()]
    modules = dict(twin.named_modules())
    store = {}
    handles = []
    for n in layers:

        def hook(m, a, o, n=n):
            o.retain_grad()
            store[n] = o

        handles.append(modules[_map_name(n, twin)].register_forward_hook(hook))
    x = x.detach().clone().requires_grad_(True)
    try:
        with composite.context(twin):
            out = twin(x)
            seed = torch.zeros_like(out)
            seed[torch.arange(out.shape[0]), target] = 1.0
            out.backward(seed)
    finally:
        for h in handles:
            h.remove()
    return x.grad.detach(), {n: store[n].grad.detach() for n in layers}


def layer_map_base(stabilizer=1e-6):
    return [
        (zcomp.Activation, zr.Pass()),
        (Sum, zr.Norm(stabilizer=stabilizer)),
        (zcomp.AvgPool, zr.Norm(stabilizer=stabilizer)),
        (zcomp.BatchNorm, zr.Pass()),
    ]


def rule_composite(conv_rule, linear_rule, first_rule=None, first_types=ZLinear):
    """zennit composite: conv -> conv_rule, linear -> linear_rule (+ base map, optional first-layer rule)."""
    layer_map = [*layer_map_base(), (Convolution, conv_rule), (nn.Linear, linear_rule)]
    if first_rule is None:
        return zcomp.LayerMapComposite(layer_map=layer_map)
    return zcomp.SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=[(first_types, first_rule)])


def preset(name: str, **kwargs):
    """zennit's preset composite of the same name (no canonizers)."""
    return {
        "epsilon-plus": zcomp.EpsilonPlus,
        "epsilon-plus-flat": zcomp.EpsilonPlusFlat,
        "epsilon-alpha2-beta1": zcomp.EpsilonAlpha2Beta1,
        "epsilon-alpha2-beta1-flat": zcomp.EpsilonAlpha2Beta1Flat,
        "epsilon-gamma-box": zcomp.EpsilonGammaBox,
    }[name](**kwargs)


__all__ = [
    "zennit",
    "zr",
    "zcomp",
    "zc",
    "StackSum",
    "zennit_model",
    "zennit_relevance",
    "zennit_relevance_twin",
    "rule_composite",
    "preset",
]
