"""Interpretations Steered Pruning (xprune.steered) and explanation similarity (xprune.similarity)."""

import math

import numpy as np
import pytest
import torch

import xprune
from tiny_models import randomize_bn
from xprune import XpruneError
from xprune.errors import XpruneWarning
from xprune.models import build
from xprune.similarity import compare, explanation_similarity
from xprune.steered import ChannelGates, HyperGates, MacsModel, Selector, SteeredConfig, feature_layers, rbf, steer
from xprune.steered._stage import Interrupted
from xprune.steered.pipeline import resource_loss


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add contention on a shared machine
    yield
    torch.set_num_threads(n)


def tiny_resnet(seed=0, size=12):
    torch.manual_seed(seed)
    model = randomize_bn(build("resnet", input_shape=(1, size, size), num_classes=10, widths=(4, 8, 8)), seed).eval()
    X = torch.randn(48, 1, size, size)
    y = torch.randint(0, 10, (48,))
    return model, X, y


FAST = dict(predictor_steps=6, selector_steps=6, gate_steps=8, batch_size=8, checkpoint_every=3)


# ------------------------------------------------------------------ RBF masks


def test_rbf_range_peak_and_parametrisation():
    raw = torch.tensor([[0.0, 0.0, 0.0], [50.0, -50.0, -50.0], [-0.7, 0.3, 3.0], [0.2, 0.9, -4.0]])
    p = rbf.constrain(raw, min_width=0.05)
    assert (p[:, :2].abs() <= 1).all() and (p[:, 2] >= 0.05).all()  # centre inside, width >= min (float)
    assert torch.allclose(p[:, 0], torch.tanh(raw[:, 0])) and torch.allclose(
        p[:, 2], torch.nn.functional.softplus(raw[:, 2]) + 0.05
    )
    inner = p[[0, 2, 3]]
    assert torch.allclose(rbf.constrain(rbf.unconstrain(inner)), inner, atol=1e-5)
    m = rbf.rbf_mask(p, (9, 13))
    assert m.shape == (4, 1, 9, 13)
    assert (m >= 0).all() and (m <= 1).all() and (m[0] > 0).all()  # far from a narrow bump: underflow to 0
    assert torch.allclose(m.amax(dim=(-2, -1)), torch.ones(4))  # normalised to peak 1
    # the peak sits at the pixel nearest the centre; value at distance sigma is e^(-1/2) when centred on a pixel
    u, v = torch.linspace(-1, 1, 13), torch.linspace(-1, 1, 9)
    for n in range(4):
        i, j = divmod(int(m[n, 0].flatten().argmax()), 13)
        assert j == int((u - p[n, 0]).abs().argmin()) and i == int((v - p[n, 1]).abs().argmin())
    on_grid = torch.tensor([[u[6].item(), v[4].item(), 2 * (u[1] - u[0]).item()]])
    mm = rbf.rbf_mask(on_grid, (9, 13))[0, 0]
    assert mm[4, 6] == 1 and math.isclose(mm[4, 8].item(), math.exp(-0.5), rel_tol=1e-5)


def test_relaxed_bernoulli_samples_and_gradients():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.1, 0.5, 0.9]).repeat(20000, 1).requires_grad_(True)
    s = rbf.relaxed_bernoulli(probs, 0.5, g)
    assert (s >= 0).all() and (s <= 1).all()  # (0, 1) exactly; sigmoid saturates in float32
    assert torch.allclose((s > 0.5).float().mean(0), torch.tensor([0.1, 0.5, 0.9]), atol=0.02)  # P(s > 1/2) = p
    s.sum().backward()
    assert (probs.grad >= 0).all() and (probs.grad.mean(0) > 0).all()  # reparametrised: larger p, larger s
    with pytest.raises(XpruneError):
        rbf.constrain(torch.zeros(2, 2))
    assert rbf.total_variation(torch.ones(1, 1, 4, 4)) == 0


def test_selector_reads_encoder_features():
    model, X, y = tiny_resnet()
    layers = feature_layers(model, X)
    assert layers == ["stages.0.0.relu2", "stages.1.0.relu2", "stages.2.0.relu2"]  # 12x12, 6x6, 3x3
    sel = Selector([4, 8, 8], 10)
    with xprune.steered.features(model, layers) as store:
        model(X[:5])
        p = sel([store[n] for n in layers], y[:5])
    assert p.shape == (5, 3) and (p[:, :2].abs() < 1).all() and (p[:, 2] > sel.min_width).all()


# ------------------------------------------------------------------ gates and MACs


def test_gates_hard_at_evaluation_and_removal_equals_masking():
    model, X, _ = tiny_resnet(1)
    units = xprune.discover(model, X[:1])
    gates = ChannelGates(units, init=0.0)
    torch.manual_seed(3)
    with torch.no_grad():
        for a in gates.logits:
            a.copy_(torch.randn(a.shape))
    gated = xprune.steered.explainer.frozen(__import__("copy").deepcopy(model))
    with pytest.raises(XpruneError, match="like="):
        gates.attach(gated)  # a copy: its gate sites must be found on the original
    gates.attach(gated, like=model)
    gates.sample(4, torch.Generator().manual_seed(0), hard=True)
    for v in gates._values.values():  # straight-through: hard values in the forward
        assert set(v.detach().unique().tolist()) <= {0.0, 1.0}
    gates.set_hard()
    for n, a in zip(gates.names, gates.logits, strict=True):
        assert torch.equal(gates._values[n][0], (a > 0).float())
    plan = gates.plan()
    assert plan.n_removed > 0
    with torch.no_grad():
        out_gated = gated(X)
        removed = xprune.apply(model, plan, "remove").eval()
        masked = xprune.apply(model, plan, "mask").eval()
        assert torch.allclose(out_gated, removed(X), atol=1e-5)
        assert torch.allclose(out_gated, masked(X), atol=1e-5)
        gates.open()
        assert torch.allclose(gated(X), model(X))
    gates.detach()


def test_macs_model_is_exact_and_starts_from_unit_costs():
    model, X, y = tiny_resnet(2)
    units = xprune.discover(model, X[:1])
    mm = MacsModel(model, units, X[:1])
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        remove = {
            u.name: sorted(
                torch.randperm(u.size, generator=g)[: int(torch.randint(0, u.size, (1,), generator=g))].tolist()
            )
            for u in units
        }
        plan = xprune.Plan(
            "channels", remove, {u.name: u.size for u in units}, {}, {u.name: u.root for u in units}, units.example
        )
        predicted, measured = mm.check(model, plan, X[:1])
        assert predicted == measured
    scores = xprune.score(model, (X, y), "taylor")
    assert mm.costs == xprune.unit_costs(model, scores, "macs", X[:1])  # first-order terms = unit_costs


def test_macs_term_reaches_target_on_reference_resnet(tmp_path):
    """Random-init reference ResNet (MNIST shape): the evaluated gates land within 5 points of the MACs target."""
    torch.manual_seed(0)
    model = build("resnet", input_shape=(1, 28, 28), num_classes=10).eval()
    X, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    # the two-sided MACs term (resource="quadratic"): the one-sided log hinge of the default stops pulling
    # at the target and, in 150 steps, Adam's momentum carries the hypernetwork past it (docs/steered.md)
    res = steer(
        model,
        (X, y),
        0.5,
        cache_dir=None,
        progress=False,
        predictor_steps=0,
        selector_steps=0,
        gate_steps=150,
        batch_size=4,
        resource="quadratic",
        macs_weight=20.0,
    )
    assert isinstance(res.gates, HyperGates)  # the default generator
    plan = res.plan()  # default: the closed gates, threshold 0, no calibration
    predicted, measured = res.macs.check(model, plan, X[:1])
    achieved = 1 - measured / res.macs.base
    assert abs(achieved - 0.5) <= 0.05, achieved
    # the raw plan reports what it removes: MacsModel.of_plan and the measured count agree
    assert predicted == measured and plan.meta["macs_reduction"] == pytest.approx(achieved, abs=1e-12)
    assert plan.meta["raw_macs_reduction"] == plan.meta["macs_reduction"] and plan.meta["macs_target"] == 0.5
    assert not plan.meta["calibrated"]
    cal = res.plan(calibrate=True)  # the optional last step: exactly the target
    assert abs(cal.meta["macs_reduction"] - 0.5) < 0.01 and cal.meta["raw_macs_reduction"] == pytest.approx(achieved)


# ------------------------------------------------------------------ the hypernetwork generator and the gate loss


@pytest.fixture(scope="module")
def stage_cache(tmp_path_factory):
    """One cache for the tests below: the predictor and selector are trained once and reused."""
    return tmp_path_factory.mktemp("steered-cache")


def test_hypernet_shapes_and_frozen_inputs(stage_cache):
    model, X, y = tiny_resnet(6)
    units = xprune.discover(model, X[:1])
    gates = HyperGates(units, seed=3)
    L, sizes = len(gates.names), [units[n].size for n in gates.names]
    assert gates.names == [g.name for g in units if g.size >= 2] and L >= 3
    assert gates.inputs.shape == (L, 1, 64) and not gates.inputs.requires_grad
    flat = gates.inputs.detach().reshape(L, 64)
    assert torch.allclose(flat @ flat.T, torch.eye(L), atol=1e-5)  # orthogonal init (L <= 64 rows)
    gru = gates.gru
    assert isinstance(gru, torch.nn.GRU) and gru.bidirectional and (gru.input_size, gru.hidden_size) == (64, 128)
    assert gates.features().shape == (L, 256) and (gates.features() >= 0).all()  # ReLU(LayerNorm(256))
    for head, c in zip(gates.heads, sizes, strict=True):
        assert head.bias is None and head.weight.shape == (c, 256)
        assert torch.nn.utils.parametrize.is_parametrized(head, "weight")  # weight norm: g * v / |v|
        g_, v = head.parametrizations.weight.original0, head.parametrizations.weight.original1
        assert torch.allclose(head.weight, g_ * v / v.norm(dim=1, keepdim=True), atol=1e-6)
    assert [a.shape[0] for a in gates.gate_logits()] == sizes
    # base 3 is added to the generated logits; one gate sample per batch, shared by its images
    for a, raw in zip(gates.gate_logits(), gates.raw_logits(), strict=True):
        assert torch.allclose(a, raw + 3.0)
    gates.sample(5, torch.Generator().manual_seed(0))
    assert all(v.shape == (1, c) for v, c in zip(gates._values.values(), sizes, strict=True))
    # training moves the GRU and the heads, never the fixed inputs
    before = {k: v.clone() for k, v in HyperGates(units, seed=0).state_dict().items()}
    res = steer(model, (X, y), 0.5, cache_dir=stage_cache, progress=False, units=units, **FAST)
    after = res.gates.state_dict()
    assert torch.equal(after["inputs"], before["inputs"])
    assert not torch.equal(after["gru.weight_ih_l0"], before["gru.weight_ih_l0"])
    assert not torch.equal(
        after["heads.0.parametrizations.weight.original1"], before["heads.0.parametrizations.weight.original1"]
    )


def test_hypernet_hard_gates_are_the_threshold_rule():
    model, X, _ = tiny_resnet(7)
    units = xprune.discover(model, X[:1])
    gates = HyperGates(units, base=0.0, seed=1)  # base 0: about half the gates closed
    logits = [a.detach() for a in gates.gate_logits()]
    gates.set_hard()
    for n, a in zip(gates.names, logits, strict=True):
        assert torch.equal(gates._values[n][0], (a > 0).float())  # 1[l + b > 0]
    plan = gates.plan()
    for n, a in zip(gates.names, logits, strict=True):
        closed = (a <= 0).nonzero().flatten().tolist()
        assert plan.remove[n] == (closed if len(closed) < a.numel() else sorted(set(closed) - {int(a.argmax())}))
    assert plan.n_removed > 0
    removed = gates.hard_removed()
    assert [float(removed[n].detach()) for n in gates.names] == [float((a <= 0).sum()) for a in logits]
    # Gumbel noise (the authors' sampler): a hard sample is open with probability 1 - exp(-e^a)
    gates.per_sample = True  # 4000 draws in one call
    opened = (torch.cat(list(gates.relaxed(4000, torch.Generator().manual_seed(0)).values()), 1) > 0.5).float()
    want = torch.cat([-torch.expm1(-torch.exp(a)) for a in logits])
    assert torch.allclose(opened.mean(0), want, atol=0.04)
    assert torch.allclose(torch.cat(list(gates.probabilities().values())).detach(), want)


def test_resource_term_is_the_authors_log_hinge():
    kept = 0.5
    below = torch.tensor(0.4, requires_grad=True)
    loss = resource_loss(below, kept)
    loss.backward()
    assert loss.item() == 0 and below.grad.item() == 0  # zero, and no pull, at or below the target
    above = torch.tensor(0.8, requires_grad=True)
    loss = resource_loss(above, kept)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(0.8 / 0.5)) and above.grad.item() == pytest.approx(1 / 0.8)
    assert resource_loss(torch.tensor(0.8), kept, "quadratic").item() == pytest.approx(0.09)


def test_explanation_term_decreases_and_steers_the_kept_channels(stage_cache):
    model, X, y = tiny_resnet(8)
    units = xprune.discover(model, X[:1])
    opts = dict(FAST, gate_steps=40, cache_dir=stage_cache, progress=False, units=units)
    # resource term off (target 0: r <= 1 = p always) and gates starting half closed (base 0):
    # the interpretation-similarity term alone trains the generator, and it falls
    res = steer(model, (X, y), 0.0, gate_base=0.0, **opts)
    expl = [h["expl"] for h in res.stages["gates"]["history"]]
    assert all(h["resource"] == 0 for h in res.stages["gates"]["history"])
    assert np.mean(expl[-10:]) < 0.8 * np.mean(expl[:10]), (np.mean(expl[:10]), np.mean(expl[-10:]))
    # at a 50% MACs target, the explanation term changes which channels are kept
    with_e = steer(model, (X, y), 0.5, **opts).plan()
    without = steer(model, (X, y), 0.5, explanation_weight=0.0, **opts).plan()
    assert with_e.remove != without.remove


def test_resource_term_pulls_macs_down_and_prune_warns_when_raw_gates_miss(stage_cache):
    model, X, y = tiny_resnet(9)
    units = xprune.discover(model, X[:1])
    opts = dict(FAST, cache_dir=stage_cache, progress=False, units=units, explanation_weight=0.0)
    res = steer(model, (X, y), 0.5, **dict(opts, gate_steps=60))
    macs = [h["macs"] for h in res.stages["gates"]["history"]]
    assert macs[0] == 1.0 and min(macs) <= 0.6 and res.raw_macs_reduction > 0.3  # pulled from 1 towards p = 0.5
    # two steps cannot reach the target: the raw gates miss it by more than 5 points, prune() says so
    short = steer(model, (X, y), 0.5, **dict(opts, gate_steps=2))
    with pytest.warns(XpruneWarning, match="raw steered gates remove"):
        _, plan, _ = xprune.steered.prune(model, (X, y), 0.5, result=short, fine_tune_steps=0, progress=False)
    assert plan.meta["raw_macs_reduction"] < 0.45 and plan.meta["macs_target"] == 0.5
    with pytest.warns(XpruneWarning):
        _, cal, _ = xprune.steered.prune(
            model, (X, y), 0.5, result=short, calibrate=True, fine_tune_steps=0, progress=False
        )
    assert abs(cal.meta["macs_reduction"] - 0.5) < 0.05


def test_free_gates_still_work(stage_cache):
    model, X, y = tiny_resnet(10)
    units = xprune.discover(model, X[:1])
    assert SteeredConfig(generator="free").gate_lr == 0.03 and SteeredConfig().gate_lr == 1e-3
    res = steer(
        model,
        (X, y),
        0.5,
        generator="free",
        cache_dir=stage_cache,
        progress=False,
        units=units,
        **dict(FAST, gate_steps=30, gate_lr=0.2),
    )
    assert isinstance(res.gates, ChannelGates)
    assert not isinstance(res.gates, HyperGates)
    plan = res.plan()
    assert plan.n_removed > 0 and xprune.apply(model, plan)(X[:2]).shape == (2, 10)
    with pytest.raises(XpruneError, match="generator must be one of"):
        SteeredConfig(generator="gru")


# ------------------------------------------------------------------ pipeline, criterion, caching


def test_pipeline_cached_resumable_and_criterion(tmp_path):
    model, X, y = tiny_resnet(4)
    ref = steer(model, (X, y), 0.4, cache_dir=tmp_path / "a", progress=False, **FAST)
    assert set(ref.stages) == {"predictor", "selector", "gates"}
    assert all(s["seconds"] >= 0 and not s["cached"] for s in ref.stages.values())
    # interrupted in every stage, then resumed: the same result as the uninterrupted run
    cache = tmp_path / "b"
    for stage in ("predictor", "selector", "gates"):
        with pytest.raises(Interrupted):
            steer(model, (X, y), 0.4, cache_dir=cache, progress=False, stop_after={stage: 4}, **FAST)
    res = steer(model, (X, y), 0.4, cache_dir=cache, progress=False, **FAST)
    assert res.stages["gates"]["resumed_from"] == 4 and res.stages["gates"]["steps"] == FAST["gate_steps"]
    for a, b in zip(ref.gates.gate_logits(), res.gates.gate_logits(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    again = steer(model, (X, y), 0.4, cache_dir=cache, progress=False, **FAST)
    assert all(s["cached"] for s in again.stages.values())
    # the "steered" criterion: gate logits as scores, usable with select / apply
    # (xprune.score takes batch_size for itself: the criterion trains with the default batch of 32)
    opts = {k: v for k, v in FAST.items() if k != "batch_size"}
    ref = steer(model, (X, y), 0.4, cache_dir=cache, progress=False, **opts)
    scores = xprune.score(model, (X, y), "steered", reduction=0.4, cache_dir=cache, **opts)
    assert scores.criterion == "steered"
    for n, a in zip(ref.gates.names, ref.gates.gate_logits(), strict=True):
        assert torch.allclose(scores[n], a.double())
    plan = xprune.select(scores, 0.3)
    assert xprune.apply(model, plan)(X[:2]).shape == (2, 10)
    with pytest.raises(XpruneError, match="unknown steered options"):
        SteeredConfig.from_options(sparsty=1.0)


# ------------------------------------------------------------------ explanation similarity


def test_compare_scores():
    a = torch.arange(20.0).reshape(2, 10)
    rho, top = compare(a, 2 * a + 1, top_k=0.2)
    assert torch.allclose(rho, torch.ones(2, dtype=torch.float64)) and torch.equal(
        top, torch.ones(2, dtype=torch.float64)
    )
    rho, top = compare(a, -a, top_k=0.2)
    assert torch.allclose(rho, -torch.ones(2, dtype=torch.float64)) and (top == 0).all()
    rho, _ = compare(a, torch.zeros(2, 10))
    assert (rho == 0).all()  # constant map: correlation defined as 0


@pytest.mark.parametrize("method", ["gradxinput", "lrp"])
def test_explanation_similarity(method):
    if method == "lrp" and "lrp" not in xprune.criteria.available():
        pytest.skip("xprune.lrp not available")
    model, X, y = tiny_resnet(5)
    same = explanation_similarity(model, model, (X, y), method=method)
    assert same.pearson == pytest.approx(1.0) and same.topk == pytest.approx(1.0) and same.n == len(X)
    plan = xprune.select(xprune.score(model, (X, y), "taylor"), 0.5)
    pruned = xprune.apply(model, plan).eval()
    sim = explanation_similarity(model, pruned, (X, y), method=method, max_samples=20, batch_size=8)
    assert sim.n == 20 and sim.method == method

    # reference, computed here: the heatmaps one sample at a time (gradient x input with autograd here; LRP by
    # xprune.lrp.explain, the heatmap the method names), numpy's Pearson correlation and the top-10% overlap
    def heat(m, i):
        if method == "lrp":
            from xprune.lrp import explain

            return explain(m, X[i : i + 1], y[i : i + 1], "epsilon-plus")[0].sum(0)
        x = X[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(x)[0, y[i]], x)
        return (x * g).detach()[0].sum(0)

    rhos, hits = [], []
    for i in range(20):
        a, b = heat(model, i).reshape(-1).double().numpy(), heat(pruned, i).reshape(-1).double().numpy()
        rhos.append(np.corrcoef(a, b)[0, 1])
        k = round(0.1 * a.size)
        hits.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k)
    assert sim.pearson == pytest.approx(float(np.mean(rhos)), abs=1e-6)
    assert sim.pearson_std == pytest.approx(float(np.std(rhos, ddof=1)), abs=1e-6)
    assert sim.topk == pytest.approx(float(np.mean(hits)), abs=1e-9)
