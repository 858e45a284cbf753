"""Single weights (units="weights") on Hugging Face models: discovery on output objects, masking, AttnLRP rules."""

from __future__ import annotations

import copy

import pytest
import torch

import xprune

transformers = pytest.importorskip("transformers")

CRITERIA = ["lrp", "pbe", "taylor", "taylor-mean", "gradient", "weight", "l2", "random"]


def _llama():
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert():
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(cfg).eval()


MODELS = {"llama": (_llama, "lm_head"), "gpt2": (_gpt2, "lm_head"), "bert": (_bert, "classifier")}


def _case(name):
    make, output = MODELS[name]
    torch.manual_seed(0)
    model = make()
    ids = torch.randint(0, 64, (4, 6))
    labels = ids if name != "bert" else torch.tensor([0, 1, 2, 0])
    return model, [(ids, labels)], ids, output


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("name", list(MODELS))
def test_weights_score_select_and_mask(name, criterion):
    model, data, ids, output = _case(name)
    before = copy.deepcopy(model.state_dict())
    impl = model.config._attn_implementation
    opts = {"seed": 0} if criterion == "random" else {}
    scores = xprune.score(model, data, criterion, "weights", **opts)
    modules = dict(model.named_modules())
    assert output not in scores  # the output layer is not pruned by default
    assert all(s.shape == (modules[n].weight.numel(),) for n, s in scores.items())
    assert all(torch.isfinite(s).all() for s in scores.values())
    plan = xprune.select(scores, 0.01)
    assert plan.n_removed > 0
    pruned = xprune.apply(model, plan, mode="mask")
    pruned_modules = dict(pruned.named_modules())
    for layer, idxs in plan.remove.items():
        if idxs:
            assert (pruned_modules[layer].weight.reshape(-1)[list(idxs)] == 0).all()
    with torch.no_grad():
        out = pruned(ids).logits
    assert torch.isfinite(out).all()
    # the user's model is unchanged: parameters and attention implementation
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.config._attn_implementation == impl


@pytest.mark.parametrize("name", list(MODELS))
def test_discovery_finds_the_output_layer_on_output_objects(name):
    model, _, ids, output = _case(name)
    units = xprune.discover(model, ids, "weights")
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"]
    assert set(units.names) == set(linear) - {output}
    assert output in xprune.discover(model, ids, "weights", include_output=True).names


@pytest.mark.parametrize("name", list(MODELS))
def test_lrp_weights_use_the_attention_composites(name):
    # the heads kind's attention function switch applies to weights: CP-LRP (attention taken as constant)
    # and AttnLRP (softmax rule) send different relevance to the q/k projections
    model, data, _, _ = _case(name)
    a = xprune.score(model, data, "lrp", "weights", composite="attnlrp")
    c = xprune.score(model, data, "lrp", "weights", composite="cp-lrp")
    assert a.keys() == c.keys()
    assert not all(torch.allclose(a[n], c[n]) for n in a)
    q = next(n for n in a if n.endswith(("q_proj", "query", "c_attn")))
    assert not torch.allclose(a[q], c[q], rtol=1e-3)


def test_lrp_down_proj_columns_equal_the_neurons_relevance():
    """Sum over column j of down_proj of the signed weight relevance (R_ij = w_ij x_j R_i / stab(z_i), summed over
    tokens) is the epsilon rule's input relevance of neuron j, x_j * dz/dx_j (modified), summed over tokens: the
    signed ("yeom") score of neuron j of the neurons kind, read at the input of down_proj under the same AttnLRP
    context. The two take different routes: recorded weight leaves, and activation x gradient at a hook."""
    model, data, _, _ = _case("llama")
    w = xprune.score(model, data, "lrp", "weights", composite="attnlrp", aggregate="yeom")
    n = xprune.score(model, data, "lrp", "neurons", composite="attnlrp", aggregate="yeom")
    for layer in range(2):
        down = model.model.layers[layer].mlp.down_proj.weight
        col = w[f"model.layers.{layer}.mlp.down_proj"].reshape(down.shape).sum(0)
        ref = n[f"model.layers.{layer}.mlp"]
        assert ref.abs().max() > 1e-3
        torch.testing.assert_close(col, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
