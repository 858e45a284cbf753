"""SInGE and integrated-gradients criteria, and the entwined schedule."""

import json
import math

import pytest
import torch
from torch import nn

import xprune
from tiny_models import MLP, ConvBN, Residual, randomize_bn
from xprune import XpruneError, schedules
from xprune.criteria.integrated import IntegratedGradients
from xprune.criteria.singe import SInGE, SInGEFast, gated, objective_value, path_points


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


def make(cls, seed=0, n=16):
    torch.manual_seed(seed)
    model = randomize_bn(cls(), seed).eval()
    X = torch.randn(n, 6) if cls is MLP else torch.randn(n, 3, 8, 8)
    y = torch.randint(0, 4, (n,))
    return model, X, y


def trained_mlp(seed):
    torch.manual_seed(seed)
    m = MLP()
    X = torch.randn(256, 6)
    y = (X @ torch.randn(6, 4)).argmax(1)
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(200):
        loss = nn.functional.cross_entropy(m(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), X[:64], y[:64]


def spearman(a, b):
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


# ---------------------------------------------------------------- SInGE


@pytest.mark.parametrize("path", ["uniform", "geometric"])
def test_singe_completeness_error_shrinks_with_k(path):
    m, X, y = make(Residual)
    units = xprune.discover(m, X[:1])
    with torch.no_grad():
        full = float(objective_value(m(X), y))
    errors = []
    for K in (2, 8, 32):
        ig = SInGEFast(n_steps=K, path=path).integrals(
            m, units, [(X, y)]
        )  # a layer's gates together: completeness per layer
        err = 0.0
        for g in units:
            with gated(m, units, {g.name: torch.zeros(g.size)}), torch.no_grad():
                removed = float(objective_value(m(X), y))
            err += abs(float(ig[g.name].sum()) - (full - removed))
        errors.append(err)
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.15 * errors[0]  # first-order rule: error ~ 1/K


def test_singe_gate_zero_is_removal():
    # with the gate after the BatchNorm, gate 0 computes exactly what the pruned model computes
    m, X, _ = make(Residual)
    units = xprune.discover(m, X[:1])
    plan = xprune.Plan(
        "channels",
        {g.name: ([1, 3] if g.name == "b1" else []) for g in units},
        {g.name: g.size for g in units},
        roots={g.name: g.root for g in units},
        example=units.example,
    )
    pruned = xprune.apply(m, plan)
    gate = torch.ones(units["b1"].size)
    gate[[1, 3]] = 0
    with gated(m, units, {"b1": gate}), torch.no_grad():
        torch.testing.assert_close(m(X), pruned(X), atol=1e-5, rtol=1e-5)


def test_singe_network_scope_completeness():
    m, X, y = make(ConvBN)
    units = xprune.discover(m, X[:1])
    crit = SInGEFast(n_steps=64, scope="network")
    ig = crit.integrals(m, units, [(X, y)])
    assert crit.passes == 64
    with torch.no_grad():
        full = float(objective_value(m(X), y))
    with gated(m, units, {g.name: torch.zeros(g.size) for g in units}), torch.no_grad():
        removed = float(objective_value(m(X), y))
    total = sum(float(v.sum()) for v in ig.values())
    assert total == pytest.approx(full - removed, abs=0.05 * abs(full - removed))


def test_singe_fast_and_exact_rank_alike():
    # a small trained MLP, first hidden layer (10 units, non-linear downstream); mean over 5 seeds
    rhos = []
    for seed in range(5):
        m, X, y = trained_mlp(seed)
        units = xprune.discover(m, X[:1])
        fast = SInGEFast(n_steps=8).integrals(m, units, [(X, y)])
        exact = SInGEFast(n_steps=8, mode="exact").integrals(m, units, [(X, y)])
        rhos.append(spearman(fast["fc1"].abs(), exact["fc1"].abs()))
    assert sum(rhos) / len(rhos) >= 0.9, rhos


def test_singe_fast_equals_exact_on_linear_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 6), nn.Linear(6, 3)).eval()
    X, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    units = xprune.discover(m, X[:1])
    fast = SInGEFast(n_steps=5).integrals(m, units, [(X, y)])
    exact = SInGEFast(n_steps=5, mode="exact").integrals(m, units, [(X, y)])
    for name in fast:
        torch.testing.assert_close(fast[name], exact[name], rtol=1e-5, atol=1e-6)


def test_singe_one_step_is_summed_taylor():
    m, X, y = make(ConvBN)
    one = xprune.score(m, (X, y), "singe-fast", n_steps=1, gate_at="output", normalize=None)
    taylor = xprune.score(m, (X, y), "taylor-mean", normalize=None)  # |mean over samples and positions|
    positions = {"conv1": 64, "conv2": 64, "fc1": 1}
    for name in one:
        torch.testing.assert_close(one[name], taylor[name] * len(X) * positions[name], rtol=1e-4, atol=1e-7)
    for path in ("uniform", "geometric"):
        assert path_points(1, path) == ([1.0], [1.0])


def test_singe_options_and_errors():
    for K in (1, 5, 12):
        for path in ("uniform", "geometric"):
            pts, w = path_points(K, path)
            assert pts[0] == 1.0 and math.isclose(sum(w), 1.0) and len(pts) == K
    m, X, y = make(MLP)
    s = xprune.score(m, (X, y), "singe", n_steps=3, objective="loss")
    assert set(s) == {"fc1", "fc2"} and all((v >= 0).all() for v in s.values())
    with pytest.raises(XpruneError, match="mode"):
        SInGE(mode="slow")
    with pytest.raises(XpruneError, match="n_steps"):
        SInGE(n_steps=0)
    with pytest.raises(XpruneError, match="aggregate"):
        SInGE(aggregate="abs")
    with pytest.raises(XpruneError, match="unit_batch"):
        SInGE(unit_batch=0)
    with pytest.raises(XpruneError, match="single weights"):
        xprune.score(m, (X, y), "singe", units="weights")
    units = xprune.discover(m, X[:1])
    # a kind that only discovers (no gate sites) is refused by name; heads and neurons have gate sites now
    xprune.register_kind("rows")(lambda model, example_inputs, **options: None)
    rows = xprune.UnitSet("rows", [xprune.UnitGroup("fc1", "rows", 2, ("fc1",))])
    with pytest.raises(XpruneError, match="'rows' has no gate sites"):
        SInGE().integrals(m, rows, [(X, y)])
    assert units.kind == "channels"


# ---------------------------------------------------------------- SInGE as defined: per unit, geometric, loss


def naive_exact(model, units, X, y, points, weights, call=None, label_of=None, magnitude=False):
    """Per-sample IG_{n,c} of minus the loss, one sample, one unit, one path point per pass (plain autograd).

    ``magnitude=True``: the integral of |dL_n/dg_c| instead (singe's default ``aggregate="path"``).
    """
    call = call or (lambda m, n: m(X[n : n + 1]))
    out = {}
    for g in units:
        ig = torch.zeros(len(y), g.size, dtype=torch.float64)
        for n in range(len(y)):
            for c in range(g.size):
                for a, w in zip(points, weights, strict=True):
                    gate = torch.ones(g.size)
                    gate[c] = a
                    gate.requires_grad_(True)
                    with gated(model, units, {g.name: gate}):
                        out_n = call(model, n)
                        logits = getattr(out_n, "logits", out_n)
                        loss = nn.functional.cross_entropy(logits.double(), y[n : n + 1])
                    (d,) = torch.autograd.grad(-loss, gate)
                    ig[n, c] += w * (abs(float(d[c])) if magnitude else float(d[c]))
        out[g.name] = ig
    return out


def test_singe_batched_exact_equals_naive_per_unit_loop():
    m, X, y = make(Residual, n=3)  # BatchNorm and residual sums (coupled groups)
    units = xprune.discover(m, X[:1])
    points, weights = path_points(3, "geometric")
    ref = naive_exact(m, units, X, y, points, weights)
    ref_path = naive_exact(m, units, X, y, points, weights, magnitude=True)
    crit = SInGE(n_steps=3, unit_batch=5)  # chunks that cut across units and groups, a shorter last one
    per = crit.per_sample(m, units, X, y)
    pairs = 2 * units.total
    assert crit.passes == 1 + math.ceil(pairs / 5)
    scores = xprune.score(m, (X, y), crit, normalize=None)  # default aggregate="path"
    sample = xprune.score(m, (X, y), "singe", n_steps=3, aggregate="sample", unit_batch=7, normalize=None)
    batch = xprune.score(m, (X, y), "singe", n_steps=3, aggregate="batch", unit_batch=64, normalize=None)
    strictly = False
    for g in units:
        torch.testing.assert_close(per[g.name], ref[g.name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scores[g.name], ref_path[g.name].mean(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(sample[g.name], ref[g.name].abs().mean(0), rtol=1e-5, atol=1e-7)
        # |integral| <= integral of |.|, per sample: the path aggregate bounds the ablation effect
        assert bool((scores[g.name] >= sample[g.name] - 1e-9).all())
        strictly |= bool((scores[g.name] > sample[g.name] + 1e-6).any())
        torch.testing.assert_close(batch[g.name], ref[g.name].sum(0).abs(), rtol=1e-5, atol=1e-7)
    assert strictly, "on this model some gradient changes sign along a path"


def test_singe_batched_exact_equals_naive_loop_on_heads_and_neurons():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=6,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = T.BertForSequenceClassification(cfg).double().eval()
    ids = torch.randint(0, 30, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    y = torch.tensor([0, 2])
    batch = {"input_ids": ids, "attention_mask": mask}
    points, weights = path_points(3, "geometric")
    for kind in ("heads", "neurons"):
        units = xprune.discover(model, {"input_ids": ids[:1]}, kind)
        ref = naive_exact(
            model,
            units,
            None,
            y,
            points,
            weights,
            call=lambda m, n: m(input_ids=ids[n : n + 1], attention_mask=mask[n : n + 1]),
        )
        per = SInGE(n_steps=3, unit_batch=4).per_sample(model, units, batch, y)
        for g in units:
            torch.testing.assert_close(per[g.name], ref[g.name], rtol=1e-5, atol=1e-8)


def test_singe_per_sample_completeness_with_the_loss():
    m, X, y = make(Residual, n=4)
    units = xprune.discover(m, X[:1])
    with torch.no_grad():
        present = nn.functional.cross_entropy(m(X), y, reduction="none").double()
    delta = {}
    for g in units:
        d = torch.zeros(len(y), g.size, dtype=torch.float64)
        for c in range(g.size):
            gate = torch.ones(g.size)
            gate[c] = 0
            with gated(m, units, {g.name: gate}), torch.no_grad():
                d[:, c] = nn.functional.cross_entropy(m(X), y, reduction="none").double() - present
        delta[g.name] = d  # L_n(c removed) - L_n(present)
    errors = []
    for K in (2, 8, 32):
        per = SInGE(n_steps=K).per_sample(m, units, X, y)
        errors.append(sum(float((per[g.name] - delta[g.name]).abs().sum()) for g in units))
    scale = sum(float(d.abs().sum()) for d in delta.values())
    assert errors[2] < errors[1] < errors[0], errors
    assert errors[2] < 0.05 * scale and errors[2] < 0.25 * errors[0], (errors, scale)


def test_singe_fast_is_the_former_default():
    m, X, y = make(ConvBN, n=10)
    units = xprune.discover(m, X[:1])
    K = 4
    ref = {}
    for g in units:  # uniform path, a layer's gates together, summed target logits, |sum over samples|
        ig = torch.zeros(g.size, dtype=torch.float64)
        for k in range(K):
            gate = torch.full((g.size,), 1.0 - k / K, requires_grad=True)
            with gated(m, units, {g.name: gate}):
                value = m(X).gather(1, y.view(-1, 1)).sum()
            ig += torch.autograd.grad(value, gate)[0].double() / K
        ref[g.name] = ig.abs()
    got = xprune.score(m, (X, y), "singe-fast", n_steps=K, normalize=None)
    for g in units:
        torch.testing.assert_close(got[g.name], ref[g.name], rtol=1e-5, atol=1e-7)
    assert isinstance(xprune.criteria.get("singe-fast"), SInGEFast)


def test_singe_sample_and_batch_aggregates_differ_when_signs_cancel():
    # unit 0 carries x to the explained logit: IG_n = x_n = +1 and -1; unit 1 reaches no output
    m = nn.Sequential(nn.Linear(1, 2), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[1.0], [1.0]]))
        m[0].bias.zero_()
        m[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        m[1].bias.zero_()
    X, y = torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 0])
    units = xprune.discover(m, X[:1])
    for mode in ("exact", "fast"):
        sample = SInGE(n_steps=4, mode=mode, objective="logit", aggregate="sample").compute(m, units, [(X, y)])
        path = SInGE(n_steps=4, mode=mode, objective="logit").compute(m, units, [(X, y)])  # constant gradient: equal
        torch.testing.assert_close(path["0"], torch.tensor([1.0, 0.0], dtype=torch.float64))
        batch = SInGE(n_steps=4, mode=mode, objective="logit", aggregate="batch").compute(m, units, [(X, y)])
        torch.testing.assert_close(sample["0"], torch.tensor([1.0, 0.0], dtype=torch.float64))
        torch.testing.assert_close(batch["0"], torch.tensor([0.0, 0.0], dtype=torch.float64))


# ---------------------------------------------------------------- integrated gradients


def test_integrated_gradients_completeness_error_shrinks_with_k():
    m, X, y = make(ConvBN)
    units = xprune.discover(m, X[:1])
    with torch.no_grad():
        delta = objective_value(m(X), y) - objective_value(m(torch.zeros_like(X)), y)
    errors = []
    for K in (2, 8, 32):
        a = IntegratedGradients(n_steps=K).attributions(m, units, [(X, y)])
        errors.append(sum(abs(float(a[n].sum() - delta)) for n in a))  # every group is a cut here
    assert errors[2] < errors[1] < errors[0] and errors[2] < 0.1 * errors[0]


def test_integrated_gradients_matches_captum_layer_conductance():
    captum = pytest.importorskip("captum.attr")
    m, X, y = make(ConvBN, n=6)
    units = xprune.discover(m, X[:1])
    baseline = 0.1 * torch.ones(1, 3, 8, 8)
    ours = IntegratedGradients(n_steps=10, rule="left", baseline=baseline).attributions(m, units, [(X, y)])
    for name, layer in (("conv2", m.conv2), ("fc1", m.fc1)):
        ref = captum.LayerConductance(m, layer).attribute(
            X, baselines=baseline.expand_as(X), target=y, n_steps=10, method="riemann_trapezoid"
        )
        ref = ref.sum(dim=(2, 3)) if ref.dim() == 4 else ref
        torch.testing.assert_close(ours[name], ref.double(), rtol=1e-4, atol=1e-5)


def test_integrated_gradients_scores_and_errors():
    m, X, y = make(MLP)
    s = xprune.score(m, (X, y), "integrated-gradients", n_steps=4, baseline=lambda x: x.mean(0, keepdim=True))
    assert set(s) == {"fc1", "fc2"}
    with pytest.raises(XpruneError, match="baseline"):
        IntegratedGradients(baseline="mean")
    with pytest.raises(xprune.DataError, match="broadcast"):
        xprune.score(m, (X, y), "integrated-gradients", baseline=torch.zeros(3))


# ---------------------------------------------------------------- entwined


class Tuner:
    """Deterministic fine-tuning for n steps that draws from the global RNG; counts steps."""

    def __init__(self, X, y, crash_on_call=None):
        self.X, self.y, self.calls, self.steps, self.crash = X, y, 0, [], crash_on_call

    def __call__(self, model, n):
        self.calls += 1
        if self.crash == self.calls:
            raise KeyboardInterrupt("simulated crash")
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        for _ in range(n):
            noise = 0.01 * torch.randn_like(self.X)
            loss = nn.functional.cross_entropy(model(self.X + noise), self.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        self.steps.append(n)


def test_entwined_reaches_ratio_and_spends_the_budget_exactly():
    m, X, y = make(ConvBN, n=24)
    tuner = Tuner(X, y)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = schedules.entwined(m, (X, y), "taylor", 0.5, steps=3, fine_tune_budget=10, fine_tune=tuner)
    assert tuner.steps == [3, 3, 4] and sum(tuner.steps) == 10
    assert res.history[-1]["fine_tune_total"] == 10
    total = res.history[-1]["total"]
    assert (
        res.removed
        == math.floor(0.5 * total)
        == total
        - sum(
            p.numel()
            for n, p in res.model.named_parameters()
            if n.endswith("bias") and n in ("conv1.bias", "conv2.bias", "fc1.bias")
        )
    )
    assert [r["removed"] for r in res.history] == [math.floor(0.5 * total * i / 3) for i in (1, 2, 3)]
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # input model untouched


def test_entwined_by_macs_and_special_cases():
    m, X, y = make(ConvBN, n=24)
    res = schedules.entwined(m, (X, y), "singe", 0.5, by="macs", steps=2, n_steps=2)
    assert res.history[-1]["macs_reduction"] >= 0.5
    from xprune.evaluate import count

    macs = count(res.model, X[:1])["macs"]
    assert macs == res.history[-1]["macs"]
    # steps=1 is one-shot + the whole budget at the end
    tuner = Tuner(X, y)
    one = schedules.entwined(m, (X, y), "weight", 0.4, steps=1, fine_tune_budget=7, fine_tune=tuner)
    assert tuner.steps == [7] and len(one.plans) == 1
    with pytest.raises(XpruneError, match="fine_tune"):
        schedules.entwined(m, (X, y), "weight", 0.4, fine_tune_budget=5)


def test_entwined_resumes_identically(tmp_path):
    m, X, y = make(ConvBN, n=24)
    kw = dict(criterion="random", ratio=0.5, steps=3, fine_tune_budget=6, seed=3)
    full = schedules.entwined(m, (X, y), fine_tune=Tuner(X, y), checkpoint_dir=tmp_path / "a", **kw)
    with pytest.raises(KeyboardInterrupt):
        schedules.entwined(m, (X, y), fine_tune=Tuner(X, y, crash_on_call=2), checkpoint_dir=tmp_path / "b", **kw)
    state = json.loads((tmp_path / "b" / "entwined.json").read_text())
    assert state["step"] == 1
    with pytest.raises(XpruneError, match="resume=True"):
        schedules.entwined(m, (X, y), fine_tune=Tuner(X, y), checkpoint_dir=tmp_path / "b", **kw)
    with pytest.raises(XpruneError, match="other settings"):
        schedules.entwined(
            m, (X, y), fine_tune=Tuner(X, y), checkpoint_dir=tmp_path / "b", resume=True, **dict(kw, ratio=0.4)
        )
    tuner = Tuner(X, y)
    resumed = schedules.entwined(m, (X, y), fine_tune=tuner, checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert tuner.steps == [2, 2]
    assert [p.remove for p in resumed.plans] == [p.remove for p in full.plans]
    assert resumed.history == full.history
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["entwined.json", "model-step3.pt"]
