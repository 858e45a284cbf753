"""xprune.lrp against zennit 0.5.1: every rule and preset, input and layer relevance, float64."""

from __future__ import annotations

import pytest
import torch

from _lrp_models import TinyConv1d, TinyMLP, TinyResNet, TinyVGG, add_layers, dense_layers, inputs, make, single_thread
from _zennit_oracle import preset, rule_composite, zennit_relevance, zr
from xprune import lrp

MODELS = [TinyVGG, TinyResNet]

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)


def assert_rel_close(ours, theirs, what, rtol=1e-5):
    scale = theirs.abs().max().item() or 1.0
    err = (ours - theirs).abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g} vs scale {scale:.3g}"


def compare(cls, ours_composite, zennit_composite, canonize=True, seed=0):
    model = make(cls, seed=seed)
    x = inputs(cls)
    with torch.no_grad():
        target = model(x).argmax(-1)
    layers = dense_layers(model) + add_layers(model)
    canonizers = None if canonize else []
    r_in, r_layers = lrp.relevance(model, x, target, ours_composite, layers, canonizers=canonizers)
    z_in, z_layers = zennit_relevance(model, x, target, zennit_composite, layers, canonize=canonize)
    assert_rel_close(r_in, z_in, f"{cls.__name__} input")
    for n in layers:
        assert_rel_close(r_layers[n], z_layers[n], f"{cls.__name__} layer {n}")
    return r_in, z_in


# rule name -> (our conv rule, our linear rule, zennit conv rule, zennit linear rule)
RULES = {
    "epsilon": (("epsilon", {"epsilon": 1e-2}), ("epsilon", {"epsilon": 1e-2}),
                zr.Epsilon(epsilon=1e-2), zr.Epsilon(epsilon=1e-2)),
    "epsilon-zero-bias": (("epsilon", {"epsilon": 1e-3, "zero_bias": True}), "epsilon",
                          zr.Epsilon(epsilon=1e-3, zero_params=["bias"]), zr.Epsilon()),
    "zplus": ("zplus", "zplus", zr.ZPlus(), zr.ZPlus()),
    "alpha2-beta1": ("alpha2-beta1", "alpha2-beta1", zr.AlphaBeta(2, 1), zr.AlphaBeta(2, 1)),
    "alpha3-beta2": (("alpha-beta", {"alpha": 3, "beta": 2}), "epsilon", zr.AlphaBeta(3, 2), zr.Epsilon()),
    "alpha1-beta0-zero-bias": (("alpha-beta", {"alpha": 1, "beta": 0, "zero_bias": True}), "epsilon",
                               zr.AlphaBeta(1, 0, zero_params=["bias"]), zr.Epsilon()),
    "gamma": (("gamma", {"gamma": 0.25}), ("gamma", {"gamma": 0.5}), zr.Gamma(gamma=0.25), zr.Gamma(gamma=0.5)),
    "gamma-zero-bias": (("gamma", {"gamma": 1.0, "zero_bias": True}), "epsilon",
                        zr.Gamma(gamma=1.0, zero_params=["bias"]), zr.Epsilon()),
    # our gradient rule is LRP-0 (gradient x input), i.e. zennit's epsilon rule with epsilon = 0
    "gradient": ("gradient", "gradient", zr.Epsilon(epsilon=0.0), zr.Epsilon(epsilon=0.0)),
}  # fmt: skip


@pytest.mark.parametrize("cls", [*MODELS, TinyConv1d])
@pytest.mark.parametrize("rule", list(RULES))
def test_rule_matches_zennit(cls, rule):
    ours_conv, ours_lin, z_conv, z_lin = RULES[rule]
    ours = lrp.Composite({"conv": ours_conv, "linear": ours_lin})
    compare(cls, ours, rule_composite(z_conv, z_lin))


# first-layer rules (input relevance carried by ones / box bounds)
FIRST = {
    "flat": ("flat", zr.Flat()),
    "w-square": ("w-square", zr.WSquare()),
    "z-box": (("z-box", {"low": -1.0, "high": 1.0}), zr.ZBox(low=-1.0, high=1.0)),
}


@pytest.mark.parametrize("cls", [*MODELS, TinyMLP])
@pytest.mark.parametrize("rule", list(FIRST))
def test_first_layer_rule_matches_zennit(cls, rule):
    ours_rule, z_rule = FIRST[rule]
    ours = lrp.Composite({"conv": "zplus", "linear": "epsilon"}, first_map={"dense": ours_rule})
    theirs = rule_composite(zr.ZPlus(), zr.Epsilon(), first_rule=z_rule)
    compare(cls, ours, theirs)


def test_zbox_tensor_bounds_match_zennit():
    low = torch.full((1, 3, 1, 1), -1.0, dtype=torch.float64) - torch.tensor([0.0, 0.1, 0.2]).view(1, 3, 1, 1)
    high = -low
    ours = lrp.composite("epsilon-gamma-box", low=low, high=high)
    compare(TinyVGG, ours, preset("epsilon-gamma-box", low=low, high=high))


PRESET_KWARGS = {"epsilon-gamma-box": {"low": -1.0, "high": 1.0}}


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(
    "name",
    ["epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"],
)
def test_preset_matches_zennit(cls, name):
    kwargs = PRESET_KWARGS.get(name, {})
    compare(cls, lrp.composite(name, **kwargs), preset(name, **kwargs))


def test_preset_without_canonizers_matches_zennit():
    # BatchNorm kept as a layer: pass rule in both
    compare(TinyResNet, lrp.composite("epsilon-plus"), preset("epsilon-plus"), canonize=False)


def test_pass_rule_on_smooth_activations_matches_zennit():
    # TinyMLP: Tanh / SiLU, whose gradient is not the identity rule
    ours = lrp.Composite({"linear": "epsilon"})
    theirs = rule_composite(zr.ZPlus(), zr.Epsilon())
    compare(TinyMLP, ours, theirs)


def test_group_composite_matches_zennit_name_map():
    from _zennit_oracle import layer_map_base, zcomp

    model = make(TinyResNet)
    spec = {
        "low": ("gamma", {"gamma": 0.25}),
        "mid": "alpha2-beta1",
        "high": "zplus",
        "fc": ("epsilon", {"epsilon": 1e-6}),
    }
    ours = lrp.composite(spec)
    groups = lrp.conv_groups(model)
    z_rules = {"low": zr.Gamma(gamma=0.25), "mid": zr.AlphaBeta(2, 1), "high": zr.ZPlus(), "fc": zr.Epsilon(1e-6)}
    theirs = zcomp.MixedComposite(
        [
            zcomp.NameMapComposite([(tuple(groups[g]), z_rules[g]) for g in groups]),
            zcomp.LayerMapComposite(layer_map_base()),
        ]
    )
    compare(TinyResNet, ours, theirs)


def test_float32_close_to_zennit():
    model = make(TinyVGG, dtype=torch.float32)
    x = inputs(TinyVGG, dtype=torch.float32)
    target = torch.zeros(len(x), dtype=torch.long)
    r, _ = lrp.relevance(model, x, target, "epsilon-alpha2-beta1")
    z, _ = zennit_relevance(model, x, target, preset("epsilon-alpha2-beta1"))
    assert_rel_close(r, z, "float32 input", rtol=1e-4)
