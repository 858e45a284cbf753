"""Rules, composites, resolvers, errors, weight relevance and heatmaps of xprune.lrp."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from _lrp_models import TinyResNet, TinyVGG, dense_layers, inputs, make, single_thread
from xprune import lrp
from xprune.errors import XpruneError

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


@pytest.mark.parametrize(
    "spec, cls, params",
    [
        ("z+", lrp.ZPlus, {}),
        ("ZPlus", lrp.ZPlus, {}),
        ("alpha2-beta1", lrp.AlphaBeta, {"alpha": 2.0, "beta": 1.0}),
        ("alpha1_beta0", lrp.ZPlus, {}),
        (("gamma", {"gamma": 0.5}), lrp.Gamma, {"gamma": 0.5}),
        ("w_square", lrp.WSquare, {}),
        ("identity", lrp.Pass, {}),
        ("winner-take-all", lrp.Gradient, {}),
        (("z-box", {"low": 0, "high": 1}), lrp.ZBox, {"low": 0, "high": 1}),
    ],
)
def test_make_rule_spellings(spec, cls, params):
    rule = lrp.make_rule(spec)
    assert type(rule) is cls
    for k, v in params.items():
        assert getattr(rule, k) == v


def test_errors_name_the_known_choices():
    with pytest.raises(XpruneError, match=r"known rules: .*epsilon.*gamma"):
        lrp.make_rule("epsilonn")
    with pytest.raises(XpruneError, match="signature"):
        lrp.make_rule(("gamma", {"gama": 1}))
    with pytest.raises(XpruneError, match="alpha - beta = 1"):
        lrp.make_rule(("alpha-beta", {"alpha": 2, "beta": 2}))
    with pytest.raises(XpruneError, match="known composites: epsilon-plus"):
        lrp.composite("epsilon-pluss")
    with pytest.raises(XpruneError, match=r"low=.*high="):
        lrp.composite("epsilon-gamma-box")
    with pytest.raises(XpruneError, match="unknown layer groups"):
        lrp.composite({"lowish": "zplus"})
    with pytest.raises(XpruneError, match="start"):
        lrp.start_seed(torch.ones(2, 3), 0, start="one")
    model = make(TinyVGG)
    with pytest.raises(XpruneError, match="no module"):
        lrp.relevance(model, inputs(TinyVGG), 0, layers=["conv9"])
    with pytest.raises(XpruneError, match="first layer"):  # a carrier rule away from the input
        lrp.relevance(model, inputs(TinyVGG), 0, lrp.Composite({"conv": "flat"}))


def test_composite_precedence():
    model = make(TinyVGG)
    comp = lrp.Composite(
        {"conv": "zplus", "linear": "epsilon"}, name_map={"conv3": "gamma"}, first_map={"conv": "flat"}
    )
    rules = comp.assign(model)
    assert type(rules["conv1"]) is lrp.Flat
    assert type(rules["conv2"]) is lrp.ZPlus
    assert type(rules["conv3"]) is lrp.Gamma
    assert type(rules["fc1"]) is lrp.Epsilon
    assert type(rules["pool2"]) is lrp.Norm and type(rules["relu1"]) is lrp.Pass
    assert "pool1" not in rules  # max pooling: plain gradient (winner-take-all)


def test_group_composite_default_groups_and_overrides():
    model = make(TinyResNet)
    groups = lrp.conv_groups(model)
    assert groups == {
        "low": ["stem", "layer1.conv1"],
        "mid": ["layer1.conv2", "layer2.conv1"],
        "high": ["layer2.conv2", "layer2.short.0"],
        "fc": ["fc"],
    }
    spec = {
        "low": ("gamma", {"gamma": 0.25}),
        "mid": "alpha2-beta1",
        "high": "zplus",
        "fc": ("epsilon", {"epsilon": 1e-6}),
    }
    rules = lrp.composite(spec).assign(model)
    assert [type(rules[n]).__name__ for n in ["stem", "layer1.conv2", "layer2.short.0", "fc"]] == [
        "Gamma", "AlphaBeta", "ZPlus", "Epsilon",
    ]  # fmt: skip
    assert rules["stem"].gamma == 0.25 and type(rules["layer1.add"]) is lrp.Norm
    # 'first' key and explicit groups
    rules = lrp.composite({**spec, "first": "flat"}).assign(model)
    assert type(rules["stem"]) is lrp.Flat and type(rules["layer1.conv1"]) is lrp.Gamma
    custom = lrp.composite({"a": "zplus", "b": "epsilon"}, groups={"a": ["stem"], "b": ["fc"]}).assign(model)
    assert type(custom["stem"]) is lrp.ZPlus and type(custom["fc"]) is lrp.Epsilon and "layer1.conv1" not in custom
    with pytest.raises(XpruneError, match="two layer groups"):
        lrp.composite({"a": "zplus"}, groups={"a": ["stem"], "b": ["stem"]}).assign(model)
    # callable groups
    rules = lrp.composite({"x": "gamma"}, groups=lambda m: {"x": ["fc"]}).assign(model)
    assert type(rules["fc"]) is lrp.Gamma


def test_explain_defaults_to_predicted_class():
    model = make(TinyVGG)
    x = inputs(TinyVGG)
    with torch.no_grad():
        pred = model(x).argmax(-1)
    torch.testing.assert_close(lrp.explain(model, x), lrp.explain(model, x, target=pred))
    # the logit start scales every sample's relevance by its logit
    with torch.no_grad():
        logit = model(x)[torch.arange(len(x)), pred]
    torch.testing.assert_close(
        lrp.explain(model, x, start="logit"), lrp.explain(model, x) * logit.view(-1, 1, 1, 1), rtol=1e-9, atol=1e-12
    )


def test_relevance_with_float_target_as_start_relevance():
    model = make(TinyVGG)
    x = inputs(TinyVGG)
    start = torch.zeros(len(x), 5, dtype=torch.float64)
    start[:, 2] = 1.0
    start[:, 4] = -0.5
    r, _ = lrp.relevance(model, x, start)
    expected = lrp.explain(model, x, target=2) - 0.5 * lrp.explain(model, x, target=4)  # LRP is linear in its start
    torch.testing.assert_close(r, expected)


def test_relevance_at_any_layer_by_hand_matches_api():
    model = make(TinyResNet)
    x = inputs(TinyResNet)
    _, api = lrp.relevance(model, x, 1, "epsilon-plus", ["layer1.conv1", "layer1.relu1"])
    with lrp.attribution(model, "epsilon-plus") as attr:
        store = attr.tap(["layer1.conv1", "layer1.relu1"])
        xx = x.clone().requires_grad_()
        out = model(xx)
        acts = [store["layer1.conv1"][0], store["layer1.relu1"][0]]
        g = torch.autograd.grad(out, acts, lrp.start_seed(out, 1))
    torch.testing.assert_close(api["layer1.conv1"], acts[0].detach() * g[0])
    torch.testing.assert_close(api["layer1.relu1"], acts[1].detach() * g[1])


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box", "epsilon"])
def test_weight_relevance_sums_to_layer_relevance(name):
    model = make(TinyVGG, bias=False, centred=True)
    x = inputs(TinyVGG)
    kw = {"stabilizer": 1e-12, "epsilon": 1e-12}
    if name == "epsilon-gamma-box":
        kw.update(low=-1.0, high=1.0)
    comp = lrp.composite(name, **kw)
    layers = dense_layers(model)
    w_rel = lrp.weight_relevance(model, x, 0, comp)
    _, r = lrp.relevance(model, x, 0, comp, layers)
    for n in layers:
        assert w_rel[n].shape == dict(model.named_modules())[n].weight.shape
        if name == "epsilon-alpha2-beta1" and n.startswith("conv"):
            continue  # alpha-beta is not conservative (see test_lrp_conservation)
        torch.testing.assert_close(w_rel[n].sum(), r[n].sum(), rtol=1e-6, atol=1e-12)


def test_weight_relevance_of_linear_layer_explicit():
    model = make(TinyVGG)
    x = inputs(TinyVGG)
    w_rel = lrp.weight_relevance(model, x, 3, "epsilon-plus", layers=["fc2"])
    assert list(w_rel) == ["fc2"]
    feats = {}
    h = model.relu5.register_forward_hook(lambda m, a, o: feats.__setitem__("a", o.detach()))
    with torch.no_grad():
        z = model(x)
    h.remove()
    a, w = feats["a"], model.fc2.weight.detach()
    share = torch.zeros_like(z)
    share[:, 3] = 1.0 / (z[:, 3] + 1e-6 * torch.sign(z[:, 3]))  # R_i / stab(z_i) with R = one-hot
    expected = torch.einsum("ni,nj->ij", share, a) * w
    torch.testing.assert_close(w_rel["fc2"], expected)


def test_save_heatmap(tmp_path):
    model = make(TinyVGG)
    r = lrp.explain(model, inputs(TinyVGG, n=1))
    arr = lrp.save_heatmap(r, tmp_path / "h.png")
    assert (tmp_path / "h.png").stat().st_size > 0
    assert arr.shape == (8, 8)
    torch.testing.assert_close(torch.as_tensor(arr), r[0].sum(0))
    with pytest.raises(XpruneError, match="one sample"):
        lrp.save_heatmap(torch.zeros(2, 3, 4, 4), tmp_path / "x.png")


def test_works_under_no_grad_and_float32():
    model = make(TinyResNet, dtype=torch.float32)
    x = inputs(TinyResNet, dtype=torch.float32)
    with torch.no_grad():
        r = lrp.explain(model, x, composite="epsilon-alpha2-beta1")
    assert r.dtype == torch.float32 and torch.isfinite(r).all() and r.abs().sum() > 0


def test_rule_seam_custom_rule():
    class HalfPass(lrp.Rule):
        """Toy element-wise rule: R_in = R_out / 2 (gradient y / (2 x))."""

        name = "half-pass"

        def __call__(self, call):
            x, y = call.input.detach(), call.output.detach()
            return lrp.rules.reroute(call.output, [(call.input, 0.5 * y / x)])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Tanh(), nn.Linear(4, 2, bias=False)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    comp = lrp.Composite({"linear": "gradient", nn.Tanh: HalfPass()})
    r, layers = lrp.relevance(model, x, 0, comp, ["0", "1"], start="logit")
    with torch.no_grad():
        logit = model(x)[:, 0]
    torch.testing.assert_close(layers["1"].sum(1), logit)
    torch.testing.assert_close(layers["0"].sum(1), 0.5 * logit)
    torch.testing.assert_close(r.sum(1), 0.5 * logit)
