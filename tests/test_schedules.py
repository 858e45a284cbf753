"""One-shot and iterative schedules."""

import pytest
import torch

import xprune
from tiny_models import MLP, Residual, randomize_bn
from xprune import schedules


def _data(cls):
    torch.manual_seed(0)
    m = randomize_bn(cls()).eval()
    X = torch.randn(20, 3, 8, 8) if cls is Residual else torch.randn(20, 6)
    y = torch.randint(0, 4, (20,))
    return m, X, y


def test_iterative_reaches_ratio_and_replays():
    m, X, y = _data(Residual)
    calls = []
    res = schedules.iterative(
        m, (X, y), "taylor", 0.5, step=0.1, fine_tune=lambda model: calls.append(1), evaluate=lambda model: 0.0
    )
    total = res.history[0]["total"]
    assert res.removed == total // 2
    assert len(res.plans) == len(calls) == len(res.history) > 3
    # later steps rescore on the pruned model: sizes shrink step by step
    assert [sum(p.sizes.values()) for p in res.plans] == sorted(
        (sum(p.sizes.values()) for p in res.plans), reverse=True
    )
    replay = m
    for plan in res.plans:
        replay = xprune.apply(replay, plan)
    with torch.no_grad():
        assert torch.equal(replay(X), res.model(X))
    assert sum(p.numel() for p in m.parameters()) > sum(p.numel() for p in res.model.parameters())


def test_one_shot_matches_prune():
    m, X, y = _data(Residual)
    res = schedules.one_shot(m, (X, y), "taylor", 0.4)
    direct = xprune.prune(m, (X, y), "taylor", 0.4)
    with torch.no_grad():
        assert torch.equal(res.model(X), direct(X))


def test_iterative_single_weights_masks_new_weights_each_step():
    m, X, y = _data(MLP)
    res = schedules.iterative(m, (X, y), "weight", 0.6, step=0.2, units="weights")
    zeros = sum(int((getattr(res.model, n).weight == 0).sum()) for n in ("fc1", "fc2"))
    assert zeros == res.removed == int(0.6 * 150)


def test_bad_schedule_arguments():
    m, X, y = _data(MLP)
    with pytest.raises(xprune.XpruneError, match="step"):
        schedules.iterative(m, (X, y), "weight", 0.5, step=0)
    with pytest.raises(xprune.XpruneError, match="ratio"):
        schedules.iterative(m, (X, y), "weight", 1.0)
