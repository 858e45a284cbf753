"""Tiny models for the LRP tests (float64, eval mode, randomised BatchNorm statistics)."""

from __future__ import annotations

import torch
from torch import nn

from xprune.models.layers import Add


class TinyVGG(nn.Module):
    """conv-BN-ReLU, conv(no bias)-BN-ReLU, maxpool, grouped conv, depthwise conv-BN, avgpool, 2 linear."""

    def __init__(self, bias=True, n_classes=5):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=1, groups=2, bias=bias)
        self.relu3 = nn.ReLU()
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=bias)  # depthwise
        self.bn4 = nn.BatchNorm2d(16)
        self.relu4 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(16 * 2 * 2, 12, bias=bias)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(12, n_classes, bias=bias)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool1(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.conv3(x))
        x = self.pool2(self.relu4(self.bn4(self.conv4(x))))
        return self.fc2(self.relu5(self.fc1(self.flatten(x))))


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias), nn.BatchNorm2d(cout))
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        s = x if self.short is None else self.short(x)
        return self.relu2(self.add(y, s))


class TinyResNet(nn.Module):
    def __init__(self, bias=True, n_classes=5):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = Block(8, 8, bias=bias)
        self.layer2 = Block(8, 12, stride=2, bias=bias)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, n_classes, bias=bias)

    def forward(self, x):
        x = self.relu(self.bn(self.stem(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.pool(x)))


class TinyConv1d(nn.Module):
    def __init__(self, n_classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv1d(6, 6, 3, padding=1, groups=3)
        self.bn2 = nn.BatchNorm1d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, n_classes)

    def forward(self, x):
        x = self.relu2(self.bn2(self.conv2(self.relu1(self.conv1(x)))))
        return self.fc(self.flatten(self.pool(x)))


class TinyMLP(nn.Module):
    """Linear layers with smooth activations (the pass rule is not the gradient here) and BatchNorm1d."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.bn1 = nn.BatchNorm1d(10)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(10, 8)
        self.act2 = nn.SiLU()
        self.fc3 = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.bn1(self.fc1(x))))))


def randomize_bn(model: nn.Module, seed: int = 0, centred: bool = False) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (``centred``: mean 0 and beta 0, so no bias)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            assert m.running_mean is not None and m.running_var is not None  # BatchNorm with running statistics
            with torch.no_grad():
                m.running_mean.copy_(torch.zeros(n) if centred else torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.zeros(n) if centred else torch.randn(n, generator=g) * 0.2)
    return model


def make(cls, seed=0, dtype=torch.float64, centred=False, **kwargs):
    torch.manual_seed(seed)
    return randomize_bn(cls(**kwargs), seed, centred).to(dtype).eval()


INPUT_SHAPES = {TinyVGG: (3, 8, 8), TinyResNet: (3, 8, 8), TinyConv1d: (2, 10), TinyMLP: (6,)}


def inputs(cls, n=4, seed=1, dtype=torch.float64):
    """Inputs uniform in [-1, 1] (so z-box bounds are -1 and 1)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *INPUT_SHAPES[cls], generator=g) * 2 - 1).to(dtype)


def dense_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def add_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Add)]


def single_thread():
    """Generator fixture body: run with one intra-op thread, then restore.

    Tiny tensors on a busy 2-core machine are up to 100x slower with several
    OpenMP threads (spin-waiting); the LRP tests use one thread.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
