"""Core pipeline: units -> scores -> plan -> pruned model, with the baseline criteria."""

import copy
import math

import pytest
import torch
from torch import nn

import xprune
from tiny_models import MLP, Branches, ConvBN, Residual, randomize_bn
from xprune import DataError, NothingToPrune, Plan, Scores, XpruneError
from xprune.criteria import HookedCriterion, register

BASELINES = ["weight", "l2", "gradient", "taylor", "activation", "random"]


def make(cls, seed=0):
    torch.manual_seed(seed)
    model = randomize_bn(cls(), seed).eval()
    if cls is MLP:
        X = torch.randn(24, 6)
        y = torch.randint(0, 4, (24,))
    else:
        X = torch.randn(24, 3, 8, 8)
        y = torch.randint(0, 5, (24,))
    return model, X, y


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- units


def test_units_follow_the_dependency_graph():
    m, X, _ = make(Residual)
    units = xprune.discover(m, X[:1])
    by_name = {g.name: g for g in units}
    # the stem's channels are joined to block 1's second conv by the residual sum
    assert by_name["stem"].producers == ("stem", "a2")
    assert {"bn0", "abn2", "a1", "b1", "short"} <= set(by_name["stem"].members)
    # block 2's second conv and the projection shortcut share their channels, and feed the classifier
    assert by_name["b2"].producers == ("b2", "short") and "fc" in by_name["b2"].members
    assert "fc" not in by_name  # the classifier is never pruned by default
    assert [g.name for g in units] == ["stem", "a1", "b1", "b2"]


def test_units_concat_and_depthwise():
    m, X, _ = make(Branches)
    units = xprune.discover(m, X[:1])
    g = units["left"]
    assert g.size == 10 and set(g.producers) == {"left", "right", "dw"}
    # the right branch's channels are units 4..9 of the concatenation
    assert g.units_of("right", 6).tolist() == [4, 5, 6, 7, 8, 9]
    assert g.units_of("left", 4).tolist() == [0, 1, 2, 3]


def test_output_layer_only_when_asked():
    m, X, _ = make(MLP)
    assert [g.name for g in xprune.discover(m, X[:1])] == ["fc1", "fc2"]
    assert [g.name for g in xprune.discover(m, X[:1], include_output=True)] == ["fc1", "fc2", "out"]
    assert [g.name for g in xprune.discover(m, X[:1], ignore=["fc2"])] == ["fc1"]
    w = xprune.discover(m, X[:1], "weights")
    assert [(g.name, g.size) for g in w] == [("fc1", 60), ("fc2", 90)]


# ---------------------------------------------------------------- removal == masking


@pytest.mark.parametrize("cls", [ConvBN, Residual, Branches, MLP])
@pytest.mark.parametrize("criterion", BASELINES)
@pytest.mark.parametrize("scope", ["global", "local"])
def test_remove_equals_mask(cls, criterion, scope):
    m, X, y = make(cls)
    scores = xprune.score(m, (X, y), criterion)
    for ratio in (0.3, 0.7):
        plan = xprune.select(scores, ratio, scope=scope)
        removed = xprune.apply(m, plan, "remove")
        masked = xprune.apply(m, plan, "mask")
        with torch.no_grad():
            diff = (removed(X) - masked(X)).abs().max().item()
        assert diff <= 1e-5, (cls.__name__, criterion, ratio, diff)
        assert n_params(removed) < n_params(m)
        assert n_params(masked) == n_params(m)


def test_parameter_count_drops_exactly():
    m, _X, _y = make(ConvBN)
    # conv1 (3->8, 3x3) -> bn1 -> conv2 (8->6, 3x3) -> bn2 -> fc1 (96->12) -> fc2 (12->5)
    plan = Plan(
        "channels",
        {"conv1": [0, 3, 5], "conv2": [1], "fc1": [2, 4]},
        {"conv1": 8, "conv2": 6, "fc1": 12},
        example={"shape": [1, 3, 8, 8], "dtype": "float32"},
    )
    pruned = xprune.apply(m, plan)
    conv1 = 3 * (3 * 9 + 1 + 2)  # filters + bias + BN weight/bias
    conv2_in = 3 * 6 * 9
    conv2 = 1 * ((8 - 3) * 9 + 1 + 2)  # one remaining-width filter, bias, BN
    fc1_in = 1 * 16 * (12)  # one channel of 4x4 positions into 12 neurons ...
    fc1_in -= 1 * 16 * 2  # ... of which 2 neurons are removed anyway
    fc1 = 2 * ((6 * 16) + 1)  # two neurons with all their inputs, and their biases
    fc2_in = 2 * 5
    expected = n_params(m) - (conv1 + conv2_in + conv2 + fc1_in + fc1 + fc2_in)
    assert n_params(pruned) == expected
    assert pruned.conv1.out_channels == 5 and pruned.conv2.in_channels == 5
    assert pruned.conv2.out_channels == 5 and pruned.fc1.in_features == 5 * 16
    assert pruned.fc1.out_features == 10 and pruned.fc2.in_features == 10


@pytest.mark.parametrize("cls", [ConvBN, Residual, Branches])
def test_shapes_follow_plan(cls):
    m, X, y = make(cls)
    plan = xprune.select(xprune.score(m, (X, y), "taylor"), 0.5)
    pruned = xprune.apply(m, plan)
    modules = dict(pruned.named_modules())
    for name, size in plan.sizes.items():
        root = modules[plan.roots[name]]
        kept = size - len(plan.remove[name])
        assert (root.out_channels if isinstance(root, nn.Conv2d) else root.out_features) == kept


def test_user_model_untouched_unless_inplace():
    m, X, y = make(Residual)
    m.train()
    before = copy.deepcopy(m.state_dict())
    for crit in BASELINES:
        xprune.score(m, (X, y), crit)
    plan = xprune.select(xprune.score(m, (X, y), "taylor"), 0.5)
    xprune.apply(m, plan)
    xprune.apply(m, plan, "mask")
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and all(mod.training for mod in m.modules())
    assert all(p.grad is None for p in m.parameters())
    pruned = xprune.apply(m, plan, inplace=True)
    assert pruned is m and n_params(m) < sum(
        v.numel() for k, v in before.items() if "running" not in k and "num_batches" not in k
    )


def test_inplace_failure_leaves_model_whole():
    m, _X, _y = make(ConvBN)
    before = copy.deepcopy(m.state_dict())
    bad = Plan(
        "channels",
        {"conv1": [0], "fc1": [0]},
        {"conv1": 8, "fc1": 99},
        example={"shape": [1, 3, 8, 8], "dtype": "float32"},
    )
    with pytest.raises(XpruneError, match="fc1"):
        xprune.apply(m, bad, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_weights_kind_masks_exactly():
    m, X, y = make(MLP)
    scores = xprune.score(m, (X, y), "weight", units="weights")
    plan = xprune.select(scores, 0.5)
    assert plan.n_removed == math.floor(0.5 * 150)
    masked = xprune.apply(m, plan, "mask")
    for name in ("fc1", "fc2"):
        w0, w1 = getattr(m, name).weight.flatten(), getattr(masked, name).weight.flatten()
        gone = torch.tensor(plan.remove[name], dtype=torch.long)
        assert torch.all(w1[gone] == 0)
        keep = torch.ones_like(w0, dtype=torch.bool)
        keep[gone] = False
        assert torch.equal(w0[keep], w1[keep])
    # global magnitude pruning removes exactly the smallest |w|
    all_w = torch.cat([m.fc1.weight.flatten(), m.fc2.weight.flatten()]).abs()
    removed = torch.cat([m.fc1.weight.flatten()[plan.remove["fc1"]], m.fc2.weight.flatten()[plan.remove["fc2"]]]).abs()
    assert removed.max() <= all_w.sort().values[plan.n_removed]
    with pytest.raises(XpruneError, match="mask"):
        xprune.apply(m, plan, "remove")
    pruned = xprune.prune(m, (X, y), "taylor", 0.4, units="weights")
    assert sum(int((getattr(pruned, n).weight == 0).sum()) for n in ("fc1", "fc2")) >= 60


# ---------------------------------------------------------------- criteria vs hand computation


def _hand_mlp(m, X, y):
    """Activations and gradients of the target logit at fc1/fc2, by explicit chain rule."""
    W1, b1, W2, b2, W3 = m.fc1.weight, m.fc1.bias, m.fc2.weight, m.fc2.bias, m.out.weight
    with torch.no_grad():
        z1 = X @ W1.T + b1
        h1 = z1.clamp(min=0)
        z2 = h1 @ W2.T + b2
        g2 = W3[y] * (z2 > 0).float()  # d logit_y / d z2
        g1 = (g2 @ W2) * (z1 > 0).float()  # d logit_y / d z1
    return {"fc1": (z1, g1), "fc2": (z2, g2)}


def test_baselines_match_hand_computation():
    m, X, y = make(MLP)
    hand = _hand_mlp(m, X, y)
    opts = dict(normalize=None)
    s = xprune.score(m, (X, y), "weight", **opts)
    assert torch.allclose(s["fc1"], m.fc1.weight.abs().sum(1).double())
    s = xprune.score(m, (X, y), "l2", **opts)
    assert torch.allclose(s["fc2"], m.fc2.weight.norm(dim=1).double())
    s = xprune.score(m, (X, y), "gradient", **opts)
    for k, (_a, g) in hand.items():
        assert torch.allclose(s[k], g.mean(0).abs().double(), atol=1e-6)
    s = xprune.score(m, (X, y), "taylor-mean", **opts)  # |mean over samples|: signs of samples cancel
    for k, (a, g) in hand.items():
        assert torch.allclose(s[k], (a * g).mean(0).abs().double(), atol=1e-6)
    s = xprune.score(m, (X, y), "taylor-mean")  # default: L2-normalised per layer
    for k, (a, g) in hand.items():
        t = (a * g).mean(0).abs().double()
        assert torch.allclose(s[k], t / t.norm(), atol=1e-6)
    s = xprune.score(m, (X, y), "taylor", objective="logit", **opts)  # mean over samples of |per sample|
    for k, (a, g) in hand.items():
        assert torch.allclose(s[k], (a * g).abs().mean(0).double(), atol=1e-6)
    # Molchanov et al. 2017: the loss (cross-entropy of the label), per sample, then L2 per layer (eq. 9)
    d_logits = torch.softmax(m(X), 1).detach() - nn.functional.one_hot(y, 4)  # dCE_n/dlogits, one row per sample
    with torch.no_grad():
        z1 = X @ m.fc1.weight.T + m.fc1.bias
        z2 = z1.clamp(min=0) @ m.fc2.weight.T + m.fc2.bias
        g2 = (d_logits @ m.out.weight) * (z2 > 0).float()
        g1 = (g2 @ m.fc2.weight) * (z1 > 0).float()
    s = xprune.score(m, (X, y), "taylor")
    for k, t in (("fc1", (z1 * g1).abs().mean(0).double()), ("fc2", (z2 * g2).abs().mean(0).double())):
        assert torch.allclose(s[k], t / t.norm(), atol=1e-6)
    s = xprune.score(m, (X, y), "activation", **opts)
    for k, (a, _g) in hand.items():
        assert torch.allclose(s[k], a.abs().mean(0).double(), atol=1e-6)
    # the default for the other baselines: every layer's mean score 1
    s = xprune.score(m, (X, y), "activation")
    for k, (a, _g) in hand.items():
        t = a.abs().mean(0).double()
        assert torch.allclose(s[k], t / t.mean(), atol=1e-6)


def test_conv_criteria_average_over_space_and_sum_coupled_producers():
    m, X, y = make(Residual)
    acts = {}
    hooks = [getattr(m, n).register_forward_hook(lambda mod, i, o, n=n: acts.__setitem__(n, o)) for n in ("stem", "a2")]
    with torch.no_grad():
        m(X)
    for h in hooks:
        h.remove()
    s = xprune.score(m, (X, y), "activation", normalize=None, batch_size=7)  # several batches
    expected = acts["stem"].abs().mean(dim=(0, 2, 3)) + acts["a2"].abs().mean(dim=(0, 2, 3))
    assert torch.allclose(s["stem"], expected.double(), atol=1e-6)
    w = xprune.score(m, (X, y), "weight", normalize=None)
    assert torch.allclose(w["b2"], (m.b2.weight.abs().sum((1, 2, 3)) + m.short.weight.abs().sum((1, 2, 3))).double())


def test_gradient_targets_and_loss_objective():
    m, X, y = make(MLP)
    hand = _hand_mlp(m, X, torch.full_like(y, 2))
    s = xprune.score(m, (X, y), "gradient", target=2, normalize=None)
    assert torch.allclose(s["fc1"], hand["fc1"][1].mean(0).abs().double(), atol=1e-6)
    pred = m(X).argmax(1)
    s1 = xprune.score(m, (X, y), "taylor", target="predicted")
    s2 = xprune.score(m, (X, pred), "taylor")
    assert all(torch.allclose(s1[k], s2[k]) for k in s1)
    s3 = xprune.score(m, (X, y), "taylor", target=lambda out, labels: out.argmin(1))
    assert not torch.allclose(s3["fc1"], s1["fc1"])
    # loss objective: gradient of the cross-entropy, checked against autograd on the loss
    z1 = m.fc1(X).detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(m.out(m.act2(m.fc2(m.act1(z1)))), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, z1)
    s = xprune.score(m, (X, y), "gradient", objective="loss", normalize=None)
    assert torch.allclose(s["fc1"], (g.mean(0)).abs().double(), atol=1e-6)


def test_random_is_seeded():
    m, X, y = make(ConvBN)
    a = xprune.score(m, (X, y), "random", seed=1)
    b = xprune.score(m, None, "random", seed=1, example_inputs=X[:1])
    c = xprune.score(m, (X, y), "random", seed=2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1"], c["conv1"])


def test_dataloader_and_split_inputs_agree():
    m, X, y = make(ConvBN)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5)
    a = xprune.score(m, loader, "taylor")
    b = xprune.score(m, (X, y), "taylor")
    assert all(torch.allclose(a[k], b[k]) for k in a)


def test_user_criterion_plugs_in():
    @register("test-mean-grad-sq")
    class MeanGradSquared(HookedCriterion):
        """mean of squared gradients (a Fisher-like score)."""

        def reduce(self, activation, grad, unit_dim):
            return grad.double().pow(2).sum(dim=(0, 1))

        def finalize(self, total, count):
            return total / count

    assert "test-mean-grad-sq" in xprune.criteria.available()
    m, X, y = make(MLP)
    s = xprune.score(m, (X, y), "test-mean-grad-sq", normalize=None)
    hand = _hand_mlp(m, X, y)
    assert torch.allclose(s["fc2"], hand["fc2"][1].pow(2).mean(0).double(), atol=1e-6)
    pruned = xprune.prune(m, (X, y), MeanGradSquared, 0.5)
    assert pruned.fc1.out_features + pruned.fc2.out_features == 10


# ---------------------------------------------------------------- selection


def _scores(values, kind="channels"):
    return Scores({k: torch.tensor(v, dtype=torch.float64) for k, v in values.items()}, kind=kind)


def test_select_global_local_floor_round():
    s = _scores({"a": [0.1, 0.2, 0.3, 0.4], "b": [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]})
    g = xprune.select(s, 0.4)
    assert g.remove == {"a": [0, 1, 2], "b": [0]} and g.n_removed == 4
    g = xprune.select(s, 0.5)  # floor: 'a' keeps one unit, the rest comes from 'b'
    assert g.remove == {"a": [0, 1, 2], "b": [0, 1]}
    local = xprune.select(s, 0.5, scope="local")
    assert local.remove == {"a": [0, 1], "b": [0, 1, 2]}
    assert xprune.select(s, 0.4, min_keep=0.5).remove == {"a": [0, 1], "b": [0, 1]}
    rounded = xprune.select(s, 0.4, round_to=2)
    for name, idxs in rounded.remove.items():
        assert (rounded.sizes[name] - len(idxs)) % 2 == 0
    big = _scores({"a": torch.rand(37).tolist(), "b": torch.rand(50).tolist()})
    for ratio in (0.1, 0.5, 0.8):
        p = xprune.select(big, ratio, round_to=8)
        # each layer keeps a multiple of 8 channels, or all of them
        assert all((p.sizes[n] - len(r)) % 8 == 0 or not r for n, r in p.remove.items())
        assert abs(p.n_removed - ratio * 87) <= 8


def test_select_ratios_are_nested_and_exact():
    s = _scores({"a": torch.rand(30).tolist(), "b": torch.rand(20).tolist(), "c": torch.rand(10).tolist()})
    prev = set()
    for ratio in [i / 20 for i in range(20)]:
        p = xprune.select(s, ratio)
        assert p.n_removed == math.floor(ratio * 60 + 1e-9)
        now = {(k, i) for k, v in p.remove.items() for i in v}
        assert prev <= now
        prev = now


def test_select_by_macs_budget():
    """by="macs" removes (at most, and close to) the requested fraction of the whole model's MACs."""
    m, X, y = make(ConvBN)
    scores = xprune.score(m, (X, y), "weight")
    costs = xprune.unit_costs(m, scores, "macs")
    assert all(c > 0 for c in costs.values())
    base = xprune.evaluate.count(m, X[:1])["macs"]
    # per-unit costs over-count: together they claim far more than the model's MACs
    assert sum(plan_size * costs[k] for k, plan_size in {k: v.numel() for k, v in scores.items()}.items()) > 1.3 * base
    plan = xprune.select(scores, 0.4, by="macs", model=m)
    macs = xprune.evaluate.count(xprune.apply(m, plan), X[:1])["macs"]
    assert 0.4 - max(costs.values()) / base <= 1 - macs / base <= 0.4 + 1e-9
    assert plan.meta["macs_reduction"] == pytest.approx(1 - macs / base)
    with pytest.raises(XpruneError, match="CostModel"):
        xprune.select(scores, 0.4, by="macs", costs=costs)
    with pytest.raises(XpruneError, match="model="):
        xprune.select(scores, 0.4, by="macs")


def test_plan_and_scores_roundtrip(tmp_path):
    m, X, y = make(Residual)
    scores = xprune.score(m, (X, y), "taylor")
    for suffix in (".safetensors", ".pt"):
        scores.save(tmp_path / f"s{suffix}")
        back = Scores.load(tmp_path / f"s{suffix}")
        assert list(back) == list(scores) and all(torch.equal(back[k], scores[k]) for k in scores)
        assert back.members == scores.members and back.criterion == "taylor"
    plan = xprune.select(scores, 0.5)
    plan.save(tmp_path / "plan.json")
    again = Plan.load(tmp_path / "plan.json")
    assert again == plan
    text = str(plan)
    assert "stem" in text and f"remove {plan.n_removed} of {plan.n_total}" in text
    a = xprune.apply(m, plan)
    b = xprune.apply(m, again)
    with torch.no_grad():
        assert torch.equal(a(X), b(X))


# ---------------------------------------------------------------- bad input


def test_clear_errors():
    m, X, y = make(ConvBN)
    s = xprune.score(m, (X, y), "weight")
    for bad in (-0.1, 1.0, 1.5, "half"):
        with pytest.raises(XpruneError, match=r"ratio must be a number in \[0, 1\)"):
            xprune.select(s, bad)
    with pytest.raises(DataError, match="empty"):
        xprune.score(m, (X[:0], y[:0]), "taylor")
    with pytest.raises(DataError, match="empty"):
        xprune.score(m, [], "taylor")
    with pytest.raises(DataError, match="do not fit the model"):
        xprune.score(m, (torch.randn(4, 5, 8, 8), y[:4]), "taylor")
    with pytest.raises(DataError, match=r"labels must lie in \[0, 4\]"):
        xprune.score(m, (X, y + 7), "taylor")
    # fractional labels would be truncated to another class without a word; whole-number floats are fine
    with pytest.raises(DataError, match=r"integer class indices; got non-integer values such as \d\.5"):
        xprune.score(m, (X, y.float() + 0.5), "taylor")
    with pytest.raises(DataError, match="integer class indices"):
        xprune.data.Split(X, torch.full((len(X),), 0.25))
    assert torch.equal(xprune.score(m, (X, y.float()), "taylor")["conv1"], xprune.score(m, (X, y), "taylor")["conv1"])
    with pytest.raises(XpruneError, match=r"known criteria: .*taylor"):
        xprune.score(m, (X, y), "no-such-criterion")
    with pytest.raises(NothingToPrune, match="no prunable channels"):
        xprune.score(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)), (torch.randn(2, 4), torch.tensor([0, 1])), "weight")
    with pytest.raises(DataError, match="'meta' device"):
        xprune.score(m, (torch.empty(4, 3, 8, 8, device="meta"), y[:4]), "taylor")
    lstm = nn.Sequential(nn.LSTM(4, 8, batch_first=True))
    with pytest.raises(NothingToPrune, match=r"recurrent layers \(0: LSTM\) are not prunable"):
        xprune.discover(lstm, torch.randn(2, 5, 4))
    with pytest.raises(XpruneError, match="unknown unit kind"):
        xprune.score(m, (X, y), "weight", units="blocks")
    with pytest.raises(DataError, match="needs data"):
        xprune.score(m, None, "taylor")
    with pytest.raises(XpruneError, match="does not have"):
        other = make(MLP)[0]
        xprune.apply(other, xprune.select(s, 0.5))


def test_nan_inputs_and_scores_are_refused():
    m, X, y = make(ConvBN)
    Xn = X.clone()
    Xn[3, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or Inf"):
        xprune.score(m, (Xn, y), "taylor")
    broken = copy.deepcopy(m)
    with torch.no_grad():
        broken.conv2.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match=r"NaN/Inf scores for .*conv2"):
        xprune.score(broken, (X, y), "weight")


def test_an_option_the_criterion_does_not_take_is_refused_in_one_line():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    with pytest.raises(XpruneError, match=r"criterion 'taylor' takes no option 'seed'; its options: objective"):
        xprune.score(model, data, "taylor", seed=3)
    assert xprune.score(model, data, "random", seed=3)  # a criterion that takes it
