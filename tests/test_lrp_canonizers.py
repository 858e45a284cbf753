"""Canonizers and the attribution context leave the model bit-identical, also on errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _lrp_models import TinyMLP, TinyResNet, TinyVGG, dense_layers, inputs, make, single_thread
from xprune import lrp
from xprune.errors import XpruneError

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        dict(model.named_parameters()),
        {n: (p.requires_grad, p.grad) for n, p in model.named_parameters()},
        {n: (m.training, getattr(m, "eps", None)) for n, m in model.named_modules()},
    )


def assert_unchanged(model, snap):
    state, params, flags, modes = snap
    now = model.state_dict(keep_vars=True)
    assert list(now) == list(state)
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(now[k], v), k
    for n, p in model.named_parameters():
        assert p is params[n], f"parameter {n} was replaced"
        assert (p.requires_grad, p.grad) == flags[n]
    assert {n: (m.training, getattr(m, "eps", None)) for n, m in model.named_modules()} == modes
    for n, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(m, attr), f"{n} keeps {attr}"
        assert "forward" not in vars(m), f"{n} has a patched forward"


@pytest.mark.parametrize("cls", [TinyVGG, TinyResNet, TinyMLP])
@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-plus-flat"])
def test_model_unchanged_after_relevance(cls, name):
    model = make(cls)
    snap = snapshot(model)
    lrp.relevance(model, inputs(cls), None, name, dense_layers(model))
    lrp.weight_relevance(model, inputs(cls), None, name)
    assert_unchanged(model, snap)


def test_model_unchanged_after_exception_inside_context():
    model = make(TinyResNet)
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), lrp.attribution(model):
        x = inputs(TinyResNet).requires_grad_()
        torch.autograd.grad(model(x).sum(), x)
        raise RuntimeError("boom")
    assert_unchanged(model, snap)


def test_model_unchanged_after_exception_in_forward():
    class Bad(nn.Module):  # BN registered after the conv but applied after the ReLU: the merge must refuse
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.bn(self.relu(self.conv(x))).mean((2, 3)))

    model = Bad().double().eval()
    snap = snapshot(model)
    with pytest.raises(XpruneError, match="MergeBatchNorm"):
        lrp.relevance(model, inputs(TinyVGG), 0)
    assert_unchanged(model, snap)
    # without merging it runs
    r, _ = lrp.relevance(model, inputs(TinyVGG), 0, canonizers=[])
    assert torch.isfinite(r).all()
    assert_unchanged(model, snap)


@pytest.mark.parametrize("cls", [TinyVGG, TinyResNet, TinyMLP])
def test_outputs_inside_context_equal_model_outputs(cls):
    model = make(cls)
    x = inputs(cls)
    with torch.no_grad():
        ref = model(x)
    with lrp.attribution(model, "epsilon-alpha2-beta1"):
        out_grad = model(x.clone().requires_grad_())
        with torch.no_grad():
            out_nograd = model(x)
    torch.testing.assert_close(out_grad.detach(), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_nograd, ref, rtol=1e-12, atol=1e-12)


def test_training_mode_batchnorm_is_refused():
    model = make(TinyVGG).train()
    snap = snapshot(model)
    with pytest.raises(XpruneError, match="eval"):
        lrp.relevance(model, inputs(TinyVGG), 0)
    assert_unchanged(model, snap)


def test_merge_batchnorm_explicit_pairs_equal_automatic():
    model = make(TinyVGG)
    x = inputs(TinyVGG)
    auto, _ = lrp.relevance(model, x, 1)
    pairs = {"bn1": "conv1", "bn2": "conv2", "bn4": "conv4"}
    explicit, _ = lrp.relevance(model, x, 1, canonizers=[lrp.MergeBatchNorm(pairs), lrp.ResidualNorm()])
    torch.testing.assert_close(auto, explicit)
    with pytest.raises(XpruneError, match="not a suitable module"):
        lrp.relevance(model, x, 1, canonizers=[lrp.MergeBatchNorm({"bn1": "relu1"})])


def test_residual_norm_on_named_custom_module():
    class MySum(nn.Module):
        def forward(self, a, b):
            return a + b

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.sum = MySum()
            self.out = nn.Linear(4, 2, bias=False)

        def forward(self, x):
            return self.out(self.sum(self.a(x), self.b(x)))

    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(3, 4, dtype=torch.float64)
    canon = [lrp.ResidualNorm(names=["sum"], stabilizer=0.5)]
    _, r = lrp.relevance(model, x, 0, "epsilon", ["a", "b", "sum"], canonizers=canon)
    s = r["sum"]  # the norm rule splits it in proportion to the summands (large stabilizer to see it)
    with torch.no_grad():
        ya, yb = model.a(x), model.b(x)
        tot = ya + yb
    stab = torch.where(tot >= 0, tot + 0.5, tot - 0.5)
    torch.testing.assert_close(r["a"], ya * s / stab)
    torch.testing.assert_close(r["b"], yb * s / stab)
    with pytest.raises(XpruneError, match="does not have"):
        lrp.relevance(model, x, 0, canonizers=[lrp.ResidualNorm(names=["nope"])])


def test_inplace_activation_with_pass_rule():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(5, 6)
            self.act = nn.Hardtanh(-0.5, 0.5, inplace=True)
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    torch.manual_seed(0)
    model = Net().double()
    x = torch.randn(4, 5, dtype=torch.float64)
    _, r = lrp.relevance(model, x, 0, "epsilon", ["fc1", "act"])
    torch.testing.assert_close(r["fc1"], r["act"])  # identity rule through the clipping activation
    ref = copy.deepcopy(model)
    assert torch.equal(ref(x), model(x))
