"""LRP through modules users bring (issue 17): own forwards, parametrizations, reuse, gates, norms, HF models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xprune
from _lrp_models import single_thread
from xprune import lrp
from xprune.errors import XpruneError

_one_thread = pytest.fixture(autouse=True, scope="module")(single_thread)
TIGHT = {"epsilon": 1e-30, "stabilizer": 1e-30}


def _inputs(*shape, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) * 2 - 1).to(dtype)


def _close(a, b, what, rtol=1e-9):
    scale = b.abs().max().item() or 1.0
    err = (a - b).abs().max().item()
    assert err <= rtol * scale, f"{what}: max abs diff {err:.3g} vs scale {scale:.3g}"


def _rel(model, x, composite, layers=(), canonizers=None, target=None):
    with torch.no_grad():
        target = model(x).argmax(-1) if target is None else target
    return lrp.relevance(model, x, target, composite, list(layers), canonizers=canonizers)


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.double().eval()


# ----------------------------------------------------------------------------- modules with their own forward


class SameConv2d(nn.Conv2d):
    """TensorFlow-"same" port: pads inside forward (asymmetrically when needed), then convolves unpadded."""

    def forward(self, x):
        pads = []
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class PadNet(nn.Module):
    """pad? -> conv1 -> BN -> ReLU6 -> pad? -> conv2 -> BN -> ReLU6 -> pool -> fc.

    ``custom``: the convs pad inside their forward and ONE ReLU6 module is used twice;
    otherwise explicit ZeroPad2d modules, plain convs and two ReLU6 modules (same parameter names).
    """

    def __init__(self, custom: bool):
        super().__init__()
        conv = SameConv2d if custom else nn.Conv2d
        self.pad1 = nn.Identity() if custom else nn.ZeroPad2d((0, 1, 0, 1))  # k=3, s=2 on 8x8: "same" = (0, 1)
        self.conv1 = conv(3, 6, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(6)
        self.act = nn.ReLU6()
        self.pad2 = nn.Identity() if custom else nn.ZeroPad2d(1)
        self.conv2 = conv(6, 8, 3)
        self.bn2 = nn.BatchNorm2d(8)
        self.act2 = self.act if custom else nn.ReLU6()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(self.pad1(x))))
        x = self.act2(self.bn2(self.conv2(self.pad2(x))))
        return self.fc(self.pool(x).flatten(1))


def _pad_pair():
    torch.manual_seed(0)
    ref = _randomize(PadNet(custom=False))
    custom = PadNet(custom=True)
    custom.load_state_dict(ref.state_dict())
    return custom.double().eval(), ref


COMPOSITES = ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon",
              lrp.Composite({"conv": ("gamma", {"gamma": 0.25}), "linear": "epsilon"})]  # fmt: skip


@pytest.mark.parametrize("composite", COMPOSITES, ids=["eps-plus", "eps-ab", "eps", "gamma"])
def test_conv_padding_in_forward_equals_explicit_padding(composite):
    custom, ref = _pad_pair()
    x = _inputs(3, 3, 8, 8)
    layers = ["conv1", "conv2", "fc"]
    r_c, l_c = _rel(custom, x, composite, layers)
    r_r, l_r = _rel(ref, x, composite, layers)
    _close(r_c, r_r, "input relevance")
    for n in layers:
        _close(l_c[n], l_r[n], n)


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_conv_padding_in_forward_matches_zennit(name):
    from _zennit_oracle import preset, zennit_relevance

    custom, _ = _pad_pair()
    x = _inputs(3, 3, 8, 8)
    with torch.no_grad():
        target = custom(x).argmax(-1)
    ours, _ = lrp.relevance(custom, x, target, name)
    theirs, _ = zennit_relevance(custom, x, target, preset(name))  # zennit runs module.forward too
    _close(ours, theirs, "input relevance", rtol=1e-6)


class WSConv2d(nn.Conv2d):
    """Weight standardisation inside forward (as in BiT / NFNets)."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, w, self.bias)


def _conv_net(conv1: nn.Module, fc: nn.Module) -> nn.Module:
    return nn.Sequential(conv1, nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), fc).double().eval()


def _plain_like(module: nn.Module, weight: torch.Tensor) -> nn.Module:
    plain = nn.Conv2d(3, 6, 3, padding=1) if weight.dim() == 4 else nn.Linear(weight.shape[1], weight.shape[0])
    plain = plain.double()
    with torch.no_grad():
        plain.weight.copy_(weight)
        plain.bias.copy_(module.bias)  # type: ignore[union-attr, arg-type]  # both layers have a bias here
    return plain


def _weight_norm_conv():
    return nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 6, 3, padding=1))


def _weight_norm_linear():
    return nn.utils.parametrizations.weight_norm(nn.Linear(64, 3))


@pytest.mark.parametrize("make", ["ws-conv", "weight-norm-conv", "weight-norm-linear"])
@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_effective_weight_is_what_rules_modify(make, composite):
    """Standardised / weight-normalised layers give the relevance of plain layers holding their effective weight."""
    torch.manual_seed(0)
    conv, fc = nn.Conv2d(3, 6, 3, padding=1), nn.Linear(64, 3)
    if make == "ws-conv":
        conv = WSConv2d(3, 6, 3, padding=1)
    elif make == "weight-norm-conv":
        conv = _weight_norm_conv()
    else:
        fc = _weight_norm_linear()
    model = _conv_net(conv, fc)
    with torch.no_grad():
        eff_conv = model[0].weight if make != "ws-conv" else _ws(model[0].weight)
        eff_fc = model[5].weight
    ref = _conv_net(_plain_like(model[0], eff_conv), _plain_like(model[5], eff_fc))
    ref[2].load_state_dict(model[2].state_dict())
    x = _inputs(2, 3, 4, 4)
    comp = (
        lrp.Composite({"conv": "zplus", "linear": "alpha2-beta1"}) if composite == "epsilon-alpha2-beta1" else composite
    )
    r, layers = _rel(model, x, comp, ["0", "5"], target=torch.tensor([0, 2]))
    r_ref, layers_ref = _rel(ref, x, comp, ["0", "5"], target=torch.tensor([0, 2]))
    _close(r, r_ref, "input relevance")
    _close(layers["0"], layers_ref["0"], "first layer")


def _ws(w):
    return (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)


def test_fake_quantised_conv_and_quant_stubs():
    from torch.ao.nn import qat
    from torch.ao.quantization import DeQuantStub, QuantStub, get_default_qat_qconfig

    torch.manual_seed(0)
    conv = qat.Conv2d(3, 6, 3, padding=1, qconfig=get_default_qat_qconfig("fbgemm"))
    model = nn.Sequential(QuantStub(), conv, DeQuantStub(), nn.ReLU(), nn.Flatten(), nn.Linear(96, 3)).eval()
    x = _inputs(2, 3, 4, 4, dtype=torch.float32)
    model(x)  # the observer sees the weight once
    with torch.no_grad():
        fq = conv.weight_fake_quant(conv.weight)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(96, 3)).eval()
    with torch.no_grad():
        ref[0].weight.copy_(fq)
        ref[0].bias.copy_(conv.bias)
    ref[3].load_state_dict(model[5].state_dict())
    r, _ = _rel(model, x, "epsilon-plus", target=torch.tensor([1, 2]))
    r_ref, _ = _rel(ref, x, "epsilon-plus", target=torch.tensor([1, 2]))
    torch.testing.assert_close(r, r_ref)


class Shared(nn.Module):
    """One conv and one ReLU6 module called twice (shared weights)."""

    def __init__(self, shared: bool):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU6()
        self.conv_b = self.conv if shared else nn.Conv2d(4, 4, 3, padding=1)
        self.act_b = self.act if shared else nn.ReLU6()
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.act_b(self.conv_b(self.act(self.conv(x)))).flatten(1))


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_module_called_twice_gets_its_rule_on_each_call(composite):
    torch.manual_seed(0)
    shared = Shared(True).double().eval()
    twin = Shared(False).double().eval()
    twin.load_state_dict({**shared.state_dict(), "conv_b.weight": shared.conv.weight, "conv_b.bias": shared.conv.bias})
    x = _inputs(2, 4, 4, 4)
    r, lay = _rel(shared, x, composite, ["conv", "act"])
    r_t, lay_t = _rel(twin, x, composite, ["conv", "conv_b", "act", "act_b"])
    _close(r, r_t, "input relevance")
    _close(lay["conv"], lay_t["conv"] + lay_t["conv_b"], "conv, summed over its calls")
    _close(lay["act"], lay_t["act"] + lay_t["act_b"], "ReLU6, summed over its calls")


class TwiceLinear(nn.Linear):
    def forward(self, x):
        return F.linear(F.linear(x, self.weight), self.weight, self.bias)


class NoConv(nn.Conv2d):
    def forward(self, x):  # the convolution as unfold + matmul: no conv call to put the rule on
        cols = F.unfold(x, self.kernel_size, padding=self.padding)
        out = self.weight.flatten(1) @ cols + self.bias[:, None]
        return out.view(x.shape[0], -1, x.shape[2], x.shape[3])


class ConvThenScale(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias) * 2.0


def test_modules_that_cannot_be_handled_are_named():
    x = _inputs(2, 4, 4, 4)
    model = nn.Sequential(nn.Flatten(), TwiceLinear(64, 64), nn.ReLU(), nn.Linear(64, 3)).double().eval()
    with pytest.raises(XpruneError, match=r"module '1' \(TwiceLinear\) computes linear twice.*name_map"):
        _rel(model, x, "epsilon")
    model = nn.Sequential(NoConv(4, 4, 3, padding=1), nn.Flatten(), nn.Linear(64, 3)).double().eval()
    with pytest.raises(XpruneError, match=r"module '0' \(NoConv\) has its own forward.*no rule"):
        _rel(model, x, "epsilon-plus")
    # a merged BatchNorm needs the layer's output to be its conv's output
    model = _randomize(
        nn.Sequential(ConvThenScale(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))
    )
    with pytest.raises(XpruneError, match=r"'0' has its own forward.*BatchNorm '1' cannot be merged.*canonizers=\[\]"):
        _rel(model, x, "epsilon-plus")
    r, _ = _rel(model, x, "epsilon-plus", canonizers=[])  # the suggested fix works
    assert torch.isfinite(r).all()
    # a conv whose merged BatchNorm follows only one of its two calls
    shared = _randomize(SharedBN())
    with pytest.raises(XpruneError, match=r"'conv' is called again before BatchNorm 'bn'.*canonizers=\[\]"):
        _rel(shared, x, "epsilon-plus")
    # a first-layer carrier rule on a layer that pads inside its forward
    custom, _ = _pad_pair()
    with pytest.raises(XpruneError, match=r"conv1.*changes its input in its own forward.*zplus"):
        _rel(custom, _inputs(2, 3, 8, 8), ("epsilon-gamma-box", {"low": -1.0, "high": 1.0}))


class SharedBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(torch.relu(self.conv(x)))).flatten(1))


# ----------------------------------------------------------------------------- gating products


class SE(nn.Module):
    """Squeeze-excitation ``x * sigmoid(fc(x))``, the product written three ways."""

    def __init__(self, c: int, r: int, how: str):
        super().__init__()
        self.how = how
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(c, r, 1, bias=False)
        self.act = nn.SiLU()
        self.expand = nn.Linear(r, c, bias=False) if how == "view" else nn.Conv2d(r, c, 1, bias=False)
        self.gate = nn.Sigmoid()

    def forward(self, x):
        z = self.act(self.reduce(self.pool(x)))
        if self.how == "view":  # linear excitation, gate reshaped before the product
            s = self.gate(self.expand(z.flatten(1)))
            return torch.mul(x, s.view(x.shape[0], -1, 1, 1))
        s = self.gate(self.expand(z))
        return s * x if self.how == "rmul" else x * s


class SENet(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.act = nn.SiLU()
        self.se = SE(8, 3, how)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4, bias=False)

    def forward(self, x):
        return self.fc(self.pool(self.se(self.act(self.conv(x)))).flatten(1))


def _totals(r):
    return r.reshape(r.shape[0], -1).sum(1)


@pytest.mark.parametrize("how", ["mul", "rmul", "view"])
@pytest.mark.parametrize("share", ["uniform", "signal"])
def test_gating_product_rule_and_conservation(how, share):
    torch.manual_seed(0)
    model = SENet(how).double().eval()
    x = _inputs(3, 3, 6, 6)
    comp = lrp.composite("epsilon", **TIGHT, layer_map={nn.Sigmoid: ("gate", {"share": share})})
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(-1)
    r_in, r = lrp.relevance(model, x, target, comp, ["act", "se", "se.gate", "se.reduce"], start="logit")
    product, gate, signal = _totals(r["se"]), _totals(r["se.gate"]), _totals(r["act"])
    # the stated rule at the product: the gate gets half (uniform) or nothing (signal takes all) ...
    torch.testing.assert_close(
        gate, product / 2 if share == "uniform" else torch.zeros_like(gate), rtol=1e-9, atol=1e-12
    )
    if share == "signal":
        assert r["se.reduce"].abs().max() == 0  # no relevance enters the gate's branch
    # ... and nothing is lost: what the gate got flows back to the signal through the squeeze branch
    torch.testing.assert_close(signal, product, rtol=1e-9, atol=0)
    torch.testing.assert_close(_totals(r_in), logits[torch.arange(3), target], rtol=1e-9, atol=0)


def test_plain_product_without_the_gate_rule_would_double_relevance():
    """The control: without the gate rule, the product passes its full relevance to both factors."""
    torch.manual_seed(0)
    model = SENet("mul").double().eval()
    x = _inputs(3, 3, 6, 6)
    comp = lrp.composite("epsilon", **TIGHT, layer_map={nn.Sigmoid: "pass"})
    _, r = lrp.relevance(model, x, 0, comp, ["se", "se.gate"], start="logit")
    torch.testing.assert_close(_totals(r["se.gate"]), _totals(r["se"]))


def test_underflowing_gate_and_logits_give_finite_relevance():
    """Sigmoid inputs and logits so small (float32 subnormals) that 1/x overflows: finite relevance, no NaN."""
    torch.manual_seed(0)
    model = SENet("mul").eval()
    with torch.no_grad():
        model.se.expand.weight.mul_(1e-38)  # gate logits ~1e-40
        model.fc.weight.mul_(1e-38)  # logits ~1e-39: 1 / logit = inf
    x = _inputs(4, 3, 6, 6, dtype=torch.float32)
    for start in ("onehot", "logit"):
        r, layers = lrp.relevance(model, x, 0, "epsilon-plus", ["conv", "se.reduce"], start=start)
        assert torch.isfinite(r).all() and all(torch.isfinite(t).all() for t in layers.values())
    scores = xprune.score(model, (x, torch.arange(4)), "lrp", normalize=None)
    assert all(torch.isfinite(v).all() for v in scores.values())


# ----------------------------------------------------------------------------- norms


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over dim 1 written by hand (statistics via mean / pow / sqrt), as older ConvNeXt ports do."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - u) / torch.sqrt(s + 1e-6) + self.bias[:, None, None]


class PermutedLayerNorm(nn.LayerNorm):
    """ConvNeXt's channels-first LayerNorm: permute, ``nn.LayerNorm.forward``, permute back."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _reference_ln_relevance(x, weight, eps, r_out):
    """AttnLRP's LayerNorm rule by hand: R_x = x * J^T (R_out / y), J of (x - mean) w / sigma with sigma constant."""
    x = x.detach().requires_grad_(True)
    u = x.mean(1, keepdim=True)
    sigma = torch.sqrt(x.detach().var(1, unbiased=False, keepdim=True) + eps)
    y = weight[:, None, None] * (x - u) / sigma
    (g,) = torch.autograd.grad(y, x, r_out / y.detach())
    return x.detach() * g


@pytest.mark.parametrize("cls", [ChannelsFirstLayerNorm, PermutedLayerNorm])
def test_layernorm_over_channels_gets_the_identity_rule_on_its_statistic(cls):
    torch.manual_seed(0)
    norm = cls(6) if cls is ChannelsFirstLayerNorm else cls(6, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6) + 0.5)
        norm.bias.zero_()
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), norm, nn.Flatten(), nn.Linear(6 * 16, 3, bias=False)
    )
    model = model.double().eval()
    x = _inputs(2, 3, 4, 4)
    _r_in, r = lrp.relevance(model, x, 1, lrp.composite("epsilon", **TIGHT), ["0", "1"], start="logit")
    with torch.no_grad():
        h = model[0](x)
    ref = _reference_ln_relevance(h, norm.weight.detach(), 1e-6, r["1"])
    _close(r["0"], ref, "relevance at the norm's input")
    torch.testing.assert_close(_totals(r["0"]), _totals(r["1"]), rtol=1e-9, atol=0)  # no bias: conserved


def test_group_norm_conserves_and_centres():
    torch.manual_seed(0)
    model = (
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False),
            nn.GroupNorm(2, 8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(8 * 16, 3, bias=False),
        )
        .double()
        .eval()
    )
    nn.init.uniform_(model[1].weight, 0.5, 1.5)
    nn.init.zeros_(model[1].bias)
    x = _inputs(2, 3, 4, 4)
    _r_in, r = lrp.relevance(model, x, 1, lrp.composite("epsilon", **TIGHT), ["0", "1"], start="logit")
    torch.testing.assert_close(_totals(r["0"]), _totals(r["1"]), rtol=1e-9, atol=0)
    # the statistic is a constant: within a group, relevance is the centred input times the output gradient
    g = r["1"] / model[1](model[0](x)).detach()
    h = model[0](x).detach()
    w = model[1].weight.detach()[None, :, None, None]
    sigma = torch.sqrt(h.reshape(2, 2, -1).var(-1, unbiased=False) + model[1].eps)[:, :, None].expand(2, 2, 4 * 16)
    gw = g * w / sigma.reshape(2, 8, 4, 4)
    mean_gw = gw.reshape(2, 2, -1).mean(-1, keepdim=True).expand(2, 2, 64).reshape(2, 8, 4, 4)
    _close(r["0"], h * (gw - mean_gw), "GroupNorm input relevance")


# ----------------------------------------------------------------------------- grouped convolutions


class GroupedBlock(nn.Module):
    """A RegNet-X / ResNeXt block: 1x1 -> grouped 3x3 (groups of 2 channels) -> 1x1, BatchNorms, residual Add."""

    def __init__(self):
        super().__init__()
        from xprune.models.layers import Add

        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.relu0 = nn.ReLU()
        self.a = nn.Conv2d(8, 8, 1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.relu_a = nn.ReLU()
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.relu_b = nn.ReLU()
        self.c = nn.Conv2d(8, 8, 1, bias=False)
        self.bn_c = nn.BatchNorm2d(8)
        self.add = Add()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.relu0(self.bn0(self.stem(x)))
        y = self.relu_b(self.bn_b(self.b(self.relu_a(self.bn_a(self.a(x))))))
        y = self.relu(self.add(self.bn_c(self.c(y)), x))
        return self.fc(self.pool(y).flatten(1))


@pytest.mark.parametrize("name", ["epsilon-plus", "epsilon-alpha2-beta1", "epsilon-gamma-box"])
def test_grouped_conv_block_matches_zennit(name):
    from _zennit_oracle import preset, zennit_relevance

    torch.manual_seed(0)
    model = _randomize(GroupedBlock())
    x = _inputs(3, 3, 6, 6)
    kwargs = {"low": -1.0, "high": 1.0} if name == "epsilon-gamma-box" else {}
    with torch.no_grad():
        target = model(x).argmax(-1)
    layers = ["a", "b", "c", "add"]
    ours, ours_l = lrp.relevance(model, x, target, lrp.composite(name, **kwargs), layers)
    theirs, theirs_l = zennit_relevance(model, x, target, preset(name, **kwargs), layers)
    _close(ours, theirs, "input", rtol=1e-6)
    for n in layers:
        _close(ours_l[n], theirs_l[n], n, rtol=1e-6)


# ----------------------------------------------------------------------------- terms deferred to the backward pass


class InPlaceAfter(nn.Module):
    """Layer outputs changed in place right after the layer (in-place ReLU, ``x += y``), no BatchNorm between."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(96, 3)

    def forward(self, x):
        h = self.relu(self.conv1(x))
        y = self.conv2(h)
        y += h
        return self.fc(torch.relu_(y).flatten(1))


@pytest.mark.parametrize("cls", ["grouped", "inplace", "pad"])
@pytest.mark.parametrize(
    "composite",
    ["epsilon-plus", "epsilon-alpha2-beta1", lrp.Composite({"conv": ("gamma", {"gamma": 0.5}), "linear": "epsilon"})],
    ids=["eps-plus", "eps-ab", "gamma"],
)
def test_terms_in_the_backward_pass_equal_terms_in_the_forward_pass(cls, composite):
    """``defer=True`` (default, less memory) gives exactly what computing the terms in the forward pass gives,
    also where the layer's output is changed in place afterwards (its value is then recomputed)."""
    torch.manual_seed(0)
    if cls == "grouped":
        model, x = _randomize(GroupedBlock()), _inputs(2, 3, 6, 6)
    elif cls == "inplace":
        model, x = InPlaceAfter().double().eval(), _inputs(2, 3, 4, 4)
    else:
        model, x = _pad_pair()[0], _inputs(2, 3, 8, 8)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    out = {}
    for defer in (True, False):
        with lrp.attribution(model, composite, defer=defer) as attr:
            taps = attr.tap(layers)
            xi = x.clone().requires_grad_(True)
            logits = model(xi)
            tensors = [xi] + [taps[n][0] for n in layers]
            grads = torch.autograd.grad(logits, tensors, lrp.start_seed(logits, 1))
            out[defer] = [t.detach() * g for t, g in zip(tensors, grads, strict=True)]
    for n, a, b in zip(["input", *layers], out[True], out[False], strict=True):
        _close(a, b, n)


@pytest.mark.parametrize("epsilon", [0.0, 0.5])
def test_uniform_product_coefficient_formed_in_backward_equals_stored(epsilon):
    """The uniform rule on ``a @ b`` with its coefficient recomputed from the factors in the backward pass."""
    from xprune.lrp.attention import uniform_product

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    seed = torch.randn(2, 3, 5, 6, generator=g, dtype=torch.float64)
    z = a @ b
    stored = torch.autograd.grad(uniform_product(z, [a, b], epsilon), [a, b], seed)
    z = a @ b
    later = torch.autograd.grad(uniform_product(z, [a, b], epsilon, lambda: a.detach() @ b.detach()), [a, b], seed)
    # reference: R_a = sum_k a_ij b_jk / (2 stab(z_ik)) R_ik with R = z * seed
    zd = z.detach()
    stab = zd + epsilon * torch.where(zd >= 0, 1.0, -1.0)
    share = (
        a.detach()[..., :, :, None]
        * b.detach()[..., None, :, :]
        / (2 * stab[..., :, None, :])
        * (zd * seed)[..., :, None, :]
    )
    for ga, gb in (stored, later):
        _close(a.detach() * ga, share.sum(-1), "R_a")
        _close(b.detach() * gb, share.sum(-3), "R_b")


def test_second_backward_needs_terms_in_the_forward_pass():
    torch.manual_seed(0)
    model = _randomize(GroupedBlock())
    x = _inputs(2, 3, 6, 6).requires_grad_(True)
    for defer in (True, False):
        with lrp.attribution(model, "epsilon-plus", defer=defer):
            out = model(x)
            seed = lrp.start_seed(out, 0)
            (g1,) = torch.autograd.grad(out, x, seed, retain_graph=True)
            if defer:
                with pytest.raises(XpruneError, match="defer=False"):
                    torch.autograd.grad(out, x, seed)
            else:
                (g2,) = torch.autograd.grad(out, x, seed)
                torch.testing.assert_close(g1, g2)
