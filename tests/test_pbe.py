"""Pruning by Explaining as published (Yeom et al. 2021): "pbe" criterion and composite, YEOM schedule, toy study."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xprune
from xprune import schedules
from xprune.errors import XpruneError
from xprune.lrp import composite
from xprune.lrp.rules import Epsilon, ZPlus
from xprune.models.mlp import MLP


class ConvDense(nn.Module):
    """conv (with BatchNorm) -> ReLU -> flatten -> linear -> ReLU -> linear: every layer type the preset covers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc1 = nn.Linear(4 * 5 * 5, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def tiny(seed=0):
    torch.manual_seed(seed)
    m = ConvDense()
    with torch.no_grad():  # a BatchNorm that is not the identity, so merging it matters
        m.bn.running_mean.uniform_(-0.3, 0.3)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def merged_conv(m):
    """The conv with the BatchNorm folded in (weights and bias of the layer LRP sees)."""
    s = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
    w = m.conv.weight * s[:, None, None, None]
    b = (m.conv.bias - m.bn.running_mean) * s + m.bn.bias
    return w.detach(), b.detach()


def by_hand(m, x, y, eps=1e-6, stab=1e-9, linear="epsilon"):
    """Yeom et al.'s rules written out (their src/lrp.py): relevance at the conv and fc1 outputs, per sample.

    Linear layers: epsilon without the bias, R_in = x * W^T (R_out / (W x + eps sign(W x)));
    z+ (their 'z' branch, weights clamped to >= 0, no bias): R_in = x * W+^T (R_out / (W+ x + stab)).
    The input is non-negative, where z+ and alpha1-beta0 coincide. Start: 1 at the true class.
    """
    w, b = merged_conv(m)
    with torch.no_grad():
        a0 = F.relu(F.conv2d(x, w, b, padding=1))
        a1 = F.relu(F.linear(a0.flatten(1), m.fc1.weight, m.fc1.bias))

        def lin(a, weight, r):
            if linear == "zplus":
                wp = weight.clamp(min=0)
                return a * ((r / (a @ wp.T + stab)) @ wp)
            z = a @ weight.T
            return a * ((r / (z + eps * torch.where(z >= 0, 1.0, -1.0))) @ weight)

        r2 = F.one_hot(y, 3).float()
        r1 = lin(a1, m.fc2.weight, r2)  # relevance at fc1's output (ReLU passes it on)
        r0 = lin(a0.flatten(1), m.fc1.weight, r1).reshape(a0.shape)  # at the conv output
    return r0, r1


def test_composite_rules_per_layer_type():
    m = tiny()
    rules = composite("pbe").assign(m)
    assert isinstance(rules["conv"], ZPlus) and rules["conv"].zero_bias
    assert isinstance(rules["fc1"], ZPlus) and isinstance(rules["fc2"], ZPlus) and rules["fc1"].zero_bias
    rules = composite(("pbe", {"linear": "epsilon"})).assign(m)
    assert isinstance(rules["conv"], ZPlus)
    assert type(rules["fc1"]) is Epsilon and rules["fc1"].epsilon == 1e-6 and rules["fc1"].zero_bias
    with pytest.raises(XpruneError, match="linear must be 'epsilon' or 'zplus'"):
        composite("pbe", linear="gamma")
    from xprune.units import get_kind

    crit = xprune.criteria.get("pbe")  # conv/dense units: the preset; attention units: their kind's AttnLRP
    assert crit.composite_for(get_kind("channels")).name == "pbe"
    assert crit.composite_for(get_kind("heads")).name == "attnlrp"
    assert xprune.criteria.get("pbe", composite="epsilon").composite_for(get_kind("heads")).name == "epsilon"


@pytest.mark.parametrize("linear", ["epsilon", "zplus"])
def test_pbe_scores_match_the_rules_by_hand(linear):
    m = tiny()
    x = torch.rand(8, 2, 5, 5)
    y = torch.arange(8) % 3
    r0, r1 = by_hand(m, x, y, linear=linear)
    ref = {"conv": r0.sum((0, 2, 3)), "fc1": r1.sum(0)}  # signed sums over samples (and space)
    comp = "pbe" if linear == "zplus" else ("pbe", {"linear": "epsilon"})
    raw = xprune.score(m, (x, y), "pbe", composite=comp, normalize=None, batch_size=3)
    for name, r in ref.items():
        torch.testing.assert_close(raw[name].float(), r, rtol=2e-4, atol=1e-6)
    s = xprune.score(m, (x, y), "pbe", composite=comp, batch_size=3)  # default: L1 per layer
    assert s.meta["normalize"] == "l1"
    for name, r in ref.items():
        torch.testing.assert_close(s[name].float(), r / r.abs().sum(), rtol=2e-4, atol=1e-6)


def test_yeom_sum_is_signed_and_abs_is_not():
    m = tiny(1)
    x = torch.rand(6, 2, 5, 5)
    y = torch.arange(6) % 3
    _r0, r1 = by_hand(m, x, y)
    assert (r1 < 0).any()  # epsilon on dense layers: some relevance is negative, so the two aggregates differ
    eps = ("pbe", {"linear": "epsilon"})
    signed = xprune.score(m, (x, y), "lrp", composite=eps, aggregate="yeom", normalize=None)
    absolute = xprune.score(m, (x, y), "lrp", composite=eps, aggregate="abs", normalize=None)
    torch.testing.assert_close(signed["fc1"].float(), r1.sum(0), rtol=2e-4, atol=1e-6)
    torch.testing.assert_close(absolute["fc1"].float(), r1.abs().sum(0), rtol=2e-4, atol=1e-6)
    with pytest.raises(XpruneError, match="aggregate must be 'pxp' or 'yeom'"):
        xprune.criteria.get("pbe", aggregate="mean")


@pytest.mark.filterwarnings("ignore:the reference samples cover")  # one sample (one class) per call, on purpose
def test_logit_start_weighs_samples_by_their_logit():
    m = tiny(2)
    x = torch.rand(4, 2, 5, 5)
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        logit = m(x)[torch.arange(4), y]
    per_sample = [xprune.score(m, (x[i : i + 1], y[i : i + 1]), "pbe", normalize=None)["fc1"] for i in range(4)]
    both = xprune.score(m, (x, y), "pbe", start="logit", normalize=None)["fc1"]
    # relevance is linear in the start: the logit start = sum of per-sample one-hot relevances times the logit
    ref = sum(float(logit[i]) * per_sample[i] for i in range(4))
    torch.testing.assert_close(both, ref, rtol=1e-4, atol=1e-7)


def test_iterative_yeom_removes_a_fixed_share_of_the_original_units():
    torch.manual_seed(0)
    m = MLP(2, (20, 20, 20), 2).eval()
    x, y = torch.randn(40, 2), torch.randint(0, 2, (40,))
    res = schedules.iterative(m, (x, y), ratio=0.3, **schedules.YEOM)
    assert schedules.YEOM == {"criterion": "pbe", "step": 0.05, "steps_of": "original"}
    assert [h["removed"] for h in res.history] == [3, 6, 9, 12, 15, 18]  # int(60 * 0.05) = 3 every step
    shrinking = schedules.iterative(m, (x, y), "pbe", 0.3, step=0.05)  # default: 5% of what is left
    assert [h["removed"] for h in shrinking.history][:2] == [3, 6] and len(shrinking.history) >= 6
    with pytest.raises(XpruneError, match="steps_of must be"):
        schedules.iterative(m, (x, y), "pbe", 0.3, steps_of="all")


def _toy_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "pbe_toy.py"
    spec = importlib.util.spec_from_file_location("pbe_toy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_toy_protocol_small_pbe_beats_random_on_circles():
    """The benchmark's protocol at a small size: 2-16-16-16-2 MLPs, 10 reference samples per class, a third removed."""
    toy = _toy_module()
    pbe, rand = [], []
    for seed in range(3):
        x, y = toy.generate("circle", 400, 1000 + seed)
        x_te, y_te = toy.generate("circle", 400, 2000 + seed)
        ref = toy.generate("circle", 20, seed)
        assert ref[0].shape == (20, 2) and int(ref[1].sum()) == 10  # n = 10 per class
        torch.manual_seed(seed)
        model = MLP(2, (16, 16, 16), 2)
        toy.train(model, x, y, epochs=300, lr=1e-2)
        assert toy.accuracy(model, x_te, y_te) > 97
        pruned, per_layer, removed = toy.prune_third(model, ref, toy.criteria()["pbe"], seed)
        assert removed == 16 and sum(per_layer.values()) == 16  # a third of the 48 hidden neurons, one ranking
        pbe.append(toy.accuracy(pruned, x_te, y_te))
        rand += [
            toy.accuracy(toy.prune_third(model, ref, {"criterion": "random", "normalize": None}, s)[0], x_te, y_te)
            for s in range(5)
        ]
    # measured when written: pbe 94.3% vs random 75.6% (means); random removal of a third hurts these narrow nets
    assert sum(pbe) / len(pbe) > sum(rand) / len(rand) + 5, (pbe, rand)


def test_spiral_is_their_four_class_spiral():
    toy = _toy_module()
    x, y = toy.generate("mult", 40, 3)
    assert x.shape == (40, 2) and torch.bincount(y).tolist() == [10] * 4
    r = x.norm(dim=1)
    torch.testing.assert_close(r[:10], torch.linspace(0, 1, 10), rtol=1e-5, atol=1e-6)  # radius = linspace(0, 1, N)
