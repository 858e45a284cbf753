"""Signals are what the layer returned, whatever runs in place after it (issue 17, item 2)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xprune
from xprune.units import Signals
from zoo import N_CLASSES, InplaceVGG, batches

CRITERIA = [
    ("activation", {}),
    ("gradient", {}),
    ("taylor", {}),
    ("lrp", {}),
    ("integrated-gradients", {"n_steps": 3}),
    ("singe", {"n_steps": 3}),
]


def _pair():
    torch.manual_seed(0)
    inplace = InplaceVGG(inplace=True).eval()
    plain = InplaceVGG(inplace=False).eval()
    plain.load_state_dict(inplace.state_dict())
    return inplace, plain


@pytest.mark.parametrize("criterion,options", CRITERIA, ids=[c for c, _ in CRITERIA])
def test_inplace_relu_does_not_change_scores(criterion, options):
    inplace, plain = _pair()
    data = batches(16, n=6)
    a = xprune.score(inplace, data, criterion, **options)
    b = xprune.score(plain, data, criterion, **options)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-9, msg=f"{criterion} at {name}")


class AddInPlace(nn.Module):
    """conv -> (y - 0.2).relu_() in place -> conv: functional in-place ops right after the producer."""

    def __init__(self, inplace):
        super().__init__()
        self.inplace = inplace
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, N_CLASSES)

    def forward(self, x):
        y = self.c1(x)
        y = torch.relu_(y.sub_(0.2)) if self.inplace else torch.relu(y - 0.2)
        return self.fc(F.relu(self.c2(y)).mean((2, 3)))


def test_functional_inplace_op_after_producer():
    torch.manual_seed(0)
    a = AddInPlace(True).eval()
    b = AddInPlace(False).eval()
    b.load_state_dict(a.state_dict())
    data = batches(8, n=4)
    for crit in ("activation", "taylor", "gradient"):
        sa, sb = xprune.score(a, data, crit), xprune.score(b, data, crit)
        for name in sa:
            torch.testing.assert_close(sa[name], sb[name], rtol=1e-5, atol=1e-9)


def test_signals_learn_which_sites_to_copy():
    sig = Signals()
    t = torch.ones(3)
    assert sig.keep(("g", "p"), t) is None  # no copy while nothing writes in place
    t.add_(1)
    assert sig.overwritten() == {("g", "p")}
    sig.copy_keys = {("g", "p")}
    u = torch.ones(3)
    c = sig.keep(("g", "p"), u)
    c.add_(1)  # the model continues with the copy: the captured tensor keeps the layer's value
    assert torch.equal(u, torch.ones(3)) and sig.captured[("g", "p")][-1] is u


def test_model_unchanged_after_scoring_inplace_model():
    inplace, _ = _pair()
    before = copy.deepcopy(inplace.state_dict())
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in inplace.modules())
    xprune.score(inplace, batches(16, n=4), "taylor")
    assert hooks == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in inplace.modules())
    for k, v in inplace.state_dict().items():
        assert torch.equal(v, before[k])
