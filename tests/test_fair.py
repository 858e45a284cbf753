"""Taylor as Molchanov et al. published it, and per-layer normalisation by default (issue 19, items 2 and 4)."""

import warnings

import pytest
import torch
from torch import nn

import xprune
from tiny_models import ConvBN
from xprune.criteria import get


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _taylor_reference(model, layer, X, y):
    """Molchanov et al. 2017 eq. (8), one sample at a time with autograd: mean_n |1/M sum_m a * dC_n/da|."""
    captured = {}
    handle = layer.register_forward_hook(lambda m, i, o: captured.__setitem__("a", o))
    per_sample = []
    try:
        for i in range(len(X)):
            out = model(X[i : i + 1])
            loss = nn.functional.cross_entropy(out, y[i : i + 1])
            a = captured["a"]
            (g,) = torch.autograd.grad(loss, a)
            prod = (a * g).double()[0]  # [C, H, W] or [C]
            per_sample.append((prod.flatten(1).mean(1) if prod.dim() > 1 else prod).abs())
    finally:
        handle.remove()
    return torch.stack(per_sample).mean(0)


def test_taylor_is_molchanovs_per_sample_loss_criterion_on_channels():
    torch.manual_seed(0)
    model, (X, y) = ConvBN().eval(), _data()
    s = xprune.score(model, (X, y), "taylor", normalize=None, batch_size=4)  # two batches: sums across batches
    for name in ("conv1", "conv2", "fc1"):
        ref = _taylor_reference(model, dict(model.named_modules())[name], X, y)
        torch.testing.assert_close(s[name], ref, rtol=1e-5, atol=1e-12)
    # the default: Molchanov's per-layer L2 normalisation (eq. 9)
    d = xprune.score(model, (X, y), "taylor")
    for name in d:
        torch.testing.assert_close(d[name], s[name] / s[name].norm())
    assert d.meta["normalize"] == "l2"


def test_taylor_on_heads_is_the_per_sample_gate_gradient_of_the_loss():
    xt = pytest.importorskip("xprune.transformers")
    torch.manual_seed(0)
    model = xprune.models.build(
        "vit", input_shape=(1, 8, 8), num_classes=4, dim=16, depth=2, heads=4, mlp_dim=24
    ).eval()
    X, y = torch.randn(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 1])
    units = xprune.discover(model, X[:1], "heads")
    s = xprune.score(model, (X, y), "taylor", units, normalize=None)
    tokens = model.num_patches + 1
    ref = {g.name: torch.zeros(g.size, dtype=torch.float64) for g in units}
    for i in range(len(X)):  # Michel et al. 2019: |dL/dxi_h| per sample, xi_h a gate on head h
        with xt.gates(model, units) as gates:
            loss = nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, list(gates.values.values()))
        for name, gr in zip(gates.values, grads, strict=True):
            ref[name] += gr.double().abs() / tokens / len(X)
    for name in ref:
        torch.testing.assert_close(s[name], ref[name], rtol=1e-5, atol=1e-12)


class _Signs(nn.Module):
    """x -> fc1 (two neurons, identity weights) -> fc2: the sign of a * dO/da follows the sign of x."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 2)
        self.fc2 = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.eye(2))
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.5]]))
            self.fc2.bias.zero_()

    def forward(self, x):
        return self.fc2(self.fc1(x))


@pytest.mark.filterwarnings("ignore:the reference samples cover")
def test_taylor_takes_the_absolute_value_per_sample_and_taylor_mean_after_the_mean():
    model = _Signs()
    X = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # opposite activations, same class: products cancel in the mean
    y = torch.tensor([0, 0])
    units = xprune.discover(model, X[:1], "channels")
    assert [g.name for g in units] == ["fc1"]
    mean_form = xprune.score(model, (X, y), "taylor-mean", units, normalize=None)["fc1"]
    torch.testing.assert_close(mean_form, torch.zeros(2, dtype=torch.float64))  # logit: +w and -w cancel
    logit = xprune.score(model, (X, y), "taylor", units, normalize=None, objective="logit")["fc1"]
    torch.testing.assert_close(logit, torch.tensor([1.0, 2.0], dtype=torch.float64))  # |x w| per sample
    loss = xprune.score(model, (X, y), "taylor", units, normalize=None)["fc1"]
    p = torch.softmax(model(X), -1).detach()
    dlogit = torch.nn.functional.one_hot(y, 2) - p  # -dCE/dlogits
    per_sample = (X * (dlogit @ model.fc2.weight.detach())).abs()  # |a * dC/da|, one row per sample
    torch.testing.assert_close(loss, per_sample.double().mean(0))
    assert loss.min() > 0


def test_objective_defaults():
    from xprune.criteria.gradient import LOSS_BY_DEFAULT

    assert get("taylor").objective == "loss" and get("taylor-mean").objective == "logit"
    assert get("gradient").objective == "logit" and get("taylor", objective="logit").objective == "logit"
    # only the default falls back to the similarity under target="embedding"; a "loss" asked for is refused there
    assert get("taylor").objective is LOSS_BY_DEFAULT
    assert get("taylor", objective="loss").objective is not LOSS_BY_DEFAULT


# ----------------------------------------------------------------------------- per-layer normalisation


def _fractions(plan, scores):
    return {k: len(plan.remove.get(k, [])) / scores[k].numel() for k in scores}


def _small_vgg(seed):
    torch.manual_seed(seed)
    return xprune.models.build("vgg", input_shape=(1, 8, 8), num_classes=10).eval()  # 16/32/64/128 units


@pytest.mark.parametrize("criterion", ["weight", "l2"])
@pytest.mark.parametrize("seed", [0, 1])
def test_default_normalisation_keeps_magnitude_baselines_from_removing_whole_layers(criterion, seed):
    model, x = _small_vgg(seed), torch.randn(1, 1, 8, 8)
    default = xprune.score(model, None, criterion, example_inputs=x)
    raw = xprune.score(model, None, criterion, example_inputs=x, normalize=None)
    assert default.meta["normalize"] == "mean"
    f_default = _fractions(xprune.select(default, 0.5, warn=False), default)
    # default: every layer keeps units and loses some, near the global fraction (no layer all-or-nothing)
    assert all(0.3 <= f <= 0.7 for f in f_default.values()), f_default
    if criterion == "weight":  # unnormalised L1 norms grow with fan-in: the first layer goes but one unit, two stay
        f_raw = _fractions(xprune.select(raw, 0.5, warn=False), raw)
        n_first = raw["features.0"].numel()
        assert f_raw["features.0"] == (n_first - 1) / n_first and sorted(f_raw.values())[:2] == [0, 0], f_raw
    # a positive factor per layer: the local ranking gives the same plan either way
    assert xprune.select(default, 0.5, scope="local").remove == xprune.select(raw, 0.5, scope="local").remove


def test_default_normalisation_per_criterion_and_the_mean_option():
    expected = {
        "taylor": "l2",
        "taylor-mean": "l2",
        "weight": "mean",
        "l2": "mean",
        "gradient": "mean",
        "activation": "mean",
        "integrated-gradients": "mean",
        "singe": "mean",
        "singe-fast": "mean",
        "random": None,
    }
    for name, how in expected.items():
        assert type(get(name)).default_normalize == how, name
    from xprune.scores import normalize

    v = torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(normalize(v, "mean"), v / 2.0)
    zeros = torch.zeros(3, dtype=torch.float64)
    torch.testing.assert_close(normalize(zeros, "mean"), zeros)
    with pytest.raises(xprune.errors.XpruneError, match="use one of none, l1, l2, max, mean"):
        normalize(v, "median")


# ----------------------------------------------------------------------------- the demo chooses on val


def test_demo_chooses_the_criterion_on_the_val_split_and_reports_the_test_split(tmp_path):
    import io

    from rich.console import Console

    from xprune import data as xdata, demo, evaluate

    console = Console(file=io.StringIO(), width=160)
    r = demo.run(
        arch="mlp",
        criteria=["taylor", "weight", "random"],
        seeds=[0],
        n_per_class=5,
        out=tmp_path / "demo",
        cache_dir=str(tmp_path / "cache"),
        console=console,
        ratio=0.2,
    )
    val = {c["criterion"]: c for c in r["val_curves"]}
    test = {c["criterion"]: c for c in r["curves"]}
    assert set(val) == set(test) == {"taylor", "weight", "random"}
    assert r["chosen"] == max(r["val_auc"], key=r["val_auc"].get) and r["chosen_on"] == "val"
    for name in val:  # the AUCs are those of the curves of their split
        assert r["val_auc"][name] == pytest.approx(sum(val[name]["accuracies"]) / len(val[name]["accuracies"]))
        assert r["auc"][name] == pytest.approx(sum(test[name]["accuracies"]) / len(test[name]["accuracies"]))
    # the val curve is the val split's: recomputed here from the same reference samples
    ds = xdata.load("digits")
    model = xprune.models.pretrained("mlp", "digits", cache_dir=str(tmp_path / "cache"), progress=False)[0]
    reference = xdata.reference_samples(ds.train, 5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # curves run to ruinous rates on purpose
        again = evaluate.curve(model, reference, ds.val, "weight")
    assert again.accuracies == pytest.approx(val["weight"]["accuracies"])
    assert r["normalize"] == {"taylor": "l2", "weight": "mean", "random": None}
    prov = r["provenance"]
    assert {"command", "commit", "threads", "machine", "date"} <= set(prov)
    text = console.file.getvalue()
    assert "val AUC" in text and "test AUC" in text and "chosen on the val split" in text
