"""LRP on Hugging Face vision models built from tiny configs (issue 17): finite scores, conservation, zennit."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from torch import nn

import xprune
from _lrp_models import single_thread
from xprune import lrp

T = pytest.importorskip("transformers")

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
TIGHT = {"epsilon": 1e-30, "stabilizer": 1e-30}


class Logits(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.m = model

    def forward(self, x):
        return self.m(pixel_values=x).logits


def build(name):
    torch.manual_seed(0)
    if name == "efficientnet":  # B0 layout at a tenth of the width and depth
        cfg = T.EfficientNetConfig(
            image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, num_labels=3
        )
        return T.EfficientNetForImageClassification(cfg)
    if name in ("regnet-y", "regnet-x"):  # grouped 3x3 convs (group width 8), squeeze-excitation in "y"
        cfg = T.RegNetConfig(
            embedding_size=8,
            hidden_sizes=[16, 24, 32, 48],
            depths=[1, 1, 2, 1],
            groups_width=8,
            layer_type=name[-1],
            num_labels=3,
        )
        return T.RegNetForImageClassification(cfg)
    if name == "convnext":
        return T.ConvNextForImageClassification(
            T.ConvNextConfig(
                hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], layer_scale_init_value=0.5, num_labels=3
            )
        )
    if name == "convnextv2":
        return T.ConvNextV2ForImageClassification(
            T.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1], num_labels=3)
        )
    if name == "swin":
        return T.SwinForImageClassification(
            T.SwinConfig(
                image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4], window_size=4, num_labels=3
            )
        )
    if name == "deit":
        return T.DeiTForImageClassification(
            T.DeiTConfig(
                image_size=32,
                patch_size=8,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=37,
                num_labels=3,
            )
        )
    raise ValueError(name)


def reinit(model, seed=0):
    """Weights at a usable scale (Hugging Face's init makes these tiny models' activations underflow) and no biases.

    Without biases (and with BatchNorm centred) every rule used below conserves relevance exactly.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if type(m).__name__.endswith("GRN"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
            for name, p in m.named_parameters(recurse=False):
                if name == "bias":
                    p.zero_()
    return Logits(model).double().eval()


def data(n=3, size=32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


@pytest.mark.parametrize("name", ["efficientnet", "regnet-y", "convnext", "convnextv2"])
def test_channel_scores_are_finite(name):
    """Hugging Face's own random init (activations underflow in EfficientNet: it gave NaN/Inf scores)."""
    model = build(name).eval()
    x, y = data()
    for composite in ("epsilon-plus", "epsilon-alpha2-beta1"):
        s = xprune.score(model, (x, y), "lrp", composite=composite)
        assert all(torch.isfinite(v).all() for v in s.values())


@pytest.mark.parametrize("name", ["efficientnet", "regnet-y", "regnet-x", "convnext", "convnextv2"])
def test_conservation(name):
    """epsilon -> 0 without biases: the input relevance is the logit (SiLU/GELU pass, SE products, LayerNorm/GRN
    statistics, depthwise and grouped convs, padding inside modules, BatchNorm merged)."""
    model = reinit(build(name))
    x, _ = data(2)
    x = x.double()
    # RegNet's SE has a ReLU before the gate: a gate logit of exactly 0 would keep what the uniform rule sends it
    share = "signal" if name == "regnet-y" else "uniform"
    comp = lrp.composite("epsilon", **TIGHT, layer_map={nn.Sigmoid: ("gate", {"share": share})})
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(-1)
    r, _ = lrp.relevance(model, x, target, comp, start="logit")
    torch.testing.assert_close(r.sum((1, 2, 3)), logits[torch.arange(2), target], rtol=1e-8, atol=0)


def test_squeeze_excitation_gets_the_uniform_rule():
    model = reinit(build("efficientnet"))
    x, _ = data(2)
    se = "m.efficientnet.encoder.blocks.1.squeeze_excite"
    _, r = lrp.relevance(model, x.double(), 0, lrp.composite("epsilon", **TIGHT), [se, se + ".act_expand"])
    torch.testing.assert_close(r[se + ".act_expand"].sum((1, 2, 3)), r[se].sum((1, 2, 3)) / 2, rtol=1e-8, atol=0)


def dense_twin(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose grouped convs are dense convs with block-diagonal weights (the same map)."""
    import copy

    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for child_name, conv in list(parent.named_children()):
            if not (isinstance(conv, nn.Conv2d) and conv.groups > 1):
                continue
            dense = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,  # type: ignore[arg-type]  # Conv2d sizes are 2-tuples
                conv.stride,  # type: ignore[arg-type]  # 2-tuples
                conv.padding,  # type: ignore[arg-type]  # 2-tuples (or a padding mode string)
                conv.dilation,  # type: ignore[arg-type]  # 2-tuples
                1,
                conv.bias is not None,
            ).to(conv.weight)
            cin, cout = conv.in_channels // conv.groups, conv.out_channels // conv.groups
            with torch.no_grad():
                dense.weight.zero_()
                for g in range(conv.groups):
                    dense.weight[g * cout : (g + 1) * cout, g * cin : (g + 1) * cin] = conv.weight[
                        g * cout : (g + 1) * cout
                    ]
                if conv.bias is not None and dense.bias is not None:
                    dense.bias.copy_(conv.bias)
            setattr(parent, child_name, dense)
    return twin


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
def test_grouped_convs_equal_dense_block_diagonal_convs(composite):
    """RegNet-X: every rule sees a grouped conv as the dense conv with zeros off the group blocks.

    (zennit is no oracle here: it passes the full relevance to both summands of Hugging Face's functional
    residual sums; its comparison on grouped convs in residual blocks is in test_lrp_modules.)
    """
    model = reinit(build("regnet-x"))
    with torch.no_grad():  # biases back in, so that the bias terms of the rules count too
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.2)
    twin = dense_twin(model)
    x, _ = data(2)
    x = x.double()
    grouped = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and all(dict(twin.named_modules())[n].groups == 1 for n in grouped)
    comp = (composite, {"low": -5.0, "high": 5.0}) if composite == "epsilon-gamma-box" else composite
    with torch.no_grad():
        target = model(x).argmax(-1)
    ours, ours_l = lrp.relevance(model, x, target, comp, grouped)
    ref, ref_l = lrp.relevance(twin, x, target, comp, grouped)
    for a, b, what in [(ours, ref, "input"), *[(ours_l[n], ref_l[n], n) for n in grouped]]:
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert err <= 1e-9 * scale, f"{what}: {err:.3g} vs {scale:.3g}"


@pytest.mark.parametrize("name", ["swin", "deit"])
@pytest.mark.parametrize("units", ["heads", "neurons"])
def test_transformer_heads_and_neurons_are_finite(name, units):
    model = build(name).eval()
    x, y = data()
    s = xprune.score(model, (x, y), "lrp", units)
    assert s and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in s.values())
