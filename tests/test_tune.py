"""xprune.tune: the PXP composite search (optuna study), its persistence and its composite file."""

import json

import pytest
import torch

pytest.importorskip("optuna")

import optuna

import xprune
from tiny_models import ConvBN
from xprune.errors import DataError, XpruneError
from xprune.evaluate import curve
from xprune.lrp import GroupComposite, composite, save_composite
from xprune.tune import Space, _Evaluator

RATES = [0.0, 0.2, 0.4, 0.6, 0.8]
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


@pytest.fixture(scope="module")
def task():
    """A random ConvBN and data it labels itself (accuracy 1 unpruned, falling with pruning)."""
    torch.manual_seed(0)
    model = ConvBN().eval()
    X = torch.randn(180, 3, 8, 8)
    with torch.no_grad():
        y = model(X).argmax(1)
    return model, (X[:20], y[:20]), (X[20:], y[20:])


def _finished(study):
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


def test_study_runs_persists_resumes_and_reproduces(task, tmp_path):
    model, ref, val = task
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = xprune.tune(model, ref, val, trials=3, sampler="tpe", out=tmp_path, rates=RATES, progress=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # model untouched
    assert (tmp_path / "study.db").exists() and res.composite.exists()
    assert (tmp_path / "history.png").exists() and (tmp_path / "summary.json").exists()
    first = {t.number: (t.params, t.value) for t in _finished(res.study)}
    assert len(first) == 3

    # same target: nothing re-run; larger target: only the missing trials run, earlier ones kept
    again = xprune.tune(model, ref, val, trials=3, sampler="tpe", out=tmp_path, rates=RATES, progress=False)
    assert len(again.study.trials) == 3
    more = xprune.tune(model, ref, val, trials=5, sampler="tpe", out=tmp_path, rates=RATES, progress=False)
    now = {t.number: (t.params, t.value) for t in _finished(more.study)}
    assert len(now) == 5 and all(now[n] == first[n] for n in first)

    # the composite file, through the public criterion path, reproduces the best validation AUC exactly
    doc = json.loads(more.composite.read_text())
    assert doc["xprune"] == "composite" and doc["meta"]["trial"] == more.study.best_trial.number
    c = curve(model, ref, val, "lrp", rates=RATES, **more.options)
    assert c.auc == more.best_value == more.study.best_value
    assert c.accuracies == more.curve.accuracies
    assert isinstance(composite(str(more.composite)), GroupComposite)


def test_interrupted_trial_is_retried_with_its_parameters(task, tmp_path, monkeypatch):
    model, ref, val = task
    calls = {"n": 0}
    real = _Evaluator.score

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(_Evaluator, "score", flaky)
    kw = dict(trials=3, sampler="random", out=tmp_path, rates=RATES, progress=False, pruner=None)
    with pytest.raises(KeyboardInterrupt):
        xprune.tune(model, ref, val, **kw)
    res = xprune.tune(model, ref, val, **kw)
    trials = res.study.trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["interrupted"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params and retry[0].state in FINISHED
    assert len(_finished(res.study)) == 3


def test_fast_evaluation_matches_curve_and_space_is_honoured(task, tmp_path):
    model, ref, val = task
    space = {
        "rules": {"low": ["gamma"], "mid": ["zplus", "alpha-beta"], "fc": ["epsilon"]},
        "aggregate": ["yeom"],
        "normalize": ["l1"],
    }
    res = xprune.tune(
        model, ref, val, space=space, trials=2, sampler="random", out=tmp_path, rates=RATES, progress=False, pruner=None
    )
    groups = json.loads(res.study.user_attrs["setup"])["design"]["groups"]
    assert groups == {"low": ["conv1"], "mid": ["conv2"], "fc": ["fc1", "fc2"]}  # thirds of 2 convs: 'high' empty
    for t in res.study.trials:
        assert set(t.params) == {"low.gamma", "mid.rule", "mid.alpha", "fc.epsilon"}
        spec = t.user_attrs["composite"]
        assert (
            spec["low"][0] == "gamma"
            and spec["fc"][0] == "epsilon"
            and t.user_attrs["options"] == {"aggregate": "yeom", "normalize": "l1"}
        )
        path = save_composite(tmp_path / f"t{t.number}.json", spec, kwargs={"groups": groups})
        c = curve(model, ref, val, "lrp", rates=RATES, composite=str(path), aggregate="yeom", normalize="l1")
        assert c.accuracies == t.user_attrs["accuracies"]


def test_errors(task, tmp_path):
    model, ref, val = task
    with pytest.raises(DataError, match="validation"):
        xprune.tune(model, ref, ref, trials=1, out=tmp_path / "a", rates=RATES, progress=False)
    with pytest.raises(XpruneError, match="unknown rules"):
        xprune.tune(model, ref, val, space={"rules": ["flatt"]}, trials=1, out=tmp_path / "b", progress=False)
    with pytest.raises(XpruneError, match="unknown search-space fields"):
        Space.coerce({"rule": ["epsilon"]})
    with pytest.raises(XpruneError, match="sampler"):
        xprune.tune(model, ref, val, sampler="bayes", trials=1, out=tmp_path / "c", rates=RATES, progress=False)
    xprune.tune(model, ref, val, trials=1, out=tmp_path / "d", rates=RATES, progress=False, sampler="random")
    with pytest.raises(XpruneError, match="another setup"):
        xprune.tune(model, ref, val, trials=1, out=tmp_path / "d", rates=[0.0, 0.5], progress=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"spec": "epsilon"}')
    with pytest.raises(XpruneError, match="not an xprune composite file"):
        composite(str(bad))
    with pytest.raises(XpruneError, match="no composite file"):
        composite(str(tmp_path / "missing.json"))


def test_transformer_heads_search_softmax_rule(tmp_path):
    transformers = pytest.importorskip("xprune.transformers")  # noqa: F841  (registers heads / neurons)
    if "heads" not in xprune.units.kinds():
        pytest.skip("transformer unit kinds not available")
    from xprune.models.vit import ViT

    torch.manual_seed(0)
    model = ViT(image_size=8, patch_size=4, num_classes=4, dim=16, depth=2, heads=4, mlp_dim=32).eval()
    X = torch.randn(120, 1, 8, 8)
    with torch.no_grad():
        y = model(X).argmax(1)
    ref, val = (X[:20], y[:20]), (X[20:], y[20:])
    res = xprune.tune(
        model,
        ref,
        val,
        units="heads",
        trials=2,
        sampler="random",
        out=tmp_path,
        rates=RATES,
        progress=False,
        pruner=None,
    )
    assert all("softmax" in t.params for t in res.study.trials)
    assert json.loads(res.composite.read_text())["spec"][0] in ("attnlrp", "cp-lrp")
    c = curve(model, ref, val, "lrp", units="heads", rates=RATES, **res.options)
    assert c.auc == res.best_value


def _normalised(t, name):
    """A float parameter of trial ``t`` mapped to [0, 1] over its range (log scale where sampled so)."""
    import math

    d, v = t.distributions[name], t.params[name]
    if d.log:
        return (math.log(v) - math.log(d.low)) / (math.log(d.high) - math.log(d.low))
    return (v - d.low) / (d.high - d.low) if d.high > d.low else 0.0


def _same_point(a, b, tol=0.05):
    """Same categorical choices and every float parameter within ``tol`` of its range."""
    for name, d in a.distributions.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            if a.params[name] != b.params[name]:
                return False
        elif abs(_normalised(a, name) - _normalised(b, name)) > tol:
            return False
    return True


@pytest.fixture(scope="module")
def balanced():
    """A ConvBN whose output layer is centred and scaled on the data, so it labels 5 classes in similar numbers
    (composites then give different curves, unlike ``task``, where one class holds most samples)."""
    torch.manual_seed(0)
    model = ConvBN().eval()
    X = torch.randn(300, 3, 8, 8)
    with torch.no_grad():
        z = model(X)
        model.fc2.bias.sub_(z.mean(0)).div_(z.std(0))
        model.fc2.weight.div_(z.std(0)[:, None])
        y = model(X).argmax(1)
    assert torch.bincount(y, minlength=5).min() >= 20
    return model, (X[:40], y[:40]), (X[40:], y[40:])


def test_gp_sampler_learns_from_stopped_trials_and_proposes_new_points(balanced, tmp_path):
    from xprune.tune import BoundPruner
    from xprune.tune.study import N_STARTUP

    model, ref, val = balanced
    trials = N_STARTUP + 5
    res = xprune.tune(
        model,
        ref,
        val,
        trials=trials,
        sampler="gp",
        out=tmp_path,
        rates=RATES,
        progress=False,
        pruner=BoundPruner(margin=0.0),
    )
    ts = res.study.trials
    assert len(ts) == trials and all(t.state == optuna.trial.TrialState.COMPLETE for t in ts)  # GP sees them all
    start, model_made = ts[:N_STARTUP], ts[N_STARTUP:]
    # the GP's proposals differ from each other and from the random start-up points
    for i, t in enumerate(model_made):
        assert not any(_same_point(t, u) for u in start + model_made[:i]), f"trial {t.number} repeats a point"
    # a stopped trial carries its projected AUC (an upper bound, below the best) and stays out of the best choice
    stopped = [t for t in ts if "stopped_after" in t.user_attrs]
    full = [t for t in ts if "stopped_after" not in t.user_attrs]
    assert stopped and any(t in full for t in model_made)  # some stopped, not every proposal stopped
    for t in stopped:
        accs = t.user_attrs["accuracies"]
        assert len(accs) < len(RATES) and t.value == t.intermediate_values[t.last_step]
        assert t.value == pytest.approx((sum(accs) + (len(RATES) - len(accs)) * accs[-1]) / len(RATES))
        assert t.value < max(u.value for u in full if u.number < t.number)
    for t in full:
        assert t.value == pytest.approx(sum(t.user_attrs["accuracies"]) / len(RATES))
    assert res.best_value == max(t.value for t in full) == res.study.best_value
    assert res.counts == {"complete": len(full), "pruned": len(stopped)}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sum(t["state"] == "PRUNED" for t in summary["trials"]) == len(stopped)
