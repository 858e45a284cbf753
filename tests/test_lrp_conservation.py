"""Relevance conservation: without biases, every cut through the network carries the target logit.

(alpha-beta is left out on purpose: where a neuron has no negative contributions
its beta part is empty and alpha * R is passed down, so alpha2-beta1 is not
conservative - the same in zennit and in the original definition.)
"""

from __future__ import annotations

import pytest
import torch

from _lrp_models import TinyResNet, TinyVGG, dense_layers, inputs, make, single_thread
from xprune import lrp

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)

COMPOSITES = [
    ("epsilon", {"epsilon": 1e-12, "stabilizer": 1e-12}),
    ("gradient", {}),
    ("epsilon-plus", {"epsilon": 1e-12, "stabilizer": 1e-12}),
    ("epsilon-plus-flat", {"epsilon": 1e-12, "stabilizer": 1e-12}),
    ("epsilon-gamma-box", {"epsilon": 1e-12, "stabilizer": 1e-12, "low": -1.0, "high": 1.0}),
    ({"low": ("gamma", {"gamma": 0.5, "stabilizer": 1e-12}), "mid": ("gamma", {"gamma": 0.1, "stabilizer": 1e-12}),
      "high": ("zplus", {"stabilizer": 1e-12}), "fc": ("epsilon", {"epsilon": 1e-12})}, {"stabilizer": 1e-12}),
]  # fmt: skip


def totals(r: torch.Tensor) -> torch.Tensor:
    return r.reshape(r.shape[0], -1).sum(1)


def check(model, x, spec, layers, start, extra=()):
    comp = lrp.composite(spec[0], **spec[1])
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(-1)
    expected = logits[torch.arange(len(x)), target] if start == "logit" else torch.ones(len(x), dtype=x.dtype)
    r_in, r_layers = lrp.relevance(model, x, target, comp, [*layers, *extra], start=start)
    torch.testing.assert_close(totals(r_in), expected, rtol=1e-4, atol=0)
    for n in layers:
        torch.testing.assert_close(totals(r_layers[n]), expected, rtol=1e-4, atol=0, msg=lambda m, n=n: f"{n}: {m}")
    return r_layers


@pytest.mark.parametrize("spec", COMPOSITES, ids=lambda s: s[0] if isinstance(s[0], str) else "groups")
@pytest.mark.parametrize("start", ["logit", "onehot"])
def test_conservation_vgg(spec, start):
    model = make(TinyVGG, bias=False, centred=True)
    check(model, inputs(TinyVGG), spec, [*dense_layers(model), "pool1", "pool2", "relu5"], start)


@pytest.mark.parametrize("spec", COMPOSITES, ids=lambda s: s[0] if isinstance(s[0], str) else "groups")
def test_conservation_resnet(spec):
    model = make(TinyResNet, bias=False, centred=True)
    cuts = ["stem", "relu", "layer1.add", "layer1.relu2", "layer2.add", "layer2.relu2", "pool", "fc"]
    r = check(model, inputs(TinyResNet), spec, cuts, "logit", extra=["layer2.conv2", "layer2.short.0"])
    # the residual sum splits its relevance over the two branches without loss
    torch.testing.assert_close(
        totals(r["layer2.conv2"]) + totals(r["layer2.short.0"]), totals(r["layer2.add"]), rtol=1e-4, atol=0
    )


def test_epsilon_absorbs_relevance():
    # a large epsilon is *meant* to absorb relevance: totals shrink, but never grow
    model = make(TinyVGG, bias=False, centred=True)
    x = inputs(TinyVGG)
    r_small, _ = lrp.relevance(model, x, 0, lrp.composite("epsilon", epsilon=1e-12), start="logit")
    r_big, _ = lrp.relevance(model, x, 0, lrp.composite("epsilon", epsilon=10.0), start="logit")
    assert (totals(r_big).abs() < totals(r_small).abs()).all()
