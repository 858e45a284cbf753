"""Hugging Face conventions in scoring and measuring (issue #18): batches as dicts with ``labels``, labels per
token (causal-LM shift, ``-100``), padding excluded from every criterion, no class-coverage warning on language
models, and ``target="embedding"`` for encoders without a head."""

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import xprune
from xprune import _inputs
from xprune.errors import DataError, XpruneError

T = pytest.importorskip("transformers")
xt = pytest.importorskip("xprune.transformers")
from xprune.transformers.minilm import EmbeddingSimilarity, embed  # noqa: E402  (after the importorskip above)

V = 99  # vocabulary


def bert(head=None, labels=5):
    torch.manual_seed(0)
    cfg = T.BertConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=32,
        num_labels=labels,
    )
    cls = {None: T.BertModel, "tokens": T.BertForTokenClassification, "sequence": T.BertForSequenceClassification}
    return cls[head](cfg).double().eval()


def causal(kind):
    torch.manual_seed(0)
    if kind == "gpt2":
        model = T.GPT2LMHeadModel(
            T.GPT2Config(
                vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=40, n_positions=32, bos_token_id=0, eos_token_id=0
            )
        )
    else:
        model = T.LlamaForCausalLM(
            T.LlamaConfig(
                vocab_size=V,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                intermediate_size=37,
                max_position_embeddings=32,
                bos_token_id=0,
                eos_token_id=0,
                pad_token_id=0,
            )
        )
    return model.double().eval()


def ids_of(n=3, t=8, seed=1):
    return torch.randint(1, V, (n, t), generator=torch.Generator().manual_seed(seed))


def close(a, b, rtol=1e-6, atol=1e-12):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol * max(1.0, float(b[k].abs().max())))


def taylor_by_gates(model, units, inputs, objective, positions):
    """|d objective / d gate| / positions per head or neuron: Taylor's value, computed with gates (independent)."""
    with xt.gates(model, units) as g:
        value = objective(model(**inputs))
        grads = torch.autograd.grad(value, list(g.values.values()))
    return {name: (gr.double() / positions).abs() for name, gr in zip(g.values, grads, strict=True)}


# ----------------------------------------------------------------------------- batches of every form


def test_batches_read_hugging_face_forms():
    ids, mask = ids_of(4, 6), torch.ones(4, 6, dtype=torch.long)
    labels = ids.clone()
    pair = list(_inputs.batches((ids, labels), 3))  # (input_ids, labels) of the same shape: one pair, cut in two
    assert [tuple(x.shape) for x, _ in pair] == [(3, 6), (1, 6)] and torch.equal(pair[0][1], labels[:3])
    enc = T.BatchEncoding({"input_ids": ids, "attention_mask": mask, "labels": labels})
    whole = list(_inputs.batches(enc, 3))  # a tokenizer's output for the whole data set
    assert [type(x) for x, _ in whole] == [dict, dict] and sorted(whole[0][0]) == ["attention_mask", "input_ids"]
    assert torch.equal(whole[1][1], labels[3:])
    loader = torch.utils.data.DataLoader(
        [{"input_ids": ids[i], "attention_mask": mask[i], "label": i % 2} for i in range(4)], batch_size=2
    )
    (x, y), _ = list(_inputs.batches(loader))
    assert sorted(x) == ["attention_mask", "input_ids"] and y.tolist() == [0, 1]
    items = [T.BatchEncoding({"input_ids": ids, "labels": labels})]  # a UserDict, not a dict
    ((x, y),) = list(_inputs.batches(items))
    assert type(x) is dict and torch.equal(y, labels)
    assert next(iter(_inputs.batches([ids], need_labels=False)))[1] is None  # inputs alone
    with pytest.raises(DataError, match=r"^each batch needs labels here; got a dict with keys \['input_ids'\]"):
        list(_inputs.batches([{"input_ids": ids}]))
    with pytest.raises(DataError, match="both 'labels' and 'label'"):
        list(_inputs.batches([{"input_ids": ids, "labels": labels, "label": labels}]))
    with pytest.raises(DataError, match="same number of rows"):
        list(_inputs.batches({"input_ids": ids, "text": ["a"] * 4}))


def test_causal_lm_pair_of_ids_and_labels_is_scored_with_the_shift():
    # issue: (input_ids, labels) of the same shape failed with "each batch must be an (inputs, labels) pair"
    model, ids = causal("gpt2"), ids_of()
    labels = ids.clone()
    labels[0, 3] = labels[2, 5] = -100  # not counted
    units = xprune.discover(model, ids[:1], "heads")
    s = xprune.score(model, (ids, labels), "taylor-mean", units, normalize=None)

    def objective(out):  # logits at t predict labels at t + 1
        logits, y = out.logits[:, :-1], labels[:, 1:]
        keep = y != -100
        return logits[keep].gather(1, y[keep][:, None]).sum()

    close(s, taylor_by_gates(model, units, {"input_ids": ids}, objective, ids.numel()))
    assert all(v.sum() > 0 for v in xprune.score(model, (ids, labels), "lrp", "heads").values())


def test_token_classification_labels_are_not_shifted():
    model = bert("tokens")
    ids = ids_of(3, 7)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(2))
    labels[0, :2] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    units = xprune.discover(model, {"input_ids": ids[:1]}, "heads")
    s = xprune.score(model, [batch], "taylor-mean", units, normalize=None)

    def objective(out):
        keep = (labels != -100) & (mask == 1)
        return out.logits[keep].gather(1, labels[keep][:, None]).sum()

    inputs = {"input_ids": ids, "attention_mask": mask}
    close(s, taylor_by_gates(model, units, inputs, objective, int(mask.sum())))


def test_dicts_batch_encodings_and_dataloaders_score_like_pairs():
    model = bert("sequence")
    ids, y = ids_of(5, 6), torch.tensor([0, 1, 2, 3, 4])
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    ref = xprune.score(model, [({"input_ids": ids, "attention_mask": mask}, y)], "lrp", "heads")
    forms = {
        "dicts": [{"input_ids": ids, "attention_mask": mask, "labels": y}],
        "batch encoding": [T.BatchEncoding({"input_ids": ids, "attention_mask": mask, "labels": y})],
        "whole encoding": T.BatchEncoding({"input_ids": ids, "attention_mask": mask, "labels": y}),
        "dataloader": torch.utils.data.DataLoader(
            [{"input_ids": ids[i], "attention_mask": mask[i], "labels": y[i]} for i in range(5)], batch_size=5
        ),
    }
    for _name, data in forms.items():
        close(xprune.score(model, data, "lrp", "heads"), ref, rtol=1e-9)


def test_vision_dicts_score_like_pixel_pairs():
    torch.manual_seed(0)
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
    model = T.ViTForImageClassification(cfg).double().eval()
    x, y = torch.randn(4, 1, 8, 8, dtype=torch.double), torch.tensor([0, 1, 2, 0])
    for crit in ("lrp", "taylor"):
        close(
            xprune.score(model, [{"pixel_values": x, "labels": y}], crit, "neurons"),
            xprune.score(model, (x, y), crit, "neurons"),
            rtol=1e-9,
        )


def test_dict_without_labels_needs_a_target_that_needs_none():
    model = bert("sequence")
    data = [{"input_ids": ids_of(2, 5)}]
    with pytest.raises(DataError) as e:
        xprune.score(model, data, "lrp", "heads")
    assert "needs labels" in str(e.value) and "target='predicted'" in str(e.value) and "\n" not in str(e.value)
    s = xprune.score(model, data, "lrp", "heads", target="predicted")
    assert all(torch.isfinite(v).all() for v in s.values())
    assert xprune.score(model, data, "activation", "heads").total == 8  # reads no target: no labels needed


def test_bad_labels_get_one_line_errors():
    model, ids = causal("gpt2"), ids_of(2, 6)
    cases = [
        ((ids, torch.cat([ids, ids[:, :1]], 1)), r"y must hold one label per sample \[N\] or"),
        (
            [({"input_ids": ids}, ids[:, :4])],
            r"labels of shape \(2, 4\) do not fit the model output of shape \(2, 6, 99\)",
        ),
        ([({"input_ids": ids}, torch.full_like(ids, 150))], r"labels must lie in \[0, 98\]"),
        ([({"input_ids": ids}, ids * 0.5)], "labels must be integer class indices"),
    ]
    for data, match in cases:
        with pytest.raises(DataError) as e:
            xprune.score(model, data, "lrp", "heads")
        assert "\n" not in str(e.value) and e.match(match)
    with pytest.raises(DataError, match=r"returned 3 classes for a batch of 2 samples"):
        xprune.score(model, [{"input_ids": ids}], "taylor", "heads", target=lambda out, y: torch.zeros(3))
    with pytest.raises(XpruneError, match="unknown target 'embeddings'; use 'label', 'predicted', 'embedding'"):
        xprune.score(model, [{"input_ids": ids}], "taylor", "heads", target="embeddings")
    vit_like = [{"pixel_values": torch.tensor([[float("nan")]]), "labels": torch.tensor([0])}]
    with pytest.raises(DataError, match="the inputs contain NaN or Inf values"):
        mlp = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        xprune.score(mlp, [(torch.ones(1, 1), torch.tensor([0])), *vit_like], "taylor")


def test_labels_as_a_column_are_one_per_sample():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).double()
    X, y = torch.randn(12, 3, dtype=torch.double), torch.arange(12) % 4
    close(xprune.score(mlp, (X, y[:, None]), "lrp"), xprune.score(mlp, (X, y), "lrp"), rtol=0)
    with torch.no_grad():
        expected = float((mlp(X).argmax(-1) == y).double().mean())
    assert xprune.measure.accuracy(mlp, [(X, y[:, None])]) == pytest.approx(expected)  # not [N] vs [N, 1] broadcast


# ----------------------------------------------------------------------------- labels per token, every criterion

HEADS_NEURONS = ["lrp", "gradient", "taylor", "singe", "activation", "wanda", "llm-pruner", "random", "weight", "l2"]


@pytest.mark.parametrize("criterion", HEADS_NEURONS)
def test_every_criterion_takes_labels_per_token(criterion):
    model, ids = causal("llama"), ids_of(2, 6)
    opts = {"n_steps": 2} if criterion == "singe" else {}
    for unit in ("heads", "neurons"):
        s = xprune.score(model, [{"input_ids": ids, "labels": ids}], criterion, unit, **opts)
        assert s.kind == unit and all(torch.isfinite(v).all() for v in s.values())


@pytest.mark.parametrize(
    "criterion,unit",
    [
        ("lrp", "channels"),
        ("taylor", "channels"),
        ("gradient", "channels"),
        ("activation", "channels"),
        ("taylor", "weights"),
        ("lrp", "weights"),
        ("gradient", "weights"),
    ],
)
def test_labels_per_token_on_channels_and_weights(criterion, unit):
    model = bert("tokens")
    ids = ids_of(2, 6)
    labels = torch.randint(0, 5, ids.shape, generator=torch.Generator().manual_seed(3))
    s = xprune.score(model, (ids, labels), criterion, unit)
    assert all(torch.isfinite(v).all() for v in s.values()) and s.total > 0


@pytest.mark.parametrize("criterion", ["lrp", "gradient", "taylor", "singe"])
def test_one_labelled_token_equals_one_label_per_sample(criterion):
    """Labels per token with only the last token labelled explain what one label per sample explains."""
    model = bert("tokens")
    ids = ids_of(3, 6)
    y = torch.tensor([1, 4, 2])
    per_token = torch.full_like(ids, -100)
    per_token[:, -1] = y
    opts = {"n_steps": 2} if criterion == "singe" else {}
    for unit in ("heads", "channels") if criterion != "singe" else ("heads",):
        close(
            xprune.score(model, (ids, per_token), criterion, unit, **opts),
            xprune.score(model, [(ids, y)], criterion, unit, **opts),
            rtol=1e-9,
        )


def test_predicted_target_explains_the_labelled_tokens():
    model = bert("tokens")
    ids = ids_of(2, 6)
    with torch.no_grad():
        top = model(input_ids=ids).logits.argmax(-1)
    labels = top.clone()
    labels[0, 1:3] = -100
    wrong = (labels + 1) % 5  # other labels at the same tokens: "predicted" reads only where they are
    wrong[labels == -100] = -100
    for crit in ("lrp", "taylor"):
        close(
            xprune.score(model, (ids, wrong), crit, "heads", target="predicted"),
            xprune.score(model, (ids, labels), crit, "heads"),
            rtol=1e-9,
        )


@pytest.mark.parametrize("criterion", ["lrp", "singe"])
def test_causal_shift_matches_the_truncated_sequence(criterion):
    """The token after the block, labelled per token, is what the truncated block with one label explains."""
    model, ids = causal("gpt2"), ids_of(2, 7)
    per_token = torch.full_like(ids, -100)
    per_token[:, -1] = ids[:, -1]  # judged at position T-2
    opts = {"n_steps": 2} if criterion == "singe" else {}
    for unit in ("heads", "neurons"):
        close(
            xprune.score(model, (ids, per_token), criterion, unit, **opts),
            xprune.score(model, [(ids[:, :-1], ids[:, -1])], criterion, unit, **opts),
            rtol=1e-7,
        )


def test_llm_pruner_with_hugging_face_labels_is_the_next_token_loss():
    model, ids = causal("llama"), ids_of(2, 8)
    close(
        xprune.score(model, [{"input_ids": ids, "labels": ids}], "llm-pruner", "neurons"),
        xprune.score(model, xprune.llm.TokenBlocks(ids), "llm-pruner", "neurons"),
        rtol=1e-9,
    )


# ----------------------------------------------------------------------------- padding


def _padded(ids_list, labels_list, pad_label=None):
    t = max(len(i) for i in ids_list)
    ids = torch.stack([torch.cat([i, torch.full((t - len(i),), 7)]) for i in ids_list])
    mask = torch.stack([torch.cat([torch.ones(len(i)), torch.zeros(t - len(i))]).long() for i in ids_list])
    if labels_list[0].dim() == 0:
        return {"input_ids": ids, "attention_mask": mask}, torch.stack(labels_list)
    # padding labelled with the pad token itself (not -100): the attention mask must exclude it
    labels = torch.stack(
        [torch.cat([y, torch.full((t - len(y),), 7 if pad_label is None else pad_label)]) for y in labels_list]
    )
    return {"input_ids": ids, "attention_mask": mask}, labels


PADDING_CASES = [
    ("lrp", "heads"),
    ("lrp", "neurons"),
    ("lrp", "channels"),
    ("taylor", "heads"),
    ("taylor", "channels"),
    ("gradient", "neurons"),
    ("gradient", "channels"),
    ("activation", "heads"),
    ("activation", "channels"),
    ("singe", "neurons"),
    ("wanda", "heads"),
    ("llm-pruner", "neurons"),
]


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_padding_changes_no_score(kind):
    model = bert("tokens") if kind == "bert" else causal(kind)
    lengths = [7, 4, 5]
    ids_list = [ids_of(1, n, seed=10 + n)[0] for n in lengths]
    labels_list = (
        [torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
        if kind == "bert"
        else ids_list
    )
    alone = [
        ({"input_ids": i[None]}, y[None]) for i, y in zip(ids_list, labels_list, strict=True)
    ]  # unpadded, one per batch
    padded = [_padded(ids_list, labels_list, pad_label=0 if kind == "bert" else None)]
    for criterion, unit in PADDING_CASES:
        if unit == "channels" and kind != "bert":
            continue  # channel discovery does not trace Hugging Face causal LMs (their output is not a tensor)
        opts = {"n_steps": 2} if criterion == "singe" else {}
        close(
            xprune.score(model, padded, criterion, unit, **opts),
            xprune.score(model, alone, criterion, unit, **opts),
            rtol=1e-6,
            atol=1e-10,
        )
    if kind == "bert":  # the sentence embedding is the mean over the tokens of the attention mask
        encoder = bert()
        for criterion, unit in [("lrp", "heads"), ("taylor", "neurons"), ("gradient", "channels")]:
            close(
                xprune.score(encoder, [padded[0][0]], criterion, unit, target="embedding"),
                xprune.score(encoder, [x for x, _ in alone], criterion, unit, target="embedding"),
                rtol=1e-6,
                atol=1e-10,
            )


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_padding_changes_no_score_with_one_label_per_sample(kind):
    model = causal("gpt2") if kind == "gpt2" else bert("sequence", labels=2)
    ids_list = [ids_of(1, n, seed=n)[0] for n in (6, 3)]
    # gpt2: the next token after each, judged at its last token (not at padding); bert: the class of each
    y = [torch.tensor(5), torch.tensor(9)] if kind == "gpt2" else [torch.tensor(0), torch.tensor(1)]
    alone = [({"input_ids": i[None]}, t[None]) for i, t in zip(ids_list, y, strict=True)]
    cases = [("lrp", "heads"), ("taylor", "neurons"), ("gradient", "heads"), ("activation", "heads")]
    if kind == "bert":
        cases += [("taylor", "channels"), ("activation", "channels"), ("gradient", "channels")]
    for criterion, unit in cases:
        close(
            xprune.score(model, [_padded(ids_list, y)], criterion, unit),
            xprune.score(model, alone, criterion, unit),
            rtol=1e-6,
            atol=1e-10,
        )


# ----------------------------------------------------------------------------- class coverage


def test_no_class_coverage_warning_on_language_models():
    model, ids = causal("gpt2"), ids_of(2, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xprune.score(model, (ids, ids), "taylor", "heads")  # per token
        xprune.score(model, [({"input_ids": ids}, ids[:, -1])], "taylor", "heads")  # one next token per block
    with pytest.warns(xprune.errors.XpruneWarning, match="cover 2 of the model's 5 classes"):
        xprune.score(bert("sequence"), [({"input_ids": ids}, torch.tensor([0, 1]))], "taylor", "heads")


# ----------------------------------------------------------------------------- measuring tokens


def test_token_accuracy_of_a_causal_lm():
    model, ids = causal("gpt2"), ids_of(3, 8)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = ids.clone()
    with torch.no_grad():  # some tokens are what the model predicts, so that the accuracy is not 0
        labels[:, 3:5] = model(input_ids=ids, attention_mask=mask).logits[:, 2:4].argmax(-1)
    labels[0, 2] = -100
    acc = xprune.measure.accuracy(model, [{"input_ids": ids, "attention_mask": mask, "labels": labels}])
    with torch.no_grad():
        pred = model(input_ids=ids, attention_mask=mask).logits[:, :-1].argmax(-1)
    y = labels[:, 1:]
    keep = (y != -100) & (mask[:, 1:] == 1)
    assert acc == pytest.approx(float((pred == y)[keep].double().mean()))
    assert 0 < acc < 1
    with torch.no_grad():  # one label per sample on tokens: the last token that is not padding
        last = model(input_ids=ids, attention_mask=mask).logits[[0, 1, 2], [7, 4, 7]].argmax(-1)
    y1 = last.clone()
    y1[0] = (y1[0] + 1) % V
    assert xprune.measure.accuracy(model, [({"input_ids": ids, "attention_mask": mask}, y1)]) == pytest.approx(2 / 3)


def test_curve_on_a_language_model_is_a_token_accuracy():
    from xprune.evaluate import curve

    model, ids = causal("llama"), ids_of(2, 8)
    data = [{"input_ids": ids, "labels": ids}]
    c = curve(model, data, data, "taylor", units="heads", rates=[0.0, 0.5], mode="remove")
    assert c.accuracies[0] == pytest.approx(xprune.measure.accuracy(model, data)) and c.removed == [0, 2]


# ----------------------------------------------------------------------------- target="embedding"


def _sentences():
    ids = ids_of(3, 9, seed=4)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("criterion", ["lrp", "taylor-mean", "gradient"])
def test_embedding_target_equals_the_similarity_wrapper(criterion):
    model, batch = bert(), _sentences()
    wrapped = EmbeddingSimilarity(model)
    via_wrapper = [(dict(batch, ref=embed(model, batch)), torch.zeros(3, dtype=torch.long))]
    for unit in ("heads", "neurons", "channels"):
        s = xprune.score(model, [batch], criterion, unit, target="embedding", normalize=None)
        w = xprune.score(wrapped, via_wrapper, criterion, unit, target=0, normalize=None)
        common = [k for k in s if "model." + k in w]  # the wrapper's ref input pins the residual stream's channels
        assert common and (unit == "channels" or len(common) == len(s))
        close({k: s[k] for k in common}, {k: w["model." + k] for k in common}, rtol=1e-5)


def test_embedding_target_needs_no_labels_and_no_wrapper():
    model, batch = bert(), _sentences()
    ref = xprune.score(model, [batch], "taylor-mean", "heads", target="embedding")
    close(xprune.score(model, [dict(batch, labels=torch.zeros(3))], "taylor-mean", "heads", target="embedding"), ref)
    close(xprune.score(model, T.BatchEncoding(batch), "taylor-mean", "heads", target="embedding"), ref)
    plain = xprune.score(model, [batch["input_ids"][:1]], "lrp", "heads", target="embedding")  # input_ids alone
    assert all(v.sum() > 0 for v in plain.values())
    units = xprune.discover(model, {"input_ids": batch["input_ids"][:1]}, "heads")
    singe = xprune.score(model, [batch], "singe-fast", units, target="embedding", n_steps=1, normalize=None)
    taylor = xprune.score(model, [batch], "taylor-mean", units, target="embedding", normalize=None)
    close(singe, {k: v * float(batch["attention_mask"].sum()) for k, v in taylor.items()}, rtol=1e-6)


def test_embedding_target_on_a_model_with_logits_explains_the_logits_vector():
    model, batch = bert("sequence"), _sentences()
    units = xprune.discover(model, {"input_ids": batch["input_ids"][:1]}, "neurons")
    s = xprune.score(model, [batch], "taylor-mean", units, target="embedding", normalize=None)

    def objective(out):
        return (out.logits * torch.nn.functional.normalize(out.logits.detach(), dim=-1)).sum()

    close(s, taylor_by_gates(model, units, batch, objective, int(batch["attention_mask"].sum())))


def test_encoder_without_head_gets_a_one_line_hint():
    model, batch = bert(), _sentences()
    with pytest.raises(DataError) as e:  # the issue: "cannot find class scores in a model output of type ..."
        xprune.score(model, [dict(batch, labels=torch.zeros(3, dtype=torch.long))], "lrp", "heads")
    assert "target='embedding'" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(XpruneError, match="objective='loss' is the cross-entropy of class targets"):
        xprune.score(model, [batch], "taylor-mean", "heads", target="embedding", objective="loss")
