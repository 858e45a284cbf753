"""Property-based tests: random small architectures and random plans."""

from typing import Any

import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import xprune
from tiny_models import randomize_bn
from xprune.models.layers import Add, Concat
from xprune.select import Plan


class RandomNet(nn.Module):
    """A chain of blocks drawn by hypothesis: conv, residual, concat, depthwise."""

    def __init__(self, blocks, c_in=2, n_classes=3, hidden=7):
        super().__init__()
        self.kinds = [k for k, _ in blocks]
        self.body = nn.ModuleList()
        c = c_in
        for kind, w in blocks:
            if kind == "conv":
                self.body.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU()))
                c = w
            elif kind == "residual":
                self.body.append(
                    nn.ModuleDict(
                        {
                            "f": nn.Sequential(
                                nn.Conv2d(c, w, 3, padding=1),
                                nn.BatchNorm2d(w),
                                nn.ReLU(),
                                nn.Conv2d(w, c, 3, padding=1),
                                nn.BatchNorm2d(c),
                            ),
                            "add": Add(),
                            "act": nn.ReLU(),
                        }
                    )
                )
            elif kind == "concat":
                self.body.append(
                    nn.ModuleDict(
                        {
                            "a": nn.Conv2d(c, w, 3, padding=1),
                            "b": nn.Conv2d(c, w + 1, 1),
                            "cat": Concat(1),
                            "bn": nn.BatchNorm2d(2 * w + 1),
                            "act": nn.ReLU(),
                        }
                    )
                )
                c = 2 * w + 1
            else:  # depthwise
                self.body.append(nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU()))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(4 * c, hidden)
        self.act = nn.ReLU()
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x):
        for kind, block in zip(self.kinds, self.body, strict=True):
            if kind == "residual":
                x = block["act"](block["add"](block["f"](x), x))
            elif kind == "concat":
                x = block["act"](block["bn"](block["cat"](block["a"](x), block["b"](x))))
            else:
                x = block(x)
        return self.out(self.act(self.fc(self.flat(self.pool(x)))))


blocks = st.lists(
    st.tuples(st.sampled_from(["conv", "residual", "concat", "depthwise"]), st.integers(2, 6)), min_size=1, max_size=4
)
SETTINGS: dict[str, Any] = dict(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))


def _net(spec, seed):
    torch.manual_seed(seed)
    return randomize_bn(RandomNet(spec), seed).eval()


@settings(**SETTINGS)
@given(spec=blocks, seed=st.integers(0, 1000), ratio=st.floats(0.0, 0.9), data=st.data())
def test_random_plans_remove_equals_mask(spec, seed, ratio, data):
    model = _net(spec, seed)
    X = torch.randn(4, 2, 6, 6)
    units = xprune.discover(model, X[:1])
    # a random plan: random scores, so any units, any layer, any ratio within the floors
    scores = xprune.score(model, None, "random", units=units, seed=seed)
    plan = xprune.select(scores, ratio, scope=data.draw(st.sampled_from(["global", "local"])))
    removed = xprune.apply(model, plan, "remove")
    masked = xprune.apply(model, plan, "mask")
    with torch.no_grad():
        assert (removed(X) - masked(X)).abs().max() <= 1e-5
    # parameters that masking zeroed are exactly the ones removal dropped (random weights are never 0)
    zeroed = sum(int((p == 0).sum()) for p in masked.parameters()) - sum(
        int((p == 0).sum()) for p in model.parameters()
    )

    def n(m):
        return sum(p.numel() for p in m.parameters())

    assert n(removed) == n(model) - zeroed
    for name, size in plan.sizes.items():
        root = dict(removed.named_modules())[plan.roots[name]]
        kept = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        assert kept == size - len(plan.remove[name])


@settings(**SETTINGS)
@given(
    spec=blocks,
    seed=st.integers(0, 1000),
    criterion=st.sampled_from(["weight", "l2", "gradient", "taylor", "activation"]),
)
def test_scores_are_finite_and_save_load_round_trips(spec, seed, criterion, tmp_path_factory):
    model = _net(spec, seed)
    X, y = torch.randn(6, 2, 6, 6), torch.randint(0, 3, (6,))
    scores = xprune.score(model, (X, y), criterion)
    assert all(torch.isfinite(v).all() and (v >= 0).all() for v in scores.values())
    pruned = xprune.apply(model, xprune.select(scores, 0.4))
    path = tmp_path_factory.mktemp("io") / "m.safetensors"
    loaded = xprune.load(xprune.save(pruned, path), RandomNet(spec).eval())
    with torch.no_grad():
        assert torch.equal(loaded(X), pruned(X))
    # a saved plan replays on the same architecture to the same model
    plan = Plan.from_dict(xprune.history(pruned)[0][1].to_dict())
    with torch.no_grad():
        assert torch.equal(xprune.apply(model, plan)(X), pruned(X))
