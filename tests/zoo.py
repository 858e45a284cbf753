"""The architecture zoo: models nobody here wrote, and the patterns that break attribution code (test-only).

``HF`` builds Hugging Face vision families offline from tiny configs with
random weights (transformers 5); ``PATTERNS`` are small hand-written models
for one pattern each: in-place activations, a conv subclass with its own
``forward``, one activation module called twice, squeeze-excitation gating,
grouped and depthwise convs, concatenation, smooth activations.
Each builder returns ``(model, input_size)`` with the model in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

N_CLASSES = 5


def _bn_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (random-init HF models have identity BNs)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None  # BatchNorm with running statistics
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            if m.weight is not None:
                m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model.eval()


def _hf(config_name: str, model_name: str, size: int, **config):
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config_name)(num_labels=N_CLASSES, **config)
    return _bn_stats(getattr(transformers, model_name)(cfg)), size


def resnet():
    return _hf(
        "ResNetConfig",
        "ResNetForImageClassification",
        32,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="bottleneck",
    )


def convnext():
    return _hf(
        "ConvNextConfig", "ConvNextForImageClassification", 32, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]
    )


def convnextv2():
    return _hf(
        "ConvNextV2Config", "ConvNextV2ForImageClassification", 32, num_stages=2, hidden_sizes=[8, 16], depths=[1, 1]
    )


def mobilenetv1():
    return _hf("MobileNetV1Config", "MobileNetV1ForImageClassification", 32, depth_multiplier=0.25, image_size=32)


def mobilenetv2():
    return _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", 32, depth_multiplier=0.35, image_size=32)


def efficientnet():
    return _hf(
        "EfficientNetConfig",
        "EfficientNetForImageClassification",
        32,
        image_size=32,
        width_coefficient=0.25,
        depth_coefficient=0.2,
        hidden_dim=320,
        kernel_sizes=[3, 3, 5],
        in_channels=[32, 16, 24],
        out_channels=[16, 24, 40],
        strides=[1, 2, 2],
        num_block_repeats=[1, 2, 1],
        expand_ratios=[1, 6, 6],
    )


def regnet():
    return _hf(
        "RegNetConfig",
        "RegNetForImageClassification",
        32,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        groups_width=4,
        layer_type="y",
    )


def bit():
    return _hf(
        "BitConfig",
        "BitForImageClassification",
        32,
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="bottleneck",
        global_padding="SAME",
        num_groups=2,
    )


def vit():
    return _hf(
        "ViTConfig",
        "ViTForImageClassification",
        32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )


def deit():
    return _hf(
        "DeiTConfig",
        "DeiTForImageClassification",
        32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )


def swin():
    return _hf(
        "SwinConfig",
        "SwinForImageClassification",
        32,
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=4,
    )


def dinov2():
    return _hf(
        "Dinov2Config",
        "Dinov2ForImageClassification",
        32,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,
        image_size=32,
        patch_size=8,
    )


#: Hugging Face families -> (builder, unit kinds to prune)
HF = {
    "resnet": (resnet, ("channels",)),
    "convnext": (convnext, ("channels",)),
    "convnextv2": (convnextv2, ("channels",)),
    "mobilenetv1": (mobilenetv1, ("channels",)),
    "mobilenetv2": (mobilenetv2, ("channels",)),
    "efficientnet": (efficientnet, ("channels",)),
    "regnet": (regnet, ("channels",)),
    "bit": (bit, ("channels",)),
    "vit": (vit, ("heads", "neurons", "channels")),
    "deit": (deit, ("heads", "neurons")),
    "swin": (swin, ("heads", "neurons")),
    "dinov2": (dinov2, ("heads", "neurons")),
}


# ---------------------------------------------------------------- hand-written patterns


class InplaceVGG(nn.Module):
    """conv -> ReLU(inplace) -> conv -> ReLU(inplace) -> pool -> linear (torchvision VGG style, no BN)."""

    def __init__(self, inplace: bool = True):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.r1 = nn.ReLU(inplace=inplace)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.r2 = nn.ReLU(inplace=inplace)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.r3 = nn.ReLU(inplace=inplace)
        self.fc2 = nn.Linear(16, N_CLASSES)

    def forward(self, x):
        x = F.max_pool2d(self.r2(self.c2(F.max_pool2d(self.r1(self.c1(x)), 2))), 2)
        return self.fc2(self.r3(self.fc1(x.flatten(1))))


class SameConv2d(nn.Conv2d):
    """A TensorFlow-"same" conv: pads inside ``forward`` (asymmetrically for even kernels or strides)."""

    def forward(self, x):
        h, w = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((-(-h // sh) - 1) * sh + kh - h, 0)
        pw = max((-(-w // sw) - 1) * sw + kw - w, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SamePadNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = SameConv2d(3, 8, 3, stride=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = SameConv2d(8, 8, 4, stride=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.relu(self.bn2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class ReusedReLU6(nn.Module):
    """One ``nn.ReLU6`` module called after two different convs."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        x = self.act(self.c2(self.act(self.c1(x))))
        return self.fc(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """conv -> SiLU -> x * sigmoid(fc(pool(x))) -> conv: the EfficientNet/MobileNetV3 gating product."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.SiLU()
        self.se_reduce = nn.Conv2d(8, 4, 1)
        self.se_expand = nn.Conv2d(4, 8, 1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        x = self.act(self.c1(x))
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(x.mean((2, 3), keepdim=True)))))
        x = F.hardswish(self.c2(x * s))
        return self.fc(x.mean((2, 3)))


class GroupedDepthwise(nn.Module):
    """A grouped conv (4 groups) and a depthwise conv between pointwise convs, with BN and GELU."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 1)
        self.b1 = nn.BatchNorm2d(16)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b2 = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.b3 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        x = F.gelu(self.b1(self.c1(x)))
        x = F.gelu(self.b2(self.g(x)))
        x = F.gelu(self.b3(self.dw(x)))
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


class ConcatNet(nn.Module):
    """Two branches concatenated along channels, then a conv over the concatenation."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(10, 8, 3, padding=1)
        self.fc = nn.Linear(8, N_CLASSES)

    def forward(self, x):
        x = torch.cat([F.relu(self.a(x)), F.hardswish(self.b(x))], dim=1)
        return self.fc(F.silu(self.c(x)).mean((2, 3)))


def _pattern(cls):
    def build():
        torch.manual_seed(0)
        return _bn_stats(cls()), 16

    build.__name__ = cls.__name__
    return build


PATTERNS = {
    "inplace-relu": _pattern(InplaceVGG),
    "same-pad-conv": _pattern(SamePadNet),
    "reused-relu6": _pattern(ReusedReLU6),
    "squeeze-excite": _pattern(SqueezeExcite),
    "grouped-depthwise": _pattern(GroupedDepthwise),
    "concat": _pattern(ConcatNet),
}


def batches(size: int, n: int = 8, seed: int = 1):
    """One batch of ``n`` random images and labels (a list of one ``(x, y)`` pair)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, size, size, generator=g), torch.randint(0, N_CLASSES, (n,), generator=g))]
