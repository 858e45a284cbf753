"""Relevance for control (issue 21): contrastive scores, targeted correction, circuits, their CLI commands.

Models whose answer is known by construction: an MLP with one hidden channel that reads only a trigger feature
and pushes one class (the planted behaviour), and a two-layer attention model whose 4-way answer needs exactly
two heads (layer 0 head 2 and layer 1 head 1, weights set by hand).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from xprune.control import Metric, circuit, contrastive_scores, correct
from xprune.control.metrics import continuation_probability, token_perplexity
from xprune.errors import DataError, NothingToPrune, XpruneError
from xprune.layers import Add
from xprune.models.vit import Attention

# behaviour sets hold one (unwanted) answer, and tiny random models' own labels miss classes: both on purpose
pytestmark = pytest.mark.filterwarnings("ignore:the reference samples cover")

# ----------------------------------------------------------------------------- models known by construction

D, H, C = 6, 9, 3
TRIGGER, BAD = D - 1, 2


def planted_mlp() -> nn.Module:
    """Hidden channel 0 reads only the trigger feature and writes only the logit of class BAD."""
    torch.manual_seed(0)
    first, last = nn.Linear(D, H), nn.Linear(H, C)
    with torch.no_grad():
        first.weight[0] = 0
        first.weight[0, TRIGGER] = 5.0
        first.bias[0] = 0
        first.weight[1:, TRIGGER] = 0
        last.weight[:, 0] = 0
        last.weight[BAD, 0] = 10.0
    return nn.Sequential(first, nn.ReLU(), last).eval()


def mlp_sets(m, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    xg = torch.randn(n, D, generator=g)
    xg[:, TRIGGER] = 0
    with torch.no_grad():
        yg = m(xg).argmax(1)
    xb = xg[yg != BAD][:100].clone()
    xb[:, TRIGGER] = 1.0
    return (xb, torch.full((len(xb),), BAD)), (xg, yg)


T, HD, HEADS = 6, 16, 4
PLANTED = {("attn0", 2), ("attn1", 1)}


class TwoHeads(nn.Module):
    """Two attention layers with residuals and a 4-way readout of token 0."""

    def __init__(self):
        super().__init__()
        self.attn0, self.attn1 = Attention(HD, HEADS), Attention(HD, HEADS)
        self.add0, self.add1 = Add(), Add()
        self.readout = nn.Linear(HD, 4)

    def forward(self, x):
        x = self.add0(x, self.attn0(x))
        x = self.add1(x, self.attn1(x))
        return self.readout(x[:, 0])


def two_heads() -> nn.Module:
    """Head 2 of attn0 averages feature 0 into dim 2, head 1 of attn1 averages feature 1 into dim 3 (uniform
    attention: its q and k are zero); the readout's class is the quadrant of (dim 2, dim 3). The other heads
    attend and mix features 4.. and add a little noise to dims 2 and 3."""
    torch.manual_seed(0)
    m = TwoHeads()
    d = HD // HEADS
    with torch.no_grad():
        for layer, head, src, dst in ((m.attn0, 2, 0, 2), (m.attn1, 1, 1, 3)):
            for lin in (layer.q, layer.k, layer.v):
                lin.weight[:, :4] = 0
                lin.bias.zero_()
            layer.proj.weight[:4] *= 0.02  # the other heads' small leak into dims 0..3
            layer.proj.bias.zero_()
            rows = slice(head * d, (head + 1) * d)
            for lin in (layer.q, layer.k, layer.v):
                lin.weight[rows] = 0
            layer.v.weight[head * d, src] = 1.0
            layer.proj.weight[:, rows] = 0
            layer.proj.weight[dst, head * d] = float(T)
        m.readout.weight.zero_()
        m.readout.bias.zero_()
        for c, (a, b) in enumerate(((-1, -1), (-1, 1), (1, -1), (1, 1))):
            m.readout.weight[c, 2], m.readout.weight[c, 3] = 5.0 * a, 5.0 * b
    return m.eval()


def quadrant_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, HD, generator=g)
    x[:, 0, :4] = 0
    x[:, :, 2:4] = 0
    y = 2 * (x[:, :, 0].sum(1) > 0).long() + (x[:, :, 1].sum(1) > 0).long()
    return x, y


def same_weights(a: nn.Module, b: dict) -> bool:
    sa = a.state_dict()
    return sa.keys() == b.keys() and all(torch.equal(sa[k], b[k]) for k in sa)


def snapshot(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


# ----------------------------------------------------------------------------- contrastive scores


@pytest.mark.parametrize(
    "criterion,units",
    [("lrp", "channels"), ("taylor", "channels"), ("activation", "channels"), ("weight", "weights"), ("lrp", "heads")],
)
@pytest.mark.parametrize("combine", ["difference", "ratio"])
def test_contrast_is_the_combination_of_two_mean_normalised_scores(criterion, units, combine):
    if units == "heads":
        model, (x, y) = two_heads(), quadrant_data()
        beh, gen = (x[:40], y[:40]), (x[40:], y[40:])
    else:
        model = planted_mlp()
        beh, gen = mlp_sets(model)
    if criterion == "weight":  # data-free: said, since both sides then score alike
        with pytest.warns(xprune.errors.XpruneWarning, match="does not read the data"):
            c = contrastive_scores(model, beh, gen, criterion, units, combine=combine, floor=0.1)
    else:
        c = contrastive_scores(model, beh, gen, criterion, units, combine=combine, floor=0.1)
    sb = xprune.score(model, beh, criterion, units, normalize=None)
    sg = xprune.score(model, gen, criterion, units, normalize=None)
    assert list(c.contrast) == list(sb)
    for g in sb:
        nb, ng = sb[g] / sb[g].abs().mean(), sg[g] / sg[g].abs().mean()
        want = nb - ng if combine == "difference" else nb / torch.clamp(ng, min=0.1)
        torch.testing.assert_close(c.contrast[g], want)
        torch.testing.assert_close(c.behaviour[g], nb)
        torch.testing.assert_close(c.scores[g], -want)  # keep-scores: select removes the highest contrast first
    assert c.scores.kind == units and c.scores.members == sb.members


def test_the_planted_channel_has_the_top_contrast_and_select_takes_it_first():
    model = planted_mlp()
    beh, gen = mlp_sets(model)
    for combine in ("difference", "ratio"):
        c = contrastive_scores(model, beh, gen, "lrp", "channels", combine=combine)
        assert c.top(1)[0][:2] == ("0", 0)
        plan = xprune.select(c.scores, 1 / c.scores.total, warn=False)
        assert plan.remove["0"] == [0] and plan.n_removed == 1


# ----------------------------------------------------------------------------- correct


def test_correct_removes_the_planted_channel_suppressing_the_behaviour_and_keeping_the_task(tmp_path):
    model = planted_mlp()
    before = snapshot(model)
    beh, gen = mlp_sets(model)
    res = correct(model, beh, gen, units="channels", budget=4)
    assert same_weights(model, before)  # the user's model is untouched
    assert res.met and res.n == 1 and res.plan.remove["0"] == [0]
    assert res.before == {"behaviour": 1.0, "general": 1.0}
    assert res.after["behaviour"] == 0.0 and res.after["general"] == 1.0
    # removed physically: the corrected copy has one hidden channel fewer
    assert res.model[0].out_features == H - 1 and res.model[2].in_features == H - 1
    xb, _ = beh
    assert (res.model(xb).argmax(1) == BAD).float().mean() == 0
    assert [r["removed"] for r in res.curve] == [0, 1, 2, 4]
    assert res.curve[1]["behaviour"] == 0.0 and res.curve[0]["mode"] is None
    res.to_json(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["removed"] == 1 and saved["units"][0]["layer"] == "0" and saved["units"][0]["unit"] == 0
    assert saved["curve"] == res.curve
    assert res.plot(tmp_path / "c.png").stat().st_size > 1000


def test_correct_on_single_weights_masks_the_planted_trigger_weight():
    model = planted_mlp()
    beh, gen = mlp_sets(model)
    res = correct(model, beh, gen, units="weights", budget=4)
    assert res.met and res.n == 1 and res.plan.remove == {"0": [TRIGGER]}  # row 0, column TRIGGER
    changed = res.model[0].weight != model[0].weight
    assert changed.sum() == 1 and changed[0, TRIGGER] and res.model[0].weight[0, TRIGGER] == 0
    assert res.after == {"behaviour": 0.0, "general": 1.0}


def test_correct_picks_the_smallest_count_meeting_both_targets_and_says_when_none_does():
    model = planted_mlp()
    beh, gen = mlp_sets(model)

    def general(m):
        return float((m(gen[0]).argmax(1) == gen[1]).float().mean())

    # a behaviour metric that only falls slowly: 1 - removed/8, reached at 4 units for suppression 0.5
    calls = []

    def slow(m):
        n = (
            H - m[0].out_features
            if isinstance(m[0], nn.Linear) and m[0].out_features < H
            else int((m[0].weight.abs().sum(1) == 0).sum())
        )
        calls.append(n)
        return 1 - n / 8

    res = correct(
        model,
        beh,
        gen,
        units="channels",
        counts=[1, 2, 4, 6],
        behaviour_metric=slow,
        general_metric=Metric(general, higher_is_worse=False, name="acc"),
        max_general_change=0.5,
    )
    assert res.met and res.n == 4
    assert [r["behaviour"] for r in res.curve] == [1.0, 1 - 1 / 8, 1 - 2 / 8, 0.5, 1 - 6 / 8]
    res = correct(
        model,
        beh,
        gen,
        units="channels",
        counts=[1, 2],
        behaviour_metric=slow,
        general_metric=general,
        general_higher_is_worse=False,
        suppression=0.9,
    )
    assert not res.met and "no grid point" in res.reason
    assert res.n == 2  # the allowed point with the least behaviour


def test_correct_with_confidence_certifies_the_general_drop_by_fixed_sequence_testing():
    from xprune.guarantee.stats import binomial_p_value

    model = planted_mlp()
    beh, gen = mlp_sets(model)
    held = mlp_sets(model, n=400, seed=1)[1]
    res = correct(
        model, beh, gen, units="channels", counts=[1, 2, 4], confidence=0.9, max_general_change=0.05, general_test=held
    )
    with torch.no_grad():
        base = model(held[0]).argmax(1) == held[1]
    for row, n in zip(res.curve[1:], [1, 2, 4], strict=True):
        plan = xprune.select(res.contrast.scores, n / H, warn=False)
        with torch.no_grad():
            ok = xprune.apply(model, plan, "mask")(held[0]).argmax(1) == held[1]
        flips = int((base & ~ok).sum())
        assert row["flips"] == flips
        assert row["p_value"] == pytest.approx(binomial_p_value(flips, len(held[1]), 0.05))
    assert res.met and res.n == 1


def test_correct_bad_inputs_are_one_line_errors():
    model = planted_mlp()
    beh, gen = mlp_sets(model)
    empty = (torch.zeros(0, D), torch.zeros(0, dtype=torch.long))
    cases = [
        (dict(behaviour=empty, general=gen), DataError, "behaviour set is empty"),
        (dict(behaviour=beh, general=gen, budget=H * 2), XpruneError, "exceeds"),
        (dict(behaviour=beh, general=gen, budget=1.5), XpruneError, "budget"),
        (dict(behaviour=beh, general=gen, suppression=0), XpruneError, "suppression"),
        (dict(behaviour=beh, general=gen, combine="sum"), XpruneError, "combine"),
        (dict(behaviour=beh, general=gen, general_metric=lambda m: 1.0), XpruneError, "direction"),
        (dict(behaviour=beh, general=gen, confidence=0.9), XpruneError, "general_test"),
    ]
    for kwargs, error, text in cases:
        units = kwargs.pop("units", "channels")
        with pytest.raises(error, match=text) as e:
            correct(model, units=units, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(NothingToPrune) as e:
        correct(model, beh, gen)  # neurons (transformer MLPs): an MLP of Linear layers has none
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- circuit


@pytest.mark.parametrize("criterion", ["lrp", "taylor"])
def test_circuit_finds_the_two_planted_heads(criterion, tmp_path):
    model = two_heads()
    before = snapshot(model)
    x, y = quadrant_data()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() == 1.0
    c = circuit(model, (x, y), units="heads", criterion=criterion)
    assert same_weights(model, before)
    assert {(g, i) for g, i, _ in c.units} == PLANTED and c.k == 2
    assert c.faithfulness >= 0.9
    faith = {r["kept"]: r["faithfulness"] for r in c.curve}
    assert faith[0] == 0.0 and faith[8] == 1.0 and faith[1] < 0.9  # one head alone is not enough
    # the circuit-only model keeps exactly the planted heads, physically
    assert c.model.attn0.num_heads == 1 and c.model.attn1.num_heads == 1
    with torch.no_grad():
        assert (c.model(x).argmax(1) == y).float().mean() >= 0.9
    c.to_json(tmp_path / "circuit.json")
    saved = json.loads((tmp_path / "circuit.json").read_text())
    assert {(u["layer"], u["unit"]) for u in saved["units"]} == PLANTED
    assert saved["scores"]["attn0"] == c.scores["attn0"].tolist()
    assert c.plot(tmp_path / "circuit.png").stat().st_size > 1000


def test_circuit_placeholders_are_each_layers_least_relevant_unit():
    from xprune.control.circuit import keep_plan

    model = two_heads()
    scores = xprune.score(model, quadrant_data(), "lrp", "heads")
    plan, holders = keep_plan(scores, {("attn0", 2)})
    low = int(torch.argmin(scores["attn1"]))
    assert holders == [("attn1", low)]
    assert plan.remove["attn0"] == [0, 1, 3] and low not in plan.remove["attn1"] and len(plan.remove["attn1"]) == 3


def test_circuit_bad_inputs_are_one_line_errors():
    model = two_heads()
    data = quadrant_data()
    for kwargs, text in [
        (dict(faithfulness=0), "faithfulness"),
        (dict(faithfulness=1.5), "faithfulness"),
        (dict(counts=[3, 99]), "counts"),
        (dict(metric=lambda m: 0.5), "no circuit"),
    ]:
        with pytest.raises(XpruneError, match=text) as e:
            circuit(model, data, **kwargs)
        assert "\n" not in str(e.value)
    with pytest.raises(NothingToPrune):
        circuit(planted_mlp(), mlp_sets(planted_mlp())[0], units="heads")
    with pytest.raises(DataError, match="behaviour set is empty"):
        circuit(model, (torch.zeros(0, T, HD), torch.zeros(0, dtype=torch.long)))


# ----------------------------------------------------------------------------- a CNN, a ViT, a decoder LM end to end


def _own_labels(model, x):
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    return (out.logits if hasattr(out, "logits") else out).argmax(-1)


def test_cnn_end_to_end():
    from tiny_models import ConvBN

    torch.manual_seed(0)
    model = ConvBN(c=1, n=4).eval()
    x = torch.randn(48, 1, 8, 8)
    y = _own_labels(model, x)
    before = snapshot(model)
    res = correct(model, (x[:24], y[:24]), (x[24:], y[24:]), units="channels", budget=3)
    assert same_weights(model, before)
    n_params = sum(p.numel() for p in model.parameters())
    assert res.n == res.plan.n_removed
    if res.n:
        assert sum(p.numel() for p in res.model.parameters()) < n_params
    assert [r["removed"] for r in res.curve] == [0, 1, 2, 3]
    assert res.curve[0]["behaviour"] == 1.0 == res.curve[0]["general"]
    c = circuit(model, (x, y), units="channels", counts=[0, 4, 8, 16, 26])
    assert same_weights(model, before)
    assert c.k in (4, 8, 16, 26) and c.curve[-1]["faithfulness"] == 1.0
    assert all(r["faithfulness"] < 0.9 for r in c.curve if r["kept"] < c.k)


def _hf(kind):
    tr = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "vit":
        cfg = tr.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=3,
        )
        return tr.ViTForImageClassification(cfg).eval()
    if kind == "gpt2":
        cfg = tr.GPT2Config(
            vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
        )
        return tr.GPT2LMHeadModel(cfg).eval()
    cfg = tr.LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return tr.LlamaForCausalLM(cfg).eval()


def test_hf_vit_end_to_end():
    model = _hf("vit")
    before = snapshot(model)
    x = torch.randn(40, 1, 8, 8)
    y = _own_labels(model, {"pixel_values": x})
    beh, gen = ({"pixel_values": x[:20], "labels": y[:20]}, {"pixel_values": x[20:], "labels": y[20:]})
    res = correct(model, beh, gen, units="neurons", budget=4)
    assert same_weights(model, before) and res.curve[0]["behaviour"] == 1.0
    sizes = [model.vit.layers[i].mlp.fc1.out_features for i in range(2)]
    got = [res.model.vit.layers[i].mlp.fc1.out_features for i in range(2)]
    assert sum(sizes) - sum(got) == res.n  # removed, not masked

    def label_probability(m):  # a random tiny ViT gives one class to everything: accuracy cannot move
        with torch.no_grad():
            return float(m(pixel_values=x[:20]).logits.softmax(-1).gather(1, y[:20, None]).mean())

    c = circuit(model, beh, units="heads", metric=label_probability)
    assert same_weights(model, before)
    assert 1 <= c.k <= 8 and c.faithfulness >= 0.9 and c.curve[-1]["metric"] == label_probability(model)
    kept = [c.model.vit.layers[i].attention.q_proj.out_features // 8 for i in range(2)]
    assert sum(kept) == c.k + len(c.placeholders)  # the other heads removed physically


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_decoder_lm_end_to_end(kind):
    from xprune.llm import TokenBlocks, perplexity

    model = _hf(kind)
    before = snapshot(model)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (24, 12), generator=g)
    # the behaviour: the model's own greedy next token at the last 4 positions (other tokens not counted)
    with torch.no_grad():
        nxt = model(input_ids=ids[:12]).logits.argmax(-1)
    labels = torch.full((12, 12), -100)
    labels[:, 8:] = nxt[:, 7:11]
    beh_ids = ids[:12].clone()
    beh_ids[:, 8:] = nxt[:, 7:11]
    beh = {"input_ids": beh_ids, "labels": labels}
    general = TokenBlocks(ids[12:])
    p0 = continuation_probability(model, beh)
    with torch.no_grad():
        logits = model(input_ids=beh_ids).logits
    probs = logits[:, 7:11].softmax(-1).gather(-1, labels[:, 8:, None]).squeeze(-1)  # position t judges t + 1
    assert p0 == pytest.approx(float(probs.mean()), rel=1e-5)
    assert token_perplexity(model, general) == pytest.approx(perplexity(model, general), rel=1e-6)
    res = correct(model, beh, general, units="neurons", budget=8, max_general_change=0.5)
    assert same_weights(model, before)
    assert res.before["behaviour"] == pytest.approx(p0) and res.settings["general_metric"] == "perplexity"
    assert res.curve[-1]["removed"] == 8 and res.n == res.plan.n_removed
    c = circuit(model, beh, units="heads")
    assert same_weights(model, before)
    assert c.curve[-1]["faithfulness"] == 1.0 and c.faithfulness >= 0.9


# ----------------------------------------------------------------------------- command line, lazy import


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = planted_mlp()
    (xb, yb), (xg, yg) = mlp_sets(model)
    torch.save(model, "m.pt")
    np.savez("b.npz", X=xb.numpy(), y=yb.numpy())
    np.savez("g.npz", X=xg.numpy(), y=yg.numpy())
    np.savez("none.npz", X=np.zeros((0, D), np.float32), y=np.zeros(0, np.int64))
    return tmp_path


def test_cli_correct_and_circuit_write_their_files(files, capsys):
    from xprune.cli import main

    args = ["--model", "m.pt", "--behaviour", "b.npz"]
    assert main(["correct", *args, "--general", "g.npz", "--units", "channels", "--budget", "3", "--out", "o"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 of 9 channels" in out
    saved = json.loads((files / "o" / "correction.json").read_text())
    assert saved["met"] and saved["units"][0] == {"layer": "0", "unit": 0, "contrast": saved["units"][0]["contrast"]}
    fixed = torch.load(files / "o" / "model.pt", weights_only=False)
    assert fixed[0].out_features == H - 1
    assert xprune.Plan.load(files / "o" / "model.plan.json").remove["0"] == [0]
    assert (files / "o" / "correction.png").stat().st_size > 1000
    assert main(["circuit", *args, "--out", "o"]) == 0
    assert json.loads((files / "o" / "circuit.json").read_text())["units"][0]["layer"] == "0"
    assert (files / "o" / "circuit.png").is_file()


@pytest.mark.parametrize(
    "argv,text",
    [
        (["correct", "--behaviour", "none.npz", "--general", "g.npz", "--units", "channels"], "empty"),
        (["correct", "--behaviour", "b.npz", "--general", "g.npz", "--units", "channels", "--budget", "50"], "exceeds"),
        (["correct", "--behaviour", "b.npz", "--general", "g.npz", "--budget", "1.5"], "--budget"),
        (["circuit", "--behaviour", "b.npz", "--units", "heads"], "self-attention"),
        (["correct", "--behaviour", "b.npz", "--general", "g.npz", "--units", "neurons"], "transformer MLPs"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(files, capsys, argv, text):
    from xprune.cli import main

    try:
        code = main([*argv[:1], "--model", "m.pt", *argv[1:], "--out", "o"])
    except SystemExit as e:  # option values are checked by the parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xprune: error:") and text in err and "\n" not in err


def test_cli_refuses_to_overwrite(files, capsys):
    from xprune.cli import main

    argv = ["circuit", "--model", "m.pt", "--behaviour", "b.npz", "--out", "o"]
    assert main(argv) == 0
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_import_xprune_is_lazy_about_control():
    code = (
        "import sys, xprune; loaded = [m for m in ('matplotlib', 'transformers', 'xprune.control') "
        "if m in sys.modules]; f = xprune.correct; g = xprune.circuit; h = xprune.contrastive_scores; "
        "print(loaded, f.__module__, g.__module__, h.__module__, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "xprune.control.correct", "xprune.control.circuit", "xprune.control.contrast", "False"]


def test_cli_on_a_hugging_face_language_model(tmp_path, monkeypatch, capsys):
    tr = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from xprune.cli import main
    from xprune.transformers import load_pruned

    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "and", "then", "slept"]
    backend = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(["<unk>", "<eos>", *words])}, unk_token="<unk>")
    )
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = tr.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")
    torch.manual_seed(0)
    cfg = tr.GPT2Config(
        vocab_size=len(words) + 2, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=1
    )
    monkeypatch.chdir(tmp_path)
    tr.GPT2LMHeadModel(cfg).eval().save_pretrained("lm")
    tok.save_pretrained("lm")
    g = np.random.default_rng(0)
    (tmp_path / "b.txt").write_text("\n\n".join(["the cat sat on the mat"] * 12))
    (tmp_path / "g.txt").write_text("\n\n".join(" ".join(g.choice(words, 8)) for _ in range(12)))
    assert (
        main(
            [
                "correct",
                "--model",
                "hf:lm",
                "--behaviour",
                "b.txt",
                "--general",
                "g.txt",
                "--budget",
                "4",
                "--max-general-change",
                "0.5",
                "--out",
                "o",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "o" / "correction.json").read_text())
    assert saved["kind"] == "neurons" and saved["settings"]["general_metric"] == "perplexity"
    fixed = load_pruned(tmp_path / "o" / "model")
    assert sum(b.mlp.c_fc.nf for b in fixed.transformer.h) == 2 * 128 - saved["removed"]
    assert main(["circuit", "--model", "hf:lm", "--behaviour", "b.txt", "--out", "o"]) == 0
    assert json.loads((tmp_path / "o" / "circuit.json").read_text())["kind"] == "heads"
    assert "Circuit:" in capsys.readouterr().out
    # a prompt / continuation file: only the continuation is the behaviour (labels -100 on the prompt)
    lines = [{"prompt": "the dog ran far", "continuation": " the cat sat on the mat"}] * 12
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    from xprune.transformers import hub

    data = hub.text_data(tmp_path / "b.jsonl", tok, task="causal-lm", max_length=16)
    inputs, labels = next(data.train.batches(2))
    n_prompt = len(tok("the dog ran far")["input_ids"])
    assert (labels[:, :n_prompt] == -100).all()
    assert torch.equal(labels[:, n_prompt:], inputs["input_ids"][:, n_prompt:])  # the continuation, unpadded here
    args = ["correct", "--model", "hf:lm", "--behaviour", "b.jsonl", "--general", "g.txt", "--budget", "4"]
    assert main([*args, "--max-general-change", "0.5", "--out", "p"]) == 0
    assert json.loads((tmp_path / "p" / "correction.json").read_text())["kind"] == "neurons"
    (tmp_path / "mixed.jsonl").write_text(json.dumps(lines[0]) + "\n" + json.dumps({"text": "the cat"}) + "\n")
    with pytest.raises(DataError, match="mixes"):
        hub.text_data(tmp_path / "mixed.jsonl", tok, task="causal-lm")
