"""Exact MACs/parameter budgets: xprune.costs.CostModel and select(by="macs"/"params")."""

import random

import numpy as np
import pytest
import torch

import xprune
from tiny_models import MLP, Branches, ConvBN, Residual, randomize_bn
from xprune import XpruneError
from xprune.costs import CostModel
from xprune.evaluate import count
from xprune.models import build

TINY = (ConvBN, Residual, Branches)


def _tiny(cls, seed=0):
    torch.manual_seed(seed)
    m = randomize_bn(cls(), seed).eval()
    X = torch.randn(16, 6) if cls is MLP else torch.randn(16, 3, 8, 8)
    return m, X, torch.arange(16) % (4 if cls is MLP else 5)  # every class


def _reference(name):
    torch.manual_seed(0)
    m = build(name, input_shape=(1, 28, 28), num_classes=10).eval()
    return m, torch.randn(16, 1, 28, 28), torch.arange(16) % 10


@pytest.mark.parametrize("cls", (*TINY, MLP))
def test_cost_model_is_exact_for_any_plan(cls):
    m, X, y = _tiny(cls)
    scores = xprune.score(m, (X, y), "weight")
    cm = CostModel(m, scores)
    assert cm.exact
    full = count(m, X[:1])
    assert cm.base == {"macs": full["macs"], "params": full["params"]}
    rng = random.Random(0)
    for _ in range(4):
        remove = {n: sorted(rng.sample(range(v.numel()), rng.randint(0, v.numel() - 1))) for n, v in scores.items()}
        plan = xprune.Plan(
            "channels",
            remove,
            {n: v.numel() for n, v in scores.items()},
            dict(scores.members),
            dict(scores.roots),
            scores.example,
        )
        measured = count(xprune.apply(m, plan), X[:1])
        assert cm.of_plan(plan, "macs") == measured["macs"]
        assert cm.of_plan(plan, "params") == measured["params"]


def _max_unit_saving(cm, scores, by):
    ri, ro = cm.empty()
    return max(cm.marginal(n, i, ri, ro, by) for n, v in scores.items() for i in range(v.numel()))


@pytest.mark.parametrize("cls", TINY)
@pytest.mark.parametrize("by", ["macs", "params"])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_select_reaches_budget_within_one_unit_on_tiny_models(cls, by, scope):
    m, X, y = _tiny(cls)
    scores = xprune.score(m, (X, y), "taylor")
    cm = CostModel(m, scores)
    base = count(m, X[:1])[by]
    slack = _max_unit_saving(cm, scores, by) / base  # a unit is the granularity of a budget
    for ratio in (0.2, 0.5, 0.7):
        plan = xprune.select(scores, ratio, by=by, scope=scope, costs=cm)
        achieved = 1 - count(xprune.apply(m, plan), X[:1])[by] / base
        assert ratio - slack <= achieved <= ratio + 1e-9, (ratio, achieved, slack)
        assert plan.meta[f"{by}_reduction"] == pytest.approx(achieved)


@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_select_by_macs_and_params_on_reference_models(name):
    m, X, y = _reference(name)
    scores = xprune.score(m, (X, y), "weight")
    cm = CostModel(m, scores)
    for by in ("macs", "params"):
        base = count(m, X[:1])[by]
        for scope in ("global", "local"):
            for ratio in (0.3, 0.5, 0.7):
                plan = xprune.select(scores, ratio, by=by, scope=scope, costs=cm)
                achieved = 1 - count(xprune.apply(m, plan), X[:1])[by] / base
                assert ratio - 0.02 <= achieved <= ratio + 1e-9, (by, scope, ratio, achieved)
    # the old per-unit budget removed far more than half the MACs; this removes half
    plan = xprune.select(scores, 0.5, by="macs", model=m)
    assert abs(plan.meta["macs_reduction"] - 0.5) <= 0.01


@pytest.mark.parametrize("cls", TINY)
def test_selected_units_are_the_lowest_scored_of_their_group(cls):
    m, X, y = _tiny(cls)
    scores = xprune.score(m, (X, y), "taylor")
    cm = CostModel(m, scores)
    for scope in ("global", "local"):
        for ratio in (0.3, 0.6):
            plan = xprune.select(scores, ratio, by="macs", scope=scope, costs=cm)
            for n, gone in plan.remove.items():
                kept = [i for i in range(plan.sizes[n]) if i not in set(gone)]
                if gone and kept and not scores.parts.get(n):
                    assert max(scores[n][gone]) <= min(scores[n][kept])
    # globally, more budget never removes fewer MACs
    prev = 0.0
    for ratio in np.linspace(0, 0.9, 10):
        now = xprune.select(scores, float(ratio), by="macs", costs=cm).meta["macs_reduction"]
        assert now <= ratio + 1e-9
        assert now >= prev - _max_unit_saving(cm, scores, "macs") / cm.base["macs"]
        prev = now


def test_selection_by_units_is_unchanged():
    m, X, y = _tiny(Residual)
    scores = xprune.score(m, (X, y), "taylor")
    for scope in ("global", "local"):
        a = xprune.select(scores, 0.5, scope=scope)
        b = xprune.select(scores, 0.5, scope=scope, by="units", model=m)
        assert a.remove == b.remove and "macs_reduction" not in a.meta
    plan = xprune.select(scores, 0.5)
    assert plan.n_removed == int(0.5 * plan.n_total)
    flat = sorted((float(v), n, i) for n, t in scores.items() for i, v in enumerate(t))
    lowest = {(n, i) for _, n, i in flat[: plan.n_removed]}
    assert lowest == {(n, i) for n, v in plan.remove.items() for i in v}


def test_floors_and_weights():
    m, X, y = _tiny(ConvBN)
    scores = xprune.score(m, (X, y), "taylor")
    plan = xprune.select(scores, 0.9, by="macs", model=m, min_keep=4)
    assert all(plan.sizes[n] - len(r) >= 4 for n, r in plan.remove.items())
    w = xprune.score(m, (X, y), "weight", "weights")
    with pytest.raises(XpruneError, match="MAC"):
        xprune.select(w, 0.5, by="macs", model=m)
    plan = xprune.select(w, 0.5, by="params", model=m)
    total = count(m, X[:1])["params"]
    assert plan.n_removed == int(0.5 * total)
    assert plan.meta["params_reduction"] == pytest.approx(plan.n_removed / total)


def test_cost_model_rejects_other_models_scores():
    m, X, y = _tiny(ConvBN)
    scores = xprune.score(m, (X, y), "taylor")
    other = ConvBN(n=5)
    other.conv1 = torch.nn.Conv2d(3, 5, 3, padding=1)
    other.bn1 = torch.nn.BatchNorm2d(5)
    other.conv2 = torch.nn.Conv2d(5, 6, 3, padding=1)
    with pytest.raises(XpruneError, match="another model"):
        CostModel(other.eval(), scores)


def test_entwined_by_macs_lands_on_target():
    from xprune import schedules

    m, X, y = _reference("resnet")
    res = schedules.entwined(m, (X, y), "weight", 0.5, by="macs", steps=2)
    final = res.history[-1]["macs_reduction"]
    assert 0.5 <= final <= 0.52, final
    assert res.history[-1]["macs"] == count(res.model, X[:1])["macs"]


@pytest.mark.parametrize("family", ["regnet", "grouped-depthwise"])
def test_cost_model_on_grouped_convs(family):
    """Units of grouped convs are one channel of every conv group; their MACs and parameters are still exact."""
    from zoo import HF, PATTERNS

    m, size = (HF[family][0] if family in HF else PATTERNS[family])()
    X = torch.randn(4, 3, size, size)
    scores = xprune.score(m, (X, torch.arange(4) % 5), "weight")
    cm = CostModel(m, scores)
    rng = random.Random(1)
    for _ in range(3):
        remove = {n: sorted(rng.sample(range(v.numel()), rng.randint(0, v.numel() - 1))) for n, v in scores.items()}
        plan = xprune.Plan(
            "channels",
            remove,
            {n: v.numel() for n, v in scores.items()},
            dict(scores.members),
            dict(scores.roots),
            scores.example,
        )
        measured = count(xprune.apply(m, plan), X[:1])
        assert cm.of_plan(plan, "macs") == pytest.approx(measured["macs"], rel=1e-9)
        assert cm.of_plan(plan, "params") == pytest.approx(measured["params"], rel=1e-9)
