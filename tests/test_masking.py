"""Grouped convolutions (score, mask, remove) and masking that must mean removal (issue 17, items 4 and 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xprune
from xprune.errors import XpruneError
from xprune.evaluate import accuracy
from xprune.surgery import inexact_masks

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.filterwarnings("ignore:the reference samples cover")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def assert_remove_equals_mask(model, plan, x, atol=1e-5):
    removed, masked = xprune.apply(model, plan, "remove"), xprune.apply(model, plan, "mask")
    with torch.no_grad():
        a, b, o = _logits(removed(x)), _logits(masked(x)), _logits(model(x))
    torch.testing.assert_close(a, b, atol=atol, rtol=0)
    assert (a - o).abs().max() > 1e-4  # something was removed
    return removed


class GroupedNet(nn.Module):
    """A ResNeXt-style block (1x1, grouped 3x3, 1x1, residual) and a grouped conv changing the width."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.reduce = nn.Sequential(nn.Conv2d(12, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 12, 1), nn.BatchNorm2d(12))
        self.widen = nn.Conv2d(12, 18, 3, padding=1, groups=3)  # 4 in, 6 out channels per group
        self.head = nn.Linear(18, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.head(torch.relu(self.widen(x)).mean((2, 3)))


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
    return model.eval()


def test_grouped_conv_units_are_one_channel_of_every_conv_group():
    torch.manual_seed(0)
    model = _randomise_bn(GroupedNet())
    x = torch.randn(6, 3, 8, 8)
    units = xprune.discover(model, x[:1])
    sizes = {g.name: g.size for g in units}
    # 12 stem channels reach widen's 3 groups of 4 inputs: one unit = channel j of each of them
    assert sizes == {"stem.0": 4, "reduce.0": 4, "grouped.0": 4, "widen": 6}  # widen: 6 outputs per group
    assert units["reduce.0"].units_of("reduce.0", 8).tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for crit in ("taylor", "weight", "activation"):
        scores = xprune.score(model, (x, torch.arange(6) % 5), crit, units)
        assert all(torch.isfinite(scores[n]).all() and scores[n].numel() == sizes[n] for n in sizes)
    plan = xprune.select(scores, 0.5, scope="local")
    assert all(plan.remove[n] for n in sizes)
    removed = assert_remove_equals_mask(model, plan, x)
    assert removed.grouped[0].groups == 2 and removed.grouped[0].weight.shape[:2] == (4, 2)
    assert removed.widen.groups == 3 and removed.widen.in_channels == 6
    with torch.no_grad():
        removed(torch.randn(2, 3, 8, 8))  # runs on new inputs too
    # what masking zeroed is exactly what removal dropped
    zeroed = sum(int((p == 0).sum()) for p in xprune.apply(model, plan, "mask").parameters())

    def n(m):
        return sum(p.numel() for p in m.parameters())

    assert n(removed) == n(model) - zeroed


def test_per_channel_plan_for_a_grouped_conv_fits_only_when_even():
    model = _randomise_bn(GroupedNet())
    x = torch.randn(2, 3, 8, 8)
    units = xprune.discover(model, x[:1])
    base = xprune.select(xprune.score(model, None, "random", units=units), 0.0)

    def per_channel(idxs, size=8):  # a plan in channel indices (size 8), as a hand-made or older plan would be
        return xprune.Plan(
            "channels",
            {**base.remove, "reduce.0": idxs},
            {**base.sizes, "reduce.0": size},
            base.members,
            base.roots,
            base.example,
        )

    for mode in ("remove", "mask"):
        with pytest.raises(XpruneError, match=r"reduce\.0.*blocks.*j \+ k\*4"):
            xprune.apply(model, per_channel([1]), mode)
    assert_remove_equals_mask(model, per_channel([1, 5]), x)  # channel 1 of both conv groups
    with pytest.raises(XpruneError, match=r"reduce\.0.*does not fit"):
        xprune.apply(model, per_channel([1], size=3), "remove")


def tiny_regnet():
    cfg = transformers.RegNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        groups_width=8,
        layer_type="y",
        num_labels=5,
    )
    torch.manual_seed(0)
    return _randomise_bn(transformers.RegNetForImageClassification(cfg))


@pytest.mark.parametrize("criterion", ["taylor", "activation", "weight"])
def test_regnet_grouped_convs_score_mask_and_remove(criterion):
    model = tiny_regnet()
    x = torch.randn(4, 3, 64, 64)
    units = xprune.discover(model, x[:1])
    grouped = "regnet.encoder.stages.1.layers.0.layer.1.convolution"  # 32 channels, 4 groups of 8
    assert units[grouped].size == 8 and units["regnet.encoder.stages.1.layers.0.layer.0.convolution"].size == 8
    scores = xprune.score(model, (x, torch.arange(4) % 5), criterion, units)
    assert all(torch.isfinite(scores[n]).all() for n in scores)
    plan = xprune.select(scores, 0.3, scope="local")
    assert plan.remove[grouped]
    removed = assert_remove_equals_mask(model, plan, x)
    conv = removed.get_submodule(grouped)
    assert conv.groups == 4 and conv.out_channels == 4 * (8 - len(plan.remove[grouped]))
    assert inexact_masks(model, scores) == {}  # BatchNorm only: masking is removal


def tiny_convnext(v2=False):
    torch.manual_seed(0)
    kw = dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, patch_size=4, num_labels=5)
    if v2:
        model = transformers.ConvNextV2ForImageClassification(transformers.ConvNextV2Config(**kw))
        for name, p in model.named_parameters():  # the GRN starts at zero, which would hide its mean over channels
            if p.dim() > 1 or "grn" in name:
                p.data.normal_(0, 0.5 if p.dim() > 1 else 1.0)
        return model.eval()
    return transformers.ConvNextForImageClassification(transformers.ConvNextConfig(**kw)).eval()


def test_convnext_masking_is_refused_and_curve_measures_removal():
    model = tiny_convnext()
    x = torch.randn(24, 3, 32, 32)
    with torch.no_grad():
        y = _logits(model(x)).argmax(1)  # the model's own predictions: pruning changes them
    ref, test = (x[:8], y[:8]), (x[8:], y[8:])
    scores = xprune.score(model, ref, "taylor")
    bad = inexact_masks(model, scores)
    stem = "convnext.embeddings.patch_embeddings"
    assert "convnext.embeddings.layernorm" in bad[stem]
    assert "convnext.encoder.stages.0.layers.0.pwconv1" not in bad  # nothing reads across the 4x MLP channels
    plan = xprune.select(scores, 0.3)
    with pytest.raises(XpruneError, match=r"convnext\.\S*layernorm \(\w*LayerNorm normalises.*mode='remove'") as err:
        xprune.apply(model, plan, "mask")
    assert "\n" not in str(err.value)
    removed, masked = xprune.apply(model, plan, "remove"), xprune.apply(model, plan, "mask", exact=False)
    with torch.no_grad():
        assert (_logits(removed(x)) - _logits(masked(x))).abs().max() > 1e-3  # what the refusal prevents
    rates = [0.0, 0.2, 0.4]
    by_mask = xprune.evaluate.curve(model, ref, test, scores=scores, rates=rates, mode="mask")
    by_removal = xprune.evaluate.curve(model, ref, test, scores=scores, rates=rates, mode="remove")
    assert by_mask.accuracies == by_removal.accuracies
    # a rate whose plan touches a group that masking cannot stand for is pruned physically, the others masked
    touches = [any(v and k in bad for k, v in xprune.select(scores, r).remove.items()) for r in rates[1:]]
    assert touches[-1] and by_mask.meta["modes"] == [None] + ["remove" if t else "mask" for t in touches]
    assert by_mask.meta["mode"] == ("remove" if all(touches) else "mask+remove")
    assert "convnext.embeddings.layernorm" in by_mask.meta["inexact_mask"]
    for r, acc in zip(rates, by_mask.accuracies, strict=True):
        expected = accuracy(xprune.apply(model, xprune.select(scores, r), "remove"), test)
        assert acc == expected


def test_convnext_v2_grn_mean_over_channels_is_detected():
    model = tiny_convnext(v2=True)
    x = torch.randn(2, 3, 32, 32)
    units = xprune.discover(model, x[:1])
    mlp = "convnextv2.encoder.stages.0.layers.0.pwconv1"
    bad = inexact_masks(model, units)
    assert bad[mlp] == [f"mean after {mlp}"]  # the GRN's global_features.mean(dim=-1)
    scores = xprune.score(model, None, "random", units=units)
    plan = xprune.select(scores, 0.0)
    plan.remove[mlp] = [1, 2]
    with pytest.raises(XpruneError, match=f"mean after {mlp}"):
        xprune.apply(model, plan, "mask")
    removed, masked = xprune.apply(model, plan, "remove"), xprune.apply(model, plan, "mask", exact=False)
    with torch.no_grad():
        assert (removed(x).logits - masked(x).logits).abs().max() > 1e-4


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.out = nn.Conv2d(8, 6, 3, padding=1)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(torch.relu(self.out(torch.relu(self.norm(self.conv(x))))).mean((2, 3)))


def test_groupnorm_units_are_mirrored_and_masking_is_refused():
    torch.manual_seed(0)
    model = GroupNormNet().eval()
    x = torch.randn(4, 3, 8, 8)
    units = xprune.discover(model, x[:1])
    assert units["conv"].size == 4  # channel j of both norm groups
    assert inexact_masks(model, units) == {"conv": ["norm"]}
    scores = xprune.score(model, None, "random", units=units)
    plan = xprune.select(scores, 0.0)
    plan.remove["conv"] = [0, 3]
    with pytest.raises(XpruneError, match=r"norm \(GroupNorm normalises over 4 channels per group\).*mode='remove'"):
        xprune.apply(model, plan, "mask")
    removed = xprune.apply(model, plan, "remove")
    assert removed.norm.num_channels == 4 and removed.norm.num_groups == 2
    with torch.no_grad():
        assert (removed(x) - xprune.apply(model, plan, "mask", exact=False)(x)).abs().max() > 1e-4
    plan.remove = {"conv": [], "out": [1, 2]}  # a group without the norm: masking is exact
    assert inexact_masks(model, plan) == {}
    assert_remove_equals_mask(model, plan, x)


def test_choose_rate_and_tune_evaluator_measure_removal_on_convnext():
    from xprune.guarantee import choose_rate
    from xprune.tune import _Evaluator

    model = tiny_convnext()
    x = torch.randn(28, 3, 32, 32)
    with torch.no_grad():
        y = _logits(model(x)).argmax(1)
    ref, cal = (x[:8], y[:8]), (x[8:], y[8:])
    scores = xprune.score(model, ref, "taylor")
    rates = [0.0, 0.3]
    choice = choose_rate(model, None, cal, scores=scores, rates=rates, max_drop=0.5, confidence=0.5)
    assert choice.meta["mode"] == "remove" and choice.meta["modes"] == [None, "remove"]
    expected = accuracy(xprune.apply(model, xprune.select(scores, 0.3), "remove"), cal)
    assert choice.accuracies[1] == pytest.approx(expected)

    ev = _Evaluator(model, ref, cal, "channels", None, rates)
    assert "convnext.embeddings.patch_embeddings" in ev.inexact
    got = dict(ev.accuracies(scores))
    assert got[0.3] == pytest.approx(expected) and set(ev.modes.values()) == {"remove"}


def test_evaluator_keeps_the_masking_fast_path_where_exact():
    from xprune.tune import _Evaluator

    torch.manual_seed(0)
    model = _randomise_bn(GroupedNet())
    x = torch.randn(20, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    ref, val = (x[:6], y[:6]), (x[6:], y[6:])
    ev = _Evaluator(model, ref, val, "channels", None, [0.0, 0.5])
    scores = xprune.score(model, ref, "taylor", ev.units)
    got = dict(ev.accuracies(scores))
    assert ev.inexact == {} and set(ev.modes.values()) == {"mask"}
    assert got[0.5] == accuracy(xprune.apply(model, xprune.select(scores, 0.5), "remove"), val)
