"""Evaluation, curves, report and the command line."""

import json

import numpy as np
import pytest
import torch

import xprune
from tiny_models import ConvBN, randomize_bn
from xprune import evaluate, report
from xprune.cli import main
from xprune.models import build


@pytest.fixture(scope="module")
def trained_mlp():
    """A small MLP trained on digits in a second or two, and its data."""
    from xprune.data import load
    from xprune.models import train

    ds = load("digits", seed=0)
    torch.manual_seed(0)
    model = build("mlp", input_shape=ds.input_shape, num_classes=10, hidden=(48, 32))
    train(model, ds.train, epochs=15, seed=0, progress=False)
    return model.eval(), ds


def test_accuracy_restricted_to_classes():
    X = torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))  # always predicts 2, then 1 among {0, 1}
    assert evaluate.accuracy(model, (X, y)) == pytest.approx(2 / 6)
    assert evaluate.accuracy(model, (X, y), classes=[0, 1]) == pytest.approx(2 / 4)
    with pytest.raises(xprune.DataError):
        evaluate.accuracy(model, (X[:0], y[:0]))


def test_curve_auc_is_mean_and_starts_at_unpruned_accuracy(trained_mlp):
    model, ds = trained_mlp
    from xprune.data import reference_samples

    ref = reference_samples(ds.train, 5, seed=0)
    c = evaluate.curve(model, ref, ds.test, "taylor")
    assert c.rates == [round(0.05 * i, 2) for i in range(20)]
    assert c.auc == pytest.approx(float(np.mean(c.accuracies)))
    assert c.accuracies[0] == pytest.approx(evaluate.accuracy(model, ds.test))
    assert c.removed == sorted(c.removed) and c.removed[0] == 0
    # masking and physical removal give the same curve
    r = evaluate.curve(model, ref, ds.test, "taylor", rates=[0.0, 0.3, 0.6], mode="remove")
    assert r.accuracies == [c.at(0.0), c.at(0.3), c.at(0.6)]
    # with a fine-tuning hook the model passed in is left alone
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def tune(m):
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(0.5)

    evaluate.curve(model, ref, ds.test, "weight", rates=[0.0, 0.2], fine_tune=tune)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_latency_and_macs_fall_after_half_the_channels_go():
    torch.manual_seed(0)
    model = build("resnet", input_shape=(1, 28, 28), num_classes=10, widths=(16, 32, 64)).eval()
    x = torch.randn(1, 1, 28, 28)
    plan = xprune.select(xprune.score(model, None, "l2", example_inputs=x), 0.5, scope="local")
    pruned = xprune.apply(model, plan)
    before, after = evaluate.count(model, x), evaluate.count(pruned, x)
    assert after["macs"] < 0.5 * before["macs"] and after["params"] < 0.5 * before["params"]
    xb = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(pruned(xb), xprune.apply(model, plan, mode="mask")(xb), rtol=1e-4, atol=1e-5)


def test_latency_is_the_median_of_the_timed_passes_after_warmup(monkeypatch):
    # no wall-clock comparison (flaky on a shared machine): a fake clock that each forward pass advances by a
    # known amount, so the median and the interquartile range are known exactly
    import types

    from xprune import measure

    clock = {"t": 0.0}
    durations = iter([9.0, 9.0, 0.004, 0.001, 0.003, 0.002, 0.005])  # two warm-up passes, then five timed

    class Timed(torch.nn.Module):
        def forward(self, x):
            clock["t"] += next(durations)
            return x

    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=lambda: clock["t"]))
    r = measure.latency(Timed(), torch.zeros(3, 2), warmup=2, repeats=5)
    assert r["ms"] == pytest.approx(3.0) and r["batch_size"] == 3 and r["threads"] == torch.get_num_threads()
    assert r["ms_iqr"] == pytest.approx(1000 * (0.0045 - 0.0015))  # statistics.quantiles, exclusive method


def test_report_outputs(tmp_path):
    curves = [
        evaluate.Curve("a", [0.0, 0.5], [0.9, 0.5]),
        evaluate.Curve("a", [0.0, 0.5], [0.9, 0.7]),
        evaluate.Curve("b", [0.0, 0.5], [0.9, 0.1]),
    ]
    md = report.curves_markdown(curves, at=(0.5,))
    assert md.splitlines()[2].startswith("| a | 0.750 ± 0.071 | 0.600 ± 0.141 | 2 |")
    assert md.splitlines()[3].startswith("| b | 0.500 |")
    png = report.plot_curves(curves, tmp_path / "c.png", baseline=0.9)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.save_json({"curves": curves}, tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["curves"][2]["auc"] == pytest.approx(0.5)


def test_cli_prune_a_saved_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_bn(ConvBN(c=1, n=3)).eval()
    torch.save(model, tmp_path / "model.pt")
    X = np.random.RandomState(0).rand(60, 1, 8, 8).astype("float32")
    y = np.repeat(np.arange(3), 20)
    np.savez(tmp_path / "data.npz", X=X, y=y)
    rc = main(
        [
            "prune",
            "--model",
            str(tmp_path / "model.pt"),
            "--data",
            str(tmp_path / "data.npz"),
            "--criterion",
            "taylor",
            "--ratio",
            "0.5",
            "--n-per-class",
            "4",
            "--out",
            str(tmp_path / "small.pt"),
        ]
    )
    assert rc == 0
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    plan = xprune.Plan.load(tmp_path / "small.plan.json")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert plan.n_removed == 13
    out = capsys.readouterr().out
    assert "MACs" in out and "remove 13 of 26 channels" in out


def test_cli_prune_by_macs(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_bn(ConvBN(c=1, n=3)).eval()
    torch.save(model, tmp_path / "model.pt")
    X = np.random.RandomState(0).rand(60, 1, 8, 8).astype("float32")
    np.savez(tmp_path / "data.npz", X=X, y=np.repeat(np.arange(3), 20))
    args = [
        "prune",
        "--model",
        str(tmp_path / "model.pt"),
        "--data",
        str(tmp_path / "data.npz"),
        "--criterion",
        "weight",
        "--ratio",
        "0.5",
        "--n-per-class",
        "4",
        "--by",
        "macs",
    ]
    assert main([*args, "--out", str(tmp_path / "small.pt")]) == 0
    small = torch.load(tmp_path / "small.pt", weights_only=False)
    example = torch.from_numpy(X[:1])
    removed = 1 - evaluate.count(small, example)["macs"] / evaluate.count(model, example)["macs"]
    # at most half of the MACs, short of it by less than the dearest single channel (~6% of this tiny model)
    assert 0.43 <= removed <= 0.5 + 1e-9
    assert xprune.Plan.load(tmp_path / "small.plan.json").meta["macs_reduction"] == pytest.approx(removed, abs=1e-6)
    capsys.readouterr()
    guaranteed = [a for a in args if a not in ("--ratio", "0.5")] + [
        "--max-drop",
        "0.1",
        "--out",
        str(tmp_path / "g.pt"),
    ]
    assert main(guaranteed) == 2
    assert "cannot be combined with --by macs" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path, capsys):
    assert (
        main(["prune", "--model", "nope.pt", "--data", "digits", "--ratio", "0.5", "--out", str(tmp_path / "x.pt")])
        == 2
    )
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", "--model", "x", "--data", "digits", "--ratio", "1.5", "--out", "y"])
    assert "ratio must be in [0, 1)" in capsys.readouterr().err
    assert main([]) == 2


def test_demo_end_to_end(tmp_path, monkeypatch):
    from xprune import demo

    monkeypatch.setenv("XPRUNE_CACHE", str(tmp_path / "cache"))
    res = demo.run(
        arch="mlp",
        dataset="digits",
        n_per_class=5,
        criteria=["taylor", "random"],
        ratio=0.5,
        rates=[0.0, 0.25, 0.5, 0.75],
        out=tmp_path / "out",
    )
    for f in ("curves.png", "results.json", "pruned.pt", "plan.json"):
        assert (tmp_path / "out" / f).exists()
    assert res["base_accuracy"] > 0.9
    assert res["after"]["params"] < res["before"]["params"] and res["after"]["macs"] < res["before"]["macs"]
    assert set(res["auc"]) == {"taylor", "random"}
