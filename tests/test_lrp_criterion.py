"""The "lrp" criterion (Pruning by Explaining / PXP) on top of the LRP engine."""

from __future__ import annotations

import pytest
import torch

import xprune
from _lrp_models import TinyResNet, TinyVGG, inputs, make, single_thread
from xprune import lrp
from xprune.errors import XpruneError

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def data(cls, n=6):
    x = inputs(cls, n=n)
    return x, torch.arange(n) % 5


def manual(model, x, y, composite, layers, aggregate):
    out = dict.fromkeys(layers, 0)
    for i in range(0, len(x), 4):  # the criterion streams batches; relevance is per sample anyway
        _, r = lrp.relevance(model, x[i : i + 4], y[i : i + 4], composite, layers)
        for n in layers:
            if aggregate == "pxp":  # per sample |sum over space|
                out[n] = out[n] + r[n].sum((2, 3)).abs().sum(0)
            elif aggregate == "yeom":  # signed sum over samples and space (Yeom et al.'s code)
                out[n] = out[n] + r[n].sum((0, 2, 3))
            else:  # "abs": sum of |R|
                out[n] = out[n] + r[n].abs().sum((0, 2, 3))
    return out


@pytest.mark.parametrize("aggregate", ["pxp", "yeom", "abs"])
@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_channel_scores_are_aggregated_relevance(aggregate, composite):
    model = make(TinyResNet)
    x, y = data(TinyResNet)
    s = xprune.score(model, (x, y), "lrp", batch_size=4, composite=composite, aggregate=aggregate)
    layers = ["stem", "layer1.conv1", "layer1.conv2", "layer2.conv1"]
    ref = manual(model, x, y, composite, layers, aggregate)
    torch.testing.assert_close(s["layer1.conv1"].double(), ref["layer1.conv1"])
    torch.testing.assert_close(s["layer2.conv1"].double(), ref["layer2.conv1"])
    # coupled channels (stem and layer1.conv2 feed one residual stream): the sum over producers
    torch.testing.assert_close(s["stem"].double(), ref["stem"] + ref["layer1.conv2"])


def test_group_composite_and_logit_start():
    model = make(TinyVGG)
    x, y = data(TinyVGG)
    spec = {"low": ("gamma", {"gamma": 0.25}), "mid": "alpha2-beta1", "high": "zplus", "fc": "epsilon"}
    s1 = xprune.score(model, (x, y), "lrp", composite=spec, normalize=None)
    s2 = xprune.score(model, (x, y), "lrp", composite=spec, start="logit", normalize=None)
    assert set(s1) == set(s2) and all(torch.isfinite(s1[k]).all() for k in s1)
    assert any(not torch.allclose(s1[k], s2[k]) for k in s1)


def test_weight_scores_equal_weight_relevance():
    model = make(TinyVGG)
    x, y = data(TinyVGG)
    s = xprune.score(model, (x, y), "lrp", units="weights", normalize=None)
    ref = lrp.weight_relevance(model, x, y, "epsilon-plus")
    for name in s:
        torch.testing.assert_close(s[name].double(), ref[name].abs().reshape(-1))


def test_options_are_checked():
    with pytest.raises(XpruneError, match="aggregate"):
        xprune.criteria.get("lrp", aggregate="mean")
    with pytest.raises(XpruneError, match="known composites"):
        xprune.criteria.get("lrp", composite="nope")
    crit = xprune.criteria.get("lrp", composite=("epsilon-gamma-box", {"low": -1, "high": 1}), canonizers=False)
    assert crit.canonizers == [] and "lrp" in xprune.criteria.available()
