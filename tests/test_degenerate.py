"""Degenerate results are said, not hidden: plans that remove nothing or leave bottlenecks, accuracy at chance."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from xprune import Plan, Scores, XpruneError
from xprune.checks import chance_level, is_at_chance, plan_warnings, warn_if_chance
from xprune.data import Split
from xprune.errors import DegenerateResult


def _scores(values, kind="channels"):
    return Scores({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}, kind=kind)


def _quiet(call):
    """Run ``call`` and return (result, the DegenerateResult messages it emitted)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [str(w.message) for w in caught if issubclass(w.category, DegenerateResult)]


def _mlp(hidden=64, mid=16, seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, hidden), nn.ReLU(), nn.Linear(hidden, mid), nn.ReLU(), nn.Linear(mid, 4)).eval()
    X, y = torch.randn(16, 6), torch.arange(16) % 4
    return m, xprune.score(m, (X, y), "taylor")


# ----------------------------------------------------------------------------- plans that remove nothing


def test_local_ratio_rounding_to_zero_is_said():
    # two layers of 2 units each (e.g. 2 KV groups per layer): 25% of 2 rounds down to 0 in every layer
    s = _scores({"layer0": [0.3, 0.1], "layer1": [0.2, 0.4]})
    with pytest.warns(
        DegenerateResult,
        match=r"removes nothing: 0\.25 of each group's units rounds down to 0.*"
        r"scope='global', or a ratio >= 0\.5",
    ) as rec:
        plan = xprune.select(s, 0.25, scope="local")
    assert rec[0].filename == __file__  # points at the user's call, not into xprune
    assert plan.n_removed == 0
    assert plan.warnings() == plan.meta["warnings"] == [str(rec[0].message)]
    # the record survives a save / load round trip, so the CLI can store it
    assert Plan.from_dict(plan.to_dict()).warnings() == plan.warnings()
    # the suggested global scope removes one unit of four, silently
    fixed, said = _quiet(lambda: xprune.select(s, 0.25))
    assert fixed.remove == {"layer0": [1], "layer1": []} and said == [] and fixed.warnings() == []


def test_global_ratio_below_one_unit_is_said():
    s = _scores({"a": [0.1, 0.2, 0.3], "b": [0.4, 0.5, 0.6, 0.7]})
    with pytest.warns(
        DegenerateResult,
        match=r"select\(ratio=0\.1\) removes nothing: 0\.1 of the 7 units is less "
        r"than one unit; use a ratio >= 0\.143",
    ):
        assert xprune.select(s, 0.1).n_removed == 0
    assert _quiet(lambda: xprune.select(s, 0.0))[1] == []  # ratio 0 asks for nothing: no warning


def test_min_keep_eating_the_ratio_is_said():
    s = _scores({"a": [0.1, 0.2, 0.3, 0.4], "b": [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]})
    with pytest.warns(DegenerateResult, match=r"min_keep=0\.99 keeps every unit of every group.*lower min_keep"):
        assert xprune.select(s, 0.5, min_keep=0.99).n_removed == 0
    # most of the ratio eaten: 0.8 asked, min_keep=0.75 lets 2 of 10 units go
    with pytest.warns(DegenerateResult, match=r"removes only 0\.2 of the units.*min_keep=0\.75 lets only 0\.2"):
        assert xprune.select(s, 0.8, min_keep=0.75).n_removed == 2


def test_round_to_eating_the_ratio_is_said():
    s = _scores({"a": torch.linspace(0, 1, 14).tolist(), "b": torch.linspace(1, 2, 14).tolist()})
    # 10% of 14 is 1 unit per layer; 13 kept rounds to 16 >= 14, so round_to=8 keeps every layer whole
    with pytest.warns(DegenerateResult, match=r"removes nothing: round_to=8 rounded every pruned group back"):
        assert xprune.select(s, 0.1, scope="local", round_to=8).n_removed == 0
    assert xprune.select(s, 0.1, scope="local").n_removed == 2  # the same without rounding does remove


def test_mac_budget_below_one_unit_is_said():
    m, s = _mlp()
    from xprune.costs import CostModel

    cm = CostModel(m, s)
    ri, ro = cm.empty()
    least = min(cm.marginal(n, i, ri, ro, "macs") for n in s for i in range(s[n].numel())) / cm.base["macs"]
    with pytest.warns(
        DegenerateResult,
        match=rf"by='macs'\) removes nothing: removing any single unit saves at "
        rf"least {100 * least:.3g}% of the model's macs",
    ):
        assert xprune.select(s, least / 2, by="macs", costs=cm).n_removed == 0


# ----------------------------------------------------------------------------- bottlenecks and min_keep


def test_bottleneck_is_said_and_names_the_group():
    s = _scores({"fc1": np.linspace(0, 0.01, 64).tolist(), "fc2": np.linspace(1, 2, 200).tolist()})
    with pytest.warns(DegenerateResult, match=r"leaves group 'fc1' with 1 of its 64 units, a bottleneck.*min_keep="):
        plan = xprune.select(s, 0.3)
    assert plan.sizes["fc1"] - len(plan.remove["fc1"]) == 1
    # keeping a share of every group, as suggested, is a sound plan
    plan, said = _quiet(lambda: xprune.select(s, 0.3, min_keep=0.1))
    assert plan.sizes["fc1"] - len(plan.remove["fc1"]) == 7 and said == []


@pytest.mark.parametrize("scope", ["global", "local"])
def test_by_macs_never_goes_below_min_keep(scope):
    # the first layer's 64 neurons score lowest: a MAC budget takes them first
    m, s = _mlp()
    s = s._replace({"0": torch.linspace(0, 0.01, 64), "2": torch.linspace(1, 2, 16)})
    for ratio in (0.5, 0.8, 0.95, 0.99):
        for min_keep in (1, 3, 0.25):
            plan, said = _quiet(
                lambda ratio=ratio, min_keep=min_keep: xprune.select(
                    s, ratio, by="macs", model=m, scope=scope, min_keep=min_keep
                )
            )
            for name, size in plan.sizes.items():
                kept = size - len(plan.remove[name])
                floor = math.ceil(min_keep * size) if isinstance(min_keep, float) else min_keep
                assert kept >= min(size, floor), (ratio, min_keep, name, kept)
                if size >= 8 and kept <= 2:  # a bottleneck the budget allowed is said
                    assert any(
                        f"'{name}' with {kept} of its {size}" in msg or f"{name} ({kept} of {size})" in msg
                        for msg in said
                    ), said
    with pytest.warns(DegenerateResult, match=r"group '0' with 1 of its 64 units, a bottleneck"):
        xprune.select(s, 0.95, by="macs", model=m)


def test_a_plan_below_min_keep_is_named():
    # plans are not only made by select (hand-built, edited, by other methods): Plan.warnings() checks them
    plan = Plan(
        "channels", {"a": [0, 1, 2, 3], "b": list(range(7)), "c": []}, {"a": 4, "b": 10, "c": 3}, meta={"min_keep": 0.5}
    )
    msgs = plan.warnings()
    assert len(msgs) == 1 and "2 groups with fewer units than min_keep=0.5" in msgs[0]
    assert "a (0 of 4, at least 2)" in msgs[0] and "b (3 of 10, at least 5)" in msgs[0]
    single = Plan("channels", {"a": [0, 1, 2, 3]}, {"a": 4})
    assert single.warnings() == plan_warnings(single)
    assert "leaves group 'a' with 0 of its 4 units, fewer than min_keep=1" in single.warnings()[0]


def test_a_normal_plan_says_nothing():
    m, s = _mlp()
    for kwargs in (
        {},
        {"scope": "local"},
        {"by": "macs", "model": m},
        {"by": "params", "model": m},
        {"round_to": 4},
        {"min_keep": 0.25},
    ):
        plan, said = _quiet(lambda kwargs=kwargs: xprune.select(s, 0.3, **kwargs))
        assert plan.n_removed > 0 and said == [] and plan.warnings() == [], kwargs
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateResult)
        xprune.apply(m, xprune.select(s, 0.5))


# ----------------------------------------------------------------------------- accuracy at chance


def test_chance_level_is_the_majority_rate():
    assert chance_level([0, 0, 0, 1]) == 0.75
    assert chance_level(torch.tensor([2, 1, 0, 1, 1, 0])) == 0.5
    assert chance_level(Split(torch.zeros(5, 2), torch.tensor([0, 1, 2, 3, 4]))) == 0.2
    assert chance_level(np.array([1.0, 1.0, 0.0])) == pytest.approx(2 / 3)
    for bad, match in (([], "at least one label"), ([0.5, 1.0], "integer class indices")):
        with pytest.raises(XpruneError, match=match):
            chance_level(bad)


def test_accuracy_at_chance_is_said():
    with pytest.warns(
        DegenerateResult,
        match=r"the pruned model has accuracy 0\.1000, down from 0\.9500, which is "
        r"at chance level \(0\.1000, 1/10 classes\).*prune less",
    ) as rec:
        msg = warn_if_chance(0.1, 10, before=0.95)
    assert rec[0].filename == __file__ and msg == str(rec[0].message)
    # the threshold: chance + a tenth of the gap to perfect (0.19 for 10 balanced classes)
    assert is_at_chance(0.19, 10) and not is_at_chance(0.1901, 10)
    assert _quiet(lambda: warn_if_chance(0.1901, 10, before=0.95)) == (None, [])
    assert _quiet(lambda: warn_if_chance(0.8, 10, before=0.95)) == (None, [])
    # a model at chance before pruning: not the pruning's doing, so no warning about the pruned one
    assert _quiet(lambda: warn_if_chance(0.1, 10, before=0.12)) == (None, [])
    # without `before` (the model as loaded), the advice is to check the data against the model
    with pytest.warns(
        DegenerateResult,
        match=r"the model before pruning has accuracy 0\.1200.*check that the data "
        r"matches the model \(the same input normalisation",
    ):
        warn_if_chance(0.12, 10, what="the model before pruning")
    # the majority-class rate raises chance: 90% of one class makes 0.9 accuracy no better than guessing
    with pytest.warns(
        DegenerateResult,
        match=r"0\.9000, down from 0\.9990, which is at chance level "
        r"\(0\.9000, the majority-class rate\)",
    ):
        warn_if_chance(0.9, 2, chance=0.9, before=0.999)
    assert _quiet(lambda: warn_if_chance(0.9, 2, before=0.999)) == (None, [])


def test_chance_check_refuses_bad_input():
    for args, kwargs, match in (
        ((1.5, 10), {}, r"accuracy must be a number in \[0, 1\]"),
        ((0.5, 0), {}, "n_classes must be a positive int"),
        ((0.5, 10), {"before": -1}, "before must be a number in"),
        ((0.5, 10), {"chance": 2}, "chance must be a rate"),
    ):
        with pytest.raises(XpruneError, match=match):
            warn_if_chance(*args, **kwargs)
