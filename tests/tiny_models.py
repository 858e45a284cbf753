"""Tiny models covering the couplings unit discovery must handle (test-only)."""

import torch
from torch import nn

from xprune.models.layers import Add, Concat


class ConvBN(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> flatten -> linear -> linear."""

    def __init__(self, c=3, n=5):
        super().__init__()
        self.conv1 = nn.Conv2d(c, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(12, n)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flatten(self.pool(x)))))


class Residual(nn.Module):
    """A stem and two residual blocks, one with a 1x1 projection shortcut."""

    def __init__(self, c=3, n=5):
        super().__init__()
        self.stem = nn.Conv2d(c, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.a1 = nn.Conv2d(8, 8, 3, padding=1)
        self.abn1 = nn.BatchNorm2d(8)
        self.a2 = nn.Conv2d(8, 8, 3, padding=1)
        self.abn2 = nn.BatchNorm2d(8)
        self.add1 = Add()
        self.b1 = nn.Conv2d(8, 12, 3, padding=1, stride=2)
        self.bbn1 = nn.BatchNorm2d(12)
        self.b2 = nn.Conv2d(12, 12, 3, padding=1)
        self.bbn2 = nn.BatchNorm2d(12)
        self.short = nn.Conv2d(8, 12, 1, stride=2)
        self.sbn = nn.BatchNorm2d(12)
        self.add2 = Add()
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(12, n)

    def forward(self, x):
        x = self.relu(self.bn0(self.stem(x)))
        y = self.relu(self.abn1(self.a1(x)))
        x = self.relu(self.add1(self.abn2(self.a2(y)), x))
        y = self.relu(self.bbn1(self.b1(x)))
        x = self.relu(self.add2(self.bbn2(self.b2(y)), self.sbn(self.short(x))))
        return self.fc(self.flatten(self.pool(x)))


class Branches(nn.Module):
    """Two parallel convs concatenated, then a depthwise + pointwise conv."""

    def __init__(self, c=3, n=5):
        super().__init__()
        self.left = nn.Conv2d(c, 4, 3, padding=1)
        self.right = nn.Conv2d(c, 6, 1)
        self.cat = Concat(1)
        self.bn = nn.BatchNorm2d(10)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(10, 10, 3, padding=1, groups=10)
        self.dwbn = nn.BatchNorm2d(10)
        self.pw = nn.Conv2d(10, 7, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(7 * 4, n)

    def forward(self, x):
        x = self.relu(self.bn(self.cat(self.left(x), self.right(x))))
        x = self.relu(self.dwbn(self.dw(x)))
        x = self.relu(self.pw(x))
        return self.fc(self.flatten(self.pool(x)))


class MLP(nn.Module):
    def __init__(self, d=6, n=4):
        super().__init__()
        self.fc1 = nn.Linear(d, 10)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(10, 9)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(9, n)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


def randomize_bn(model, seed=0):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.2)
    return model
