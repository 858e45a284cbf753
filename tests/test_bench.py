"""The benchmark suite (`xprune bench --quick`) and the Torch-Pruning importance bridge."""

from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp

import xprune
from tiny_models import ConvBN, Residual, randomize_bn
from xprune import bench
from xprune.cli import main
from xprune.integrations.torch_pruning import XpruneImportance


def _data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_bench_quick_cli(tmp_path):
    out = tmp_path / "bench"
    page = tmp_path / "results.md"
    assert main(["bench", "toy", "perf", "--quick", "--out", str(out), "--page", str(page)]) == 0
    for name in ("toy", "perf"):
        assert (out / f"{name}.json").stat().st_size > 0
        assert (out / f"{name}.md").read_text().count("|") > 10
    assert (out / "toy.png").stat().st_size > 1000
    toy = json.loads((out / "toy.json").read_text())
    assert set(toy["results"]) == {"circles", "moons", "blobs"}
    for r in toy["results"].values():
        assert 0.3 < r["base"][0] <= 1.0
        for label, by_n in r["acc"].items():
            assert set(by_n) == {str(n) for n in bench.TOY_N_QUICK}
            assert all(0.0 <= a <= 1.0 for accs in by_n.values() for a in accs), label
        assert {"lrp (epsilon-plus)", "taylor", "singe", "integrated-gradients"} <= set(r["acc"])
    perf = json.loads((out / "perf.json").read_text())
    assert perf["forward_backward_s"] > 0
    assert all(c["relative"] > 0 for c in perf["costs"].values())
    assert "torch-pruning GroupTaylor" in perf["costs"]
    assert all(r["mac_reduction"] > 1 for r in perf["speedup"])
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["scenarios"]) == {"toy", "perf"} and summary["scenarios"]["toy"]["quick"]
    text = page.read_text()
    assert "toy.png" in text and "Which criterion" in text


def test_bench_unknown_scenario(tmp_path, capsys):
    assert main(["bench", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown scenario" in capsys.readouterr().err


@pytest.mark.parametrize("criterion", ["taylor", "lrp", "weight"])
def test_xprune_importance_matches_scores(criterion):
    model = randomize_bn(ConvBN()).eval()
    data = _data()
    imp = XpruneImportance(criterion, data, model=model)
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=data[0][:1])
    expected = xprune.score(model, data, criterion)
    seen = 0
    for group in dg.get_all_groups(ignored_layers=[model.fc2], root_module_types=(torch.nn.Conv2d, torch.nn.Linear)):
        values = imp(group)
        assert values.ndim == 1 and len(values) == len(group[0].idxs)
        name = {m: n for n, m in model.named_modules()}[group[0].dep.target.module]
        torch.testing.assert_close(values, expected[name].float())
        seen += 1
    assert seen == len(expected)


def test_xprune_importance_in_metapruner():
    model = randomize_bn(Residual()).eval()
    data = _data(seed=1)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    imp = XpruneImportance("lrp", data, composite="zplus")
    before = xprune.evaluate.count(model, data[0][:1])["params"]
    pruner = tp.pruner.MetaPruner(
        model, data[0][:1], importance=imp, pruning_ratio=0.5, global_pruning=True, ignored_layers=[head]
    )
    pruner.step()
    after = xprune.evaluate.count(model, data[0][:1])["params"]
    assert after < before
    assert model(data[0]).shape == (24, 5)
    # cached while the model is unchanged, recomputed once it changed
    first = imp.scores(model)
    assert imp.scores(model) is first
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)
    assert imp.scores(model) is not first


def test_xprune_importance_needs_data():
    with pytest.raises(xprune.XpruneError, match="reference data"):
        XpruneImportance("taylor", None)


def test_bench_quick_method_scenarios(tmp_path):
    """transfer, resnet and vit run every applicable family, tuned LRP and steered included."""
    out = tmp_path / "bench"
    bench.run(["transfer", "resnet", "vit"], out=out, quick=True, progress=False)
    transfer = json.loads((out / "transfer.json").read_text())
    labels = {c["criterion"] for c in transfer["curves"]}
    assert {"lrp (tuned)", "lrp (zplus)", "singe", "integrated-gradients", "random"} <= labels
    assert all(0.0 <= a <= 1.0 for c in transfer["curves"] for a in c["accuracies"])
    tuned = transfer["tuning"]["0"]
    assert (out / tuned["composite"]).exists() and 0.0 < tuned["val_auc"] <= 1.0
    resnet = json.loads((out / "resnet.json").read_text())
    assert resnet["results"]["steered"]["one-shot + FT"] and not resnet["results"]["steered"]["entwined"]
    assert all(len(v) == 1 for k, v in resnet["results"]["taylor"].items())
    assert (out / "resnet.png").stat().st_size > 1000
    vit = json.loads((out / "vit.json").read_text())
    heads = {c["criterion"] for c in vit["curves"]["heads"]}
    assert {"lrp (tuned)", "lrp (attnlrp)", "taylor", "random"} <= heads
    # rate 0 prunes nothing: every curve starts at the unpruned task accuracy
    starts = {c["accuracies"][0] for c in vit["curves"]["heads"] + vit["curves"]["neurons"]}
    assert len(starts) == 1
    assert "| lrp (tuned) |" in (out / "vit.md").read_text()
