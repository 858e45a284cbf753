"""Every criterion on every architecture of the zoo (issue 17, item 1).

For each Hugging Face vision family (built offline from a tiny config with
random weights) and each hand-written pattern, and each unit kind it has:
every registered criterion gives finite scores, a 30% plan applies, the
pruned model runs and is smaller, and it computes what the masked model
computes, or masking is refused with a one-line error naming the module and
the fix. Criteria that do not apply to a unit kind must refuse it clearly.
"""

from __future__ import annotations

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xprune
from xprune import _inputs
from xprune.criteria import available
from zoo import HF, N_CLASSES, PATTERNS, batches

#: small path steps where a criterion integrates or trains
OPTIONS = {
    "integrated-gradients": {"n_steps": 2},
    "singe": {"n_steps": 2},
    "singe-fast": {"n_steps": 2},
    "steered": {"predictor_steps": 2, "selector_steps": 2, "gate_steps": 2, "batch_size": 8, "cache_dir": None},
}

#: (criterion, kind) -> what its refusal says; every other pair must work
REFUSED = {
    ("wanda", "channels"): "pass units='heads' or units='neurons'",
    ("llm-pruner", "channels"): "pass units='heads' or units='neurons'",
    ("llm-pruner", "heads"): "token ids",
    ("llm-pruner", "neurons"): "token ids",
    ("integrated-gradients", "heads"): "supports unit kind 'channels'",
    ("integrated-gradients", "neurons"): "supports unit kind 'channels'",
    ("steered", "heads"): "pass units='channels'",
    ("steered", "neurons"): "pass units='channels'",
}

CASES = [(family, kind) for family, (_, kinds) in HF.items() for kind in kinds]
CASES += [(pattern, "channels") for pattern in PATTERNS]


@functools.cache
def _built(family: str):
    build = HF[family][0] if family in HF else PATTERNS[family]
    return build()


def _logits(model, x):
    with torch.no_grad():
        return _inputs.logits(_inputs.call(model, x))


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


CRITERIA = [
    "activation",
    "gradient",
    "integrated-gradients",
    "l2",
    "llm-pruner",
    "lrp",
    "pbe",
    "random",
    "singe",
    "singe-fast",
    "steered",
    "taylor",
    "taylor-mean",
    "wanda",
    "weight",
]


def _library_criteria():
    from xprune.criteria.base import _REGISTRY

    return {
        name
        for name, entry in _REGISTRY.items()
        if (entry if isinstance(entry, str) else entry.__module__).startswith("xprune.")
    }


def test_every_criterion_is_covered():
    """A criterion added to the library must be added to the zoo (the tests' own registrations aside)."""
    assert _library_criteria() == set(CRITERIA) and set(CRITERIA) <= set(available())


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("family,kind", CASES, ids=[f"{f}-{k}" for f, k in CASES])
def test_zoo(family, kind, criterion):
    model, size = _built(family)
    model = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = batches(size)
    x = data[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few random samples: the class-coverage warning is expected
        if (criterion, kind) in REFUSED:
            with pytest.raises(xprune.XpruneError, match=REFUSED[criterion, kind].replace("(", r"\(")) as err:
                xprune.score(model, data, criterion, kind, **OPTIONS.get(criterion, {}))
            assert "\n" not in str(err.value)
            return
        scores = xprune.score(model, data, criterion, kind, **OPTIONS.get(criterion, {}))
    for name, s in scores.items():
        assert torch.isfinite(s).all(), f"{criterion} gives non-finite scores at {name}"
    for k, v in model.state_dict().items():  # scoring leaves the model as it was
        assert torch.equal(v, state[k]), k
    plan = xprune.select(scores, 0.3)
    assert plan.n_removed > 0
    pruned = xprune.apply(model, plan, "remove")
    out = _logits(pruned, x)
    assert out.shape == (x.shape[0], N_CLASSES) and torch.isfinite(out).all()
    assert _n_params(pruned) < _n_params(model)
    try:
        masked = xprune.apply(model, plan, "mask")
    except xprune.XpruneError as e:  # masking that would not be removal is refused, naming the module
        message = str(e)
        assert "\n" not in message and "mode='remove'" in message
        assert any(name in message for name, _ in model.named_modules() if name), message
        return
    ref = _logits(masked, x)
    scale = max(ref.abs().max().item(), 1e-3)
    assert (out - ref).abs().max().item() <= 1e-4 * scale + 1e-6, "removal != masking"


# ---------------------------------------------------------------- discovery of units on these patterns


class _ScalarOps(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, N_CLASSES)

    def forward(self, x):
        return self.fc(F.relu(self.c2(self.op(self.c1(x), x))).mean((2, 3)))


@pytest.mark.parametrize(
    "op,prunable",
    [
        (lambda y, x: F.relu(y - 0.2), True),  # a scalar does not tie the channels
        (lambda y, x: y * 2.0, True),
        (lambda y, x: y + torch.ones(1, 1, 1, 1), True),  # size 1 along the channels
        (lambda y, x: y + x.repeat(1, 2, 1, 1), False),  # the input image: 6 fixed channels
        (lambda y, x: y * torch.ones(1, 6, 1, 1), False),  # a constant per channel
        (lambda y, x: torch.cat([y[:, :3], x], 1), False),  # concatenated with the input
    ],
    ids=["sub-scalar", "mul-scalar", "add-size-1", "add-image", "mul-per-channel", "cat-image"],
)
def test_constant_operands(op, prunable):
    model = _ScalarOps(op).eval()
    units = xprune.discover(model, torch.randn(1, 3, 8, 8))
    assert ("c1" in [g.name for g in units]) is prunable


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_attention_channels_are_heads_not_channels(family):
    """q/k/v output channels are viewed as [heads, head_dim]: they are units of kind 'heads' only."""
    model, size = _built(family)
    units = xprune.discover(model, torch.randn(1, 3, size, size))
    assert units.groups and not any(p.endswith(("q_proj", "k_proj", "v_proj")) for g in units for p in g.producers)
    assert any(g.name.endswith("fc1") for g in units)  # the MLP's hidden channels stay units


def test_zoo_models_are_real():
    """The families are the library's classes, not look-alikes (a guard against a silently stubbed zoo)."""
    import transformers

    for family in ("resnet", "convnext", "efficientnet", "regnet", "vit", "swin"):
        model, _ = _built(family)
        assert type(model).__module__.startswith("transformers.models."), family
    grouped = [m for m in _built("regnet")[0].modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels]
    assert grouped  # RegNet really has grouped (not only depthwise) convs
    assert transformers.__version__.startswith("5.")
