"""Transformers: AttnLRP rules, unit kinds "heads"/"neurons", gates, surgery, save/load (issue #5)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import xprune
from xprune.models.vit import Attention, Block

xt = pytest.importorskip("xprune.transformers")
from xprune.lrp.attention import AttentionComposite  # noqa: E402 - after the importorskip above
from xprune.transformers import attnlrp  # noqa: E402 - as above

T = pytest.importorskip("transformers")


# ----------------------------------------------------------------------------- tiny models


def tiny_vit():
    torch.manual_seed(0)
    return xprune.models.build("vit", input_shape=(1, 8, 8), num_classes=4, dim=16, depth=2, heads=4, mlp_dim=24).eval()


def tiny_hf(kind):
    torch.manual_seed(0)
    if kind == "bert":
        cfg = T.BertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=16,
        )
        return T.BertModel(cfg).eval(), {
            "input_ids": torch.randint(0, 50, (2, 7)),
            "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2]),
        }
    if kind == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
        )
        return T.GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.randint(0, 50, (2, 7))}
    if kind == "llama":
        cfg = T.LlamaConfig(
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
        return T.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 50, (2, 7))}
    if kind == "vit":
        cfg = T.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            num_labels=3,
        )
        return T.ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 1, 8, 8)}
    raise ValueError(kind)


def out_of(o):
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def plan_for(units, pick):
    return xprune.Plan(units.kind, {g.name: pick(g) for g in units}, {g.name: g.size for g in units})


def uneven(g):
    """A different number of units removed per group (one from the first, two from the second, ...)."""
    i = int(g.name.split(".")[-2]) if g.name.split(".")[-2].isdigit() else 0
    return list(range(min(i + 1, g.size - 1)))


# ----------------------------------------------------------------------------- AttnLRP rules by hand


def test_softmax_and_bilinear_rules_match_hand_computation():
    torch.manual_seed(0)
    att = Attention(6, num_heads=2).double().eval()
    x = torch.randn(1, 4, 6, dtype=torch.double)
    grabbed = {}
    att.qk.register_forward_pre_hook(lambda m, a: grabbed.__setitem__("qk_in", a))
    att.av.register_forward_pre_hook(lambda m, a: grabbed.__setitem__("av_in", a))
    comp = AttentionComposite("attnlrp", epsilon=0.0)
    with attnlrp(att, comp) as attr:
        taps = attr.tap(["qk", "softmax", "av"])
        att(x.requires_grad_(True))
        S, A, O = taps["qk"][0], taps["softmax"][0], taps["av"][0]  # noqa: E741 - O = A v, the notation of AttnLRP
        qs, kt = grabbed["qk_in"]
        _A_in, v = grabbed["av_in"]
        R_O = torch.randn_like(O)  # relevance placed at the attention output
        g = torch.autograd.grad(O, [A, v, S, qs, kt], R_O / O.detach())
    R_A, R_v, R_S, R_q, R_k = (t.detach() * gi for t, gi in zip([A, v, S, qs, kt], g, strict=True))
    A, v, S, qs, kt, O = (t.detach() for t in (A, v, S, qs, kt, O))  # noqa: E741 - as above
    # uniform rule on O = A v: every term A_tk v_ki gets half of R_O[t,i] in proportion to its share
    share = A[..., :, :, None] * v[..., None, :, :] / O[..., :, None, :] * R_O[..., :, None, :]  # [B,H,t,k,i]
    torch.testing.assert_close(R_A, 0.5 * share.sum(-1))
    torch.testing.assert_close(R_v, 0.5 * share.sum(-3))
    # AttnLRP softmax rule: R_in = x * (R_out - s * sum R_out)
    torch.testing.assert_close(R_S, S * (R_A - A * R_A.sum(-1, keepdim=True)))
    # uniform rule on S = q k^T
    share = qs[..., :, :, None] * kt[..., None, :, :] / S[..., :, None, :] * R_S[..., :, None, :]  # [B,H,t,j,k]
    torch.testing.assert_close(R_q, 0.5 * share.sum(-1))
    torch.testing.assert_close(R_k, 0.5 * share.sum(-3))


@pytest.mark.parametrize("variant", ["cp", "attnlrp"])
def test_cp_lrp_sends_nothing_through_softmax(variant):
    # relevance read at the outputs of the q, k and v projections (tensor x modified gradient) after a backward
    # pass from the attention output: CP-LRP treats the attention weights as constants, so none reaches q or k,
    # all of it goes through the values; AttnLRP's softmax rule sends some through q and k as well
    torch.manual_seed(0)
    att = Attention(6, num_heads=2).double().eval()
    x = torch.randn(1, 4, 6, dtype=torch.double)
    with attnlrp(att, AttentionComposite(variant, epsilon=0.0)) as attr:
        taps = attr.tap(["q", "k", "v", "av"])
        att(x)
        (q,), (k,), (v,), (O,) = taps["q"], taps["k"], taps["v"], taps["av"]  # noqa: E741 - O = A v, as in AttnLRP
        R_O = torch.randn_like(O)
        grads = torch.autograd.grad(O, [q, k, v], R_O / O.detach(), allow_unused=True)
    R = {
        n: torch.zeros_like(t) if g is None else t.detach() * g for n, t, g in zip("qkv", (q, k, v), grads, strict=True)
    }
    if variant == "cp":
        assert torch.equal(R["q"], torch.zeros_like(q)) and torch.equal(R["k"], torch.zeros_like(k))
    else:
        assert R["q"].abs().sum() > 1e-3 * R_O.abs().sum() and R["k"].abs().sum() > 1e-3 * R_O.abs().sum()
    assert R["v"].abs().sum() > 1e-3 * R_O.abs().sum()
    if variant == "cp":  # uniform rule on A v with A constant: all of R_O arrives at v (epsilon 0)
        torch.testing.assert_close(R["v"].sum(), R_O.sum())


def _no_bias(module):
    with torch.no_grad():
        for m in module.modules():
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                m.bias.zero_()
    return module


@pytest.mark.parametrize("variant", ["attnlrp", "cp"])
def test_conservation_through_a_transformer_layer(variant):
    torch.manual_seed(0)
    blk = _no_bias(Block(8, 2, 12)).double().eval()
    x = torch.randn(2, 5, 8, dtype=torch.double, requires_grad=True)
    comp = AttentionComposite(variant, epsilon=1e-12, stabilizer=1e-12)
    with attnlrp(blk, comp, canonizers=xprune.lrp.default_canonizers()) as attr:
        taps = attr.tap(["attn.softmax", "attn.qk"])
        out = blk(x)
        seed = torch.randn_like(out)  # arbitrary output relevance R = out * seed
        wanted = [x] + ([taps["attn.softmax"][0], taps["attn.qk"][0]] if variant == "attnlrp" else [])
        g = torch.autograd.grad(out, wanted, seed)
    r_out = (out.detach() * seed).sum()
    r_in = (x.detach() * g[0]).sum()
    absorbed = 0.0
    if variant == "attnlrp":  # the softmax rule's linearisation absorbs (R_out - R_in) of the softmax
        absorbed = (taps["attn.softmax"][0].detach() * g[1]).sum() - (taps["attn.qk"][0].detach() * g[2]).sum()
    assert abs(float(r_in + absorbed - r_out)) <= 1e-3 * abs(float(r_out))


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_cp_lrp_conserves_through_hf_models(kind):
    model, x = tiny_hf(kind)
    model = _no_bias(model).double()
    ids = x["input_ids"][:1]
    # the first tensor holding the whole input (token + position embeddings)
    first = {"llama": "model.embed_tokens", "bert": "embeddings", "gpt2": "transformer.drop"}[kind]
    with attnlrp(model, "cp-lrp", epsilon=1e-12, stabilizer=1e-12) as attr:
        taps = attr.tap([first])
        out = out_of(model(input_ids=ids))
        seed = torch.zeros_like(out)
        seed[0, -1, 3] = 1.0 / out[0, -1, 3].detach()  # relevance 1 at one output entry
        if kind == "bert":  # last LayerNorm's output: explain one feature of the first token
            seed.zero_()
            seed[0, 0, 3] = 1.0 / out[0, 0, 3].detach()
        (e,) = next(iter(taps.values()))
        (g,) = torch.autograd.grad(out, [e], seed)
    total = float((e.detach() * g).sum())
    assert abs(total - 1.0) < 1e-3, total


def test_head_relevance_is_twice_pxp_on_attention_probabilities():
    """Under the uniform rule, sum_t |sum_i R(head out)| = 2 sum_t |sum_k R(A)| per head (HF attention path)."""
    model, x = tiny_hf("bert")
    model = model.double()
    units = xprune.discover(model, x, "heads")
    with (
        attnlrp(model, "attnlrp", epsilon=0.0, capture_attention=True) as attr,
        xt.gates(model, units, capture=True) as gt,
    ):
        out = out_of(model(**x))
        seed = torch.zeros_like(out)
        seed[:, 0, :4] = 1.0
        probs = list(attr.attention_probs)
        heads = [t for n in gt.captured for t in gt.captured[n]]
        grads = torch.autograd.grad(out, probs + heads, seed)
    for i in range(len(probs)):
        pxp = (probs[i].detach() * grads[i]).sum(-1).abs().sum((0, 2))  # per head
        h = heads[i].detach() * grads[len(probs) + i]  # [N, T, U, d]
        ours = h.sum(-1).abs().sum((0, 1))
        torch.testing.assert_close(ours, 2 * pxp)


# ----------------------------------------------------------------------------- surgery


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "vit"])
@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_remove_equals_mask_hf(kind, unit):
    model, x = tiny_hf(kind)
    units = xprune.discover(model, x, unit)
    assert len(units) == 2
    if kind == "llama" and unit == "heads":
        assert [g.size for g in units] == [2, 2]  # KV groups of 2 query heads each
    plan = plan_for(units, uneven)
    removed, masked = xprune.apply(model, plan, "remove"), xprune.apply(model, plan, "mask")
    with torch.no_grad():
        a, b, o = out_of(removed(**x)), out_of(masked(**x)), out_of(model(**x))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - o).abs().max() > 1e-4  # something was removed
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    # zero gates compute the same function
    with xt.gates(model, units) as gt, torch.no_grad():
        for g in units:
            gt.values[g.name].data[plan.remove[g.name]] = 0.0
        c = out_of(model(**x))
    torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_remove_equals_mask_xprune_vit(unit):
    model = tiny_vit()
    x = torch.randn(3, 1, 8, 8)
    units = xprune.discover(model, x[:1], unit)
    plan = plan_for(units, lambda g: [1, 3])
    removed, masked = xprune.apply(model, plan, "remove"), xprune.apply(model, plan, "mask")
    with torch.no_grad():
        torch.testing.assert_close(removed(x), masked(x), atol=1e-5, rtol=0)
    if unit == "heads":
        assert removed.blocks[0].attn.num_heads == 2 and removed.blocks[0].attn.q.out_features == 8
    else:
        assert removed.blocks[0].mlp.fc1.out_features == 22


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_save_load_round_trip_and_generate(kind, tmp_path):
    model, x = tiny_hf(kind)
    pruned = model
    for unit in ("heads", "neurons"):
        units = xprune.discover(pruned, x, unit)
        pruned = xprune.apply(pruned, plan_for(units, uneven), "remove")
    assert pruned.config.xprune_pruning["neurons"][0] != pruned.config.xprune_pruning["neurons"][1]
    pruned.save_pretrained(tmp_path)
    loaded = xt.load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(out_of(loaded(**x)), out_of(pruned(**x)), atol=0, rtol=0)
        gen = loaded.generate(x["input_ids"][:1], max_new_tokens=4, do_sample=False)
        ref = pruned.generate(x["input_ids"][:1], max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, 11) and torch.equal(gen, ref)


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_attnlrp_context_keeps_outputs_and_restores_the_model(kind):
    model, x = tiny_hf(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    impl = model.config._attn_implementation
    with torch.no_grad():
        ref = out_of(model(**x))
    with attnlrp(model):
        out = out_of(model(**x))  # same values (causal / padding masks applied), modified backward only
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == impl
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# ----------------------------------------------------------------------------- criteria


@pytest.mark.parametrize(
    "criterion", ["lrp", "taylor", "taylor-mean", "gradient", "activation", "weight", "l2", "random"]
)
def test_criteria_on_heads_and_neurons(criterion):
    model = tiny_vit()
    X, y = torch.randn(6, 1, 8, 8), torch.randint(0, 4, (6,))
    for unit in ("heads", "neurons"):
        s = xprune.score(model, (X, y), criterion, unit)
        assert s.kind == unit and all(torch.isfinite(v).all() for v in s.values())
        assert [v.numel() for v in s.values()] == ([4, 4] if unit == "heads" else [24, 24])


def test_taylor_mean_is_the_gate_gradient():
    # "taylor-mean": |dO/dg| of the batch's summed target logits for a gate g on each head, over samples and
    # tokens; "taylor" (per sample, the loss) is checked against a per-sample loop in tests/test_fair.py
    model = tiny_vit()
    X, y = torch.randn(5, 1, 8, 8), torch.randint(0, 4, (5,))
    units = xprune.discover(model, X[:1], "heads")
    s = xprune.score(model, (X, y), "taylor-mean", units, normalize=None)
    with xt.gates(model, units) as g:
        out = model(X)
        grads = torch.autograd.grad(out[torch.arange(5), y].sum(), list(g.values.values()))
    tokens = model.num_patches + 1
    for (_name, v), gr in zip(s.items(), grads, strict=True):
        torch.testing.assert_close(v, (gr.double() / (5 * tokens)).abs(), rtol=1e-5, atol=1e-9)


def test_curve_with_heads_units():
    from xprune.evaluate import curve

    model = tiny_vit()
    X, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    c = curve(model, (X, y), (X, y), "lrp", units="heads", rates=[0.0, 0.25, 0.5], mode="remove")
    assert len(c.accuracies) == 3 and c.removed == [0, 2, 4]


@pytest.mark.parametrize("comp", ["attnlrp", "cp-lrp"])
def test_lrp_on_hf_llama_heads_and_gqa(comp):
    # 4 query heads sharing 2 KV heads: a unit is a KV group (its 2 query heads); the group's query heads read
    # columns 16 g : 16 (g + 1) of o_proj. Zeroing those columns of group 0 in layer 0 takes that group out of
    # the model's output: no relevance can reach it.
    model, x = tiny_hf("llama")
    model = model.double()
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight[:, :16] = 0
    ids, labels = x["input_ids"], torch.tensor([3, 5])
    data = [({"input_ids": ids}, labels)]
    units = xprune.discover(model, {"input_ids": ids}, "heads")
    first, second = (g.name for g in units)
    pxp = xprune.score(model, data, "lrp", units, composite=comp, normalize=None)
    signed = xprune.score(model, data, "lrp", units, composite=comp, aggregate="yeom", normalize=None)
    assert pxp[first][0] == 0 and signed[first][0] == 0 and pxp[first][1] > 0 and (pxp[second] > 0).all()

    # reference: the relevance at the attention output (o_proj's input, tensor x modified gradient), from a
    # backward pass of our own with relevance 1 at the label's logit of the last token
    inputs = {}
    hooks = [
        model.model.layers[i].self_attn.o_proj.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
        for i in range(2)
    ]
    try:
        with attnlrp(model, comp):
            logits = model(input_ids=ids).logits
            seed = torch.zeros_like(logits)
            seed[torch.arange(2), -1, labels] = 1 / logits[torch.arange(2), -1, labels].detach()
            grads = torch.autograd.grad(logits, [inputs[0], inputs[1]], seed)
    finally:
        for h in hooks:
            h.remove()
    for i, name in enumerate((first, second)):
        R = (inputs[i].detach() * grads[i]).reshape(2, ids.shape[1], 2, 2, 8)  # [N, T, group, query head, d]
        torch.testing.assert_close(signed[name], R.sum((0, 1, 3, 4)), rtol=1e-6, atol=1e-12)  # per-group sum
        torch.testing.assert_close(pxp[name], R.sum(-1).abs().sum((0, 1, 3)), rtol=1e-6, atol=1e-12)


def test_lrp_on_hf_llama_neurons():
    model, x = tiny_hf("llama")
    data = [({"input_ids": x["input_ids"]}, torch.tensor([3, 5]))]
    for comp in ("attnlrp", "cp-lrp"):
        s = xprune.score(model, data, "lrp", "neurons", composite=comp)
        assert all(torch.isfinite(v).all() and v.sum() > 0 for v in s.values())
