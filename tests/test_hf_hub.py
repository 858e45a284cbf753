"""Hugging Face models in and out (issue 18): size records through wrappers, config fields, save -> reload
round trips of BERT / ViT / GPT-2 / Llama (GQA), and xprune.transformers.hub (load, text_data, save)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import copy
import doctest
import json
import sys
import warnings

import pytest
import torch
from torch import nn

import xprune
from xprune.errors import DataError, XpruneError, XpruneWarning

T = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
xt = pytest.importorskip("xprune.transformers")
from xprune.transformers import hub  # noqa: E402 - after the importorskips above
from xprune.transformers.minilm import EmbeddingSimilarity  # noqa: E402 - as above

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "mat",
    "good",
    "bad",
    "movie",
    "was",
    "very",
    "not",
    "fun",
    "dull",
    "long",
    "short",
    "it",
    "film",
]


# ----------------------------------------------------------------------------- tiny models and their data


def tiny(kind):
    """A tiny random model with a task head, and scoring data ``(X, y)`` with 1-D labels."""
    torch.manual_seed(0)
    if kind == "bert":
        cfg = T.BertConfig(
            vocab_size=len(WORDS) + 5,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=40,
            max_position_embeddings=32,
            num_labels=3,
        )
        model = T.BertForSequenceClassification(cfg)
        X = torch.randint(5, cfg.vocab_size, (12, 7))
        return model.eval(), X, torch.arange(12) % 3
    if kind == "vit":
        cfg = T.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=3,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=40,
            num_labels=3,
        )
        return T.ViTForImageClassification(cfg).eval(), torch.randn(12, 3, 8, 8), torch.arange(12) % 3
    if kind == "gpt2":
        cfg = T.GPT2Config(
            vocab_size=len(WORDS) + 2, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=1, eos_token_id=1
        )
        model = T.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = T.LlamaConfig(
            vocab_size=len(WORDS) + 2,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=40,
            max_position_embeddings=32,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
        model = T.LlamaForCausalLM(cfg)
    else:
        raise ValueError(kind)
    ids = torch.randint(2, cfg.vocab_size, (12, 8))
    return model.eval(), ids[:, :-1], ids[:, -1]  # next-token targets at the last position


def out_of(o):
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def odd_share(scores, ratio):
    """A ratio close to ``ratio`` removing an odd number of units: over two layers, necessarily non-uniform."""
    n = round(ratio * scores.total) // 2 * 2 + 1
    return (n + 0.5) / scores.total


def prune(model, data_or_X, y=None, ratio=0.3):
    """Heads, then MLP neurons, each scored and selected (globally) by xprune on the (pruned) model."""
    data = data_or_X if y is None else (data_or_X, y)
    for unit in ("heads", "neurons"):
        scores = xprune.score(model, data, "taylor", unit)
        model = xprune.apply(model, xprune.select(scores, odd_share(scores, ratio)))
    return model


def write_bert_tokenizer(folder=None):
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = T.BertTokenizerFast(vocab={w: i for i, w in enumerate(special + WORDS)})
    if folder is not None:
        tok.save_pretrained(folder)
    return tok


def gpt2_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


# ----------------------------------------------------------------------------- size records through wrappers


class Last(nn.Module):
    """A user wrapper: the next-token logits of the last position of a causal LM held as a child."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids).logits[:, -1]


def test_pruned_through_embedding_similarity_saves_and_reloads(tmp_path):
    """The MiniLM route: pruning a BERT encoder through EmbeddingSimilarity records its sizes on the encoder."""
    torch.manual_seed(0)
    cfg = T.BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=16,
    )
    encoder = T.BertModel(cfg).eval()
    ids, mask = torch.randint(0, 40, (6, 7)), torch.ones(6, 7, dtype=torch.long)
    mask[0, 5:] = 0
    ref = torch.nn.functional.normalize(torch.randn(6, 32), dim=-1)
    data = [({"input_ids": ids, "attention_mask": mask, "ref": ref}, torch.zeros(6, dtype=torch.long))]
    wrapped = prune(EmbeddingSimilarity(encoder), data)
    record = wrapped.model.config.xprune_pruning
    assert len(set(record["heads"])) > 1 and len(set(record["neurons"])) > 1  # non-uniform: needs the record
    wrapped.model.save_pretrained(tmp_path)
    loaded = xt.load_pruned(tmp_path)
    assert type(loaded) is T.BertModel and shapes(loaded) == shapes(wrapped.model)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, attention_mask=mask).last_hidden_state,
            wrapped.model(input_ids=ids, attention_mask=mask).last_hidden_state,
            atol=1e-6,
            rtol=0,
        )
        torch.testing.assert_close(
            EmbeddingSimilarity(loaded)(ids, mask, ref), wrapped(ids, mask, ref), atol=1e-6, rtol=0
        )
    with pytest.raises(RuntimeError):  # plain from_pretrained cannot rebuild non-uniform blocks
        T.AutoModel.from_pretrained(tmp_path)


def test_record_on_every_hf_model_inside_a_wrapper():
    first, X, _ = tiny("llama")
    second = copy.deepcopy(first)

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = first, second

        def forward(self, input_ids):
            return self.a(input_ids=input_ids).logits[:, -1] + self.b(input_ids=input_ids).logits[:, -1]

    model = Both()
    plan = xprune.Plan(
        "neurons",
        {"a.model.layers.0.mlp": [0, 1, 2], "b.model.layers.1.mlp": [5]},
        {"a.model.layers.0.mlp": 40, "b.model.layers.1.mlp": 40},
    )
    pruned = xprune.apply(model, plan, example_inputs=X[:1])
    assert pruned.a.config.xprune_pruning["neurons"] == [37, 40]
    assert pruned.b.config.xprune_pruning["neurons"] == [40, 39]
    assert xt.record_sizes(pruned) == pruned.a.config.xprune_pruning  # the first (outermost) model's record
    assert not hasattr(model.a.config, "xprune_pruning")  # apply works on a copy


def test_shared_config_pruned_differently_warns():
    first, X, _ = tiny("llama")
    second = T.LlamaForCausalLM(first.config).eval()  # the same config object

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = first, second

        def forward(self, input_ids):
            return self.a(input_ids=input_ids).logits + self.b(input_ids=input_ids).logits

    plan = xprune.Plan("neurons", {"a.model.layers.0.mlp": [0]}, {"a.model.layers.0.mlp": 40})
    with pytest.warns(XpruneWarning, match="share one config"):
        xprune.apply(Both(), plan, example_inputs=X[:1])


# ----------------------------------------------------------------------------- config fields (plain from_pretrained)


@pytest.mark.parametrize("kind", ["bert", "vit", "gpt2", "llama"])
def test_uniform_neurons_update_the_config_and_plain_from_pretrained_works(kind, tmp_path):
    model, X, y = tiny(kind)
    pruned = xprune.apply(model, xprune.select(xprune.score(model, (X, y), "taylor", "neurons"), 0.25, scope="local"))
    full = xt.mlp_specs(model)[0].size  # 40; GPT-2: 4 x 32
    assert set(pruned.config.xprune_pruning["neurons"]) == {full - full // 4}
    field = "n_inner" if kind == "gpt2" else "intermediate_size"
    assert getattr(pruned.config, field) == full - full // 4
    assert getattr(model.config, field) == (None if kind == "gpt2" else 40)  # the original is untouched
    pruned.save_pretrained(tmp_path)
    for loaded in (type(model).from_pretrained(tmp_path).eval(), xt.load_pruned(tmp_path)):
        assert shapes(loaded) == shapes(pruned)
        with torch.no_grad():
            torch.testing.assert_close(out_of(loaded(X)), out_of(pruned(X)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind", ["bert", "vit", "gpt2", "llama"])
def test_uniform_heads_update_the_config_only_where_the_head_width_is_explicit(kind, tmp_path):
    model, X, y = tiny(kind)
    units = xprune.discover(model, X[:1], "heads")
    plan = xprune.select(xprune.score(model, (X, y), "taylor", units), 0.5, scope="local")
    pruned, masked = xprune.apply(model, plan), xprune.apply(model, plan, "mask")
    with torch.no_grad():  # the changed config does not change what the pruned model computes
        torch.testing.assert_close(out_of(pruned(X)), out_of(masked(X)), atol=1e-5, rtol=0)
    pruned.save_pretrained(tmp_path)
    loaded = xt.load_pruned(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(out_of(loaded(X)), out_of(pruned(X)), atol=1e-6, rtol=0)
    if kind == "llama":  # explicit head_dim: 2 of 4 query heads, 1 of 2 KV heads
        assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (2, 1)
        plain = T.LlamaForCausalLM.from_pretrained(tmp_path).eval()
        assert shapes(plain) == shapes(pruned)
        with torch.no_grad():
            torch.testing.assert_close(out_of(plain(X)), out_of(pruned(X)), atol=1e-6, rtol=0)
            gen = plain.generate(X[:1], max_new_tokens=4, do_sample=False)
            torch.testing.assert_close(gen, pruned.generate(X[:1], max_new_tokens=4, do_sample=False))
    else:  # head width = hidden / heads: changing the count would build another model
        assert pruned.config.num_attention_heads == 4
        with pytest.raises(RuntimeError):
            type(model).from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("kind", ["bert", "vit", "gpt2", "llama"])
def test_round_trip_non_uniform(kind, tmp_path):
    model, X, y = tiny(kind)
    pruned = prune(model, X, y)
    record = pruned.config.xprune_pruning
    assert len(set(record["heads"])) > 1 and len(set(record["neurons"])) > 1, record
    if kind == "llama":
        assert record["heads"] == [2 * k for k in record["kv_heads"]]  # KV groups of two query heads
    hub.save(pruned, tmp_path / "m")
    loaded = xt.load_pruned(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert shapes(loaded) == shapes(pruned)
    assert loaded.config.xprune_pruning == record
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(out_of(loaded(X)), out_of(pruned(X)), atol=1e-6, rtol=0)
    again = hub.load(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(out_of(again.model(X)), out_of(pruned(X)), atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore:the reference samples cover")
def test_round_trip_through_a_user_wrapper(tmp_path):
    lm, X, y = tiny("llama")
    wrapped = prune(Last(lm), X, y)
    assert len(set(wrapped.lm.config.xprune_pruning["neurons"])) > 1
    hub.save(wrapped, tmp_path / "m")  # saves the Llama inside
    loaded = xt.load_pruned(tmp_path / "m")
    assert isinstance(loaded, T.LlamaForCausalLM) and shapes(loaded) == shapes(wrapped.lm)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=X).logits[:, -1], wrapped(X), atol=1e-6, rtol=0)


def test_loaded_pruned_model_pickles_and_prunes_again(tmp_path):
    model, X, y = tiny("gpt2")
    prune(model, X, y).save_pretrained(tmp_path)
    loaded = xt.load_pruned(tmp_path)
    assert type(loaded) is T.GPT2LMHeadModel  # not a private subclass: torch.save / deepcopy work
    import io

    buf = io.BytesIO()
    torch.save(loaded, buf)
    twice = prune(loaded, X, y, ratio=0.2)
    assert sum(twice.config.xprune_pruning["neurons"]) < sum(loaded.config.xprune_pruning["neurons"])


# ----------------------------------------------------------------------------- hub.load


@pytest.fixture
def bert_folder(tmp_path):
    model, X, _y = tiny("bert")
    model.config.id2label, model.config.label2id = {0: "bad", 1: "dull", 2: "good"}, {"bad": 0, "dull": 1, "good": 2}
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    write_bert_tokenizer(folder)
    return folder, model, X


def test_load_bert_classifier_with_tokenizer(bert_folder):
    folder, model, X = bert_folder
    loaded = hub.load(str(folder))
    assert loaded.task == "sequence-classification" and isinstance(loaded.model, T.BertForSequenceClassification)
    assert not loaded.model.training and loaded.path == folder
    assert loaded.normalization is None and loaded.image_size is None
    assert loaded.tokenizer("the cat sat")["input_ids"] == [2, 5, 7, 9, 3]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X).logits, model(X).logits)
    enc = hub.load(folder, task="embedding")  # the bare encoder out of the classifier's checkpoint
    assert enc.task == "embedding" and type(enc.model) is T.BertModel
    with torch.no_grad():
        torch.testing.assert_close(enc.model(X).last_hidden_state, model.bert(X).last_hidden_state)


def test_load_gpt2_and_vit_infer_task_and_read_the_image_processor(tmp_path):
    lm, _ids, _ = tiny("gpt2")
    lm.save_pretrained(tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(tmp_path / "gpt2")
    loaded = hub.load(tmp_path / "gpt2")
    assert loaded.task == "causal-lm" and loaded.tokenizer is not None and loaded.normalization is None
    vit, images, _ = tiny("vit")
    vit.save_pretrained(tmp_path / "vit")
    T.ViTImageProcessor(
        size={"height": 8, "width": 8}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]
    ).save_pretrained(tmp_path / "vit")
    loaded = hub.load(tmp_path / "vit")
    assert loaded.task == "image-classification" and loaded.tokenizer is None
    assert loaded.normalization == {
        "method": "mean-std",
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.25, 0.3],
        "source": "preprocessor_config.json",
    }
    assert loaded.image_size == (8, 8)
    T.ViTImageProcessor(do_normalize=False, size={"height": 8, "width": 8}).save_pretrained(tmp_path / "vit")
    assert hub.load(tmp_path / "vit").normalization is None
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images).logits, vit(images).logits)


@pytest.mark.parametrize(
    "name, task",
    [
        ("GPT2LMHeadModel", "causal-lm"),
        ("LlamaForCausalLM", "causal-lm"),
        ("BertForSequenceClassification", "sequence-classification"),
        ("BertForTokenClassification", "token-classification"),
        ("ViTForImageClassification", "image-classification"),
        ("DeiTForImageClassificationWithTeacher", "image-classification"),
        ("BertModel", "embedding"),
        ("BertForMaskedLM", None),
        ("AutoModel", None),
    ],
)
def test_task_of(name, task):
    assert hub.task_of(name) == task


def test_load_of_a_pruned_folder_goes_through_load_pruned(bert_folder, tmp_path, monkeypatch):
    _folder, model, X = bert_folder
    pruned = prune(model, X, torch.arange(len(X)) % 3)
    hub.save(pruned, tmp_path / "pruned", tokenizer=write_bert_tokenizer())
    calls = []
    real = xt.surgery.load_pruned
    monkeypatch.setattr(hub, "load_pruned", lambda *a, **k: calls.append(a) or real(*a, **k))
    loaded = hub.load(tmp_path / "pruned")
    assert len(calls) == 1 and loaded.tokenizer is not None and loaded.task == "sequence-classification"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X).logits, pruned(X).logits, atol=1e-6, rtol=0)
    encoder = hub.load(tmp_path / "pruned", task="embedding")  # the pruned encoder alone
    assert len(calls) == 2 and type(encoder.model) is T.BertModel
    with torch.no_grad():
        torch.testing.assert_close(
            encoder.model(X).last_hidden_state, pruned.bert(X).last_hidden_state, atol=1e-6, rtol=0
        )
    with pytest.raises(XpruneError, match="GPT2LMHeadModel does not take the BertConfig"):
        xt.load_pruned(tmp_path / "pruned", T.GPT2LMHeadModel)
    with pytest.raises(XpruneError, match=r"do not fit BertForMaskedLM shrunk to the recorded sizes \(missing"):
        xt.load_pruned(tmp_path / "pruned", T.BertForMaskedLM)


def test_load_a_model_from_the_local_cache_by_name(bert_folder, tmp_path, monkeypatch):
    """A name in the Hugging Face cache is read from its snapshot; other names are refused (nothing downloads)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    folder, model, X = bert_folder
    repo = tmp_path / "hub" / "models--xprune-tests--tiny-bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots").mkdir()
    folder.rename(repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded = hub.load("xprune-tests/tiny-bert")
    assert loaded.path == repo / "snapshots" / ("0" * 40) and loaded.tokenizer is not None
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(X).logits, model(X).logits)
    with pytest.raises(XpruneError, match="'xprune-tests/other' is neither a folder nor a model in the local"):
        hub.load("xprune-tests/other")


def test_load_errors(tmp_path, bert_folder, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XpruneError, match=r"has no config\.json"):
        hub.load(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(XpruneError, match="is a file"):
        hub.load(tmp_path / "file.txt")
    with pytest.raises(XpruneError, match=r"nor a model in the local Hugging Face cache.*downloads nothing"):
        hub.load("xprune-tests/not-a-cached-model")
    with pytest.raises(XpruneError, match="unknown task 'lm'"):
        hub.load(bert_folder[0], task="lm")
    # weights that do not fit: a pruned model saved without its record
    folder, model, X = bert_folder
    pruned = prune(model, X, torch.arange(len(X)) % 3)
    del pruned.config.xprune_pruning
    pruned.save_pretrained(tmp_path / "norecord")
    with pytest.raises(XpruneError, match=r"do not fit .* without xprune's size record") as err:
        hub.load(tmp_path / "norecord")
    assert "\n" not in str(err.value)
    # an architecture without a task
    T.BertForMaskedLM(model.config).save_pretrained(tmp_path / "mlm")
    with pytest.raises(XpruneError, match="no task for BertForMaskedLM; pass task="):
        hub.load(tmp_path / "mlm")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(XpruneError, match="need transformers: pip install"):
        hub.load(folder)


def test_load_warns_about_weights_initialised_at_random(bert_folder, tmp_path):
    bert_folder[1].bert.save_pretrained(tmp_path / "encoder")  # no classification head in this checkpoint
    with pytest.warns(XpruneWarning, match="2 weights of BertForSequenceClassification .* initialised at random"):
        loaded = hub.load(tmp_path / "encoder", task="sequence-classification")
    assert loaded.task == "sequence-classification"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hub.load(tmp_path / "encoder").task == "embedding"


# ----------------------------------------------------------------------------- hub.text_data


def test_text_data_txt_for_a_causal_lm(tmp_path):
    tok = gpt2_tokenizer()
    paragraphs = [" ".join(WORDS[i % 7 :] + WORDS[: i % 5]) for i in range(12)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(p.replace(" on ", "\non ") for p in paragraphs) + "\n")
    data = hub.text_data(tmp_path / "corpus.txt", tok, task="causal-lm", max_length=6, seed=1)
    assert data.classes is None and data.normalization is None and data.name == "corpus.txt"
    splits = [data.train, data.val, data.test]
    blocks = [ids for s in splits for ids in s.input_ids]
    assert all(2 <= len(b) <= 6 for b in blocks)
    # the blocks are consecutive pieces of every paragraph (an independent tokenisation of each)
    pieces = []
    for p in paragraphs:
        ids = tok(p)["input_ids"]
        pieces += [ids[a : a + 6] for a in range(0, len(ids), 6) if len(ids[a : a + 6]) >= 2]
    assert sorted(blocks) == sorted(pieces)
    assert len(data.test) == round(0.2 * len(pieces)) and len(data.val) == round(0.1 * len(pieces))
    inputs, labels = next(data.train.batches(len(data.train)))
    assert set(inputs) == {"input_ids", "attention_mask"} and labels.shape == inputs["input_ids"].shape
    assert torch.equal(labels, inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
    assert (inputs["attention_mask"] == 0).any()  # padded to the longest block of the batch
    # transformers' own loss on the padded batch is the mean over the real next tokens
    model, _, _ = tiny("gpt2")
    with torch.no_grad():
        loss = model(**inputs, labels=labels).loss
        logp, n = 0.0, 0
        for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True):
            ids = row[mask.bool()]
            lp = model(ids[None]).logits[0, :-1].log_softmax(-1)
            logp += lp.gather(1, ids[1:, None]).sum()
            n += len(ids) - 1
    torch.testing.assert_close(loss, -logp / n, atol=1e-5, rtol=1e-5)
    again = hub.text_data(tmp_path / "corpus.txt", tok, task="causal-lm", max_length=6, seed=1)
    assert again.test.input_ids == data.test.input_ids


def test_text_data_jsonl_labels_by_name_and_index(tmp_path, bert_folder):
    _folder, model, _ = bert_folder
    tok = write_bert_tokenizer()
    names = ["good", "bad", "dull"]
    rows = [
        {"text": f"the film was {'very ' * (i % 3)}{names[i % 3]}", "label": names[i % 3], "id": i} for i in range(30)
    ]
    (tmp_path / "named.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    id2label = model.config.id2label  # {0: bad, 1: dull, 2: good}
    data = hub.text_data(tmp_path / "named.jsonl", tok, task="sequence-classification", label_names=id2label)
    assert data.classes == ["bad", "dull", "good"]
    for split in data.splits().values():
        for text, label in zip(split.texts, split.y.tolist(), strict=True):
            assert text.endswith(data.classes[label])
    assert [int(c) for c in torch.bincount(data.test.y, minlength=3)] == [2, 2, 2]  # stratified
    assert [int(c) for c in torch.bincount(data.val.y, minlength=3)] == [1, 1, 1]
    ref = xprune.data.reference_samples(data.train, 3, seed=0)
    assert len(ref) == 9 and torch.bincount(ref.y).tolist() == [3, 3, 3]
    inputs, labels = next(ref.batches(9))
    assert inputs["input_ids"][:, 0].eq(2).all() and labels.tolist() == ref.y.tolist()
    s = xprune.score(model, data.train, "taylor", "heads", batch_size=8)  # usable as xprune data
    assert all(torch.isfinite(v).all() for v in s.values())
    # the same labels given as class indices; names unknown to a model with placeholder labels
    rows_int = [
        {"text": r["text"], "label": id2label_index}
        for r, id2label_index in zip(rows, [["bad", "dull", "good"].index(r["label"]) for r in rows], strict=True)
    ]
    (tmp_path / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows_int))
    by_int = hub.text_data(tmp_path / "index.jsonl", tok, task="sequence-classification", label_names=id2label)
    assert by_int.classes == data.classes and torch.equal(by_int.train.y, data.train.y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = hub.text_data(
            tmp_path / "named.jsonl",
            tok,
            task="sequence-classification",
            label_names={0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"},
        )
    assert plain.classes == ["bad", "dull", "good"]
    with pytest.warns(XpruneWarning, match="sorted names"):
        hub.text_data(
            tmp_path / "named.jsonl",
            tok,
            task="sequence-classification",
            label_names=["negative", "neutral", "positive"],
        )
    with pytest.raises(DataError, match=r"3 label names .* the model has 2 classes"):
        hub.text_data(tmp_path / "named.jsonl", tok, task="sequence-classification", label_names=["x", "y"])
    emb = hub.text_data(tmp_path / "named.jsonl", tok, task="embedding", max_length=5)
    assert emb.classes is None and max(len(s) for s in emb.train.input_ids) == 5
    inputs, labels = next(emb.train.batches(4))
    assert torch.equal(labels, torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "the cat", "label": 0', r"bad.jsonl:3: not valid JSON"),
        ('["the cat", 0]', r"bad.jsonl:3: expected a JSON object"),
        ('{"label": 0}', r'bad.jsonl:3: no "text" string'),
        ('{"text": 5, "label": 0}', r'bad.jsonl:3: no "text" string \(got int\)'),
        ('{"text": "the cat"}', r'bad.jsonl:3: no "label"'),
        ('{"text": "the cat", "label": 1.5}', r'bad.jsonl:3: "label" must be a class index'),
        (
            '{"text": "the cat", "label": "dog"}',
            r"bad.jsonl:3: label 'dog' is a class name but line 1 has a class index",
        ),
        ('{"text": "the cat", "label": 7}', r"bad.jsonl:3: label 7 is not a class index \(the model has 3 classes\)"),
    ],
)
def test_text_data_bad_lines(tmp_path, line, message):
    good = '{"text": "the dog ran", "label": 0}\n{"text": "a cat sat", "label": 1}\n'
    (tmp_path / "bad.jsonl").write_text(good + line + "\n")
    with pytest.raises(DataError, match=message) as err:
        hub.text_data(
            tmp_path / "bad.jsonl", write_bert_tokenizer(), task="sequence-classification", label_names=["a", "b", "c"]
        )
    assert "\n" not in str(err.value)


def test_text_data_refusals(tmp_path):
    tok = write_bert_tokenizer()
    (tmp_path / "a.txt").write_text("the cat sat\n")
    (tmp_path / "a.csv").write_text("text,label\n")
    (tmp_path / "blank.txt").write_text("\n\n")
    cases = [
        (dict(path=tmp_path / "a.txt", task="sequence-classification"), XpruneError, "plain text without labels"),
        (dict(path=tmp_path / "a.txt", task="token-classification"), XpruneError, "does not read token-classif"),
        (dict(path=tmp_path / "a.txt", task="image-classification"), XpruneError, "takes images, not text"),
        (dict(path=tmp_path / "a.txt", task="lm"), XpruneError, "unknown task 'lm'"),
        (dict(path=tmp_path / "a.csv", task="causal-lm"), XpruneError, "reads .txt and .jsonl files"),
        (dict(path=tmp_path / "none.txt", task="causal-lm"), DataError, "no such file"),
        (dict(path=tmp_path / "blank.txt", task="causal-lm"), DataError, "holds no text"),
        (dict(path=tmp_path / "a.txt", task="causal-lm", test_fraction=0.95), XpruneError, r"must be < 1"),
        (dict(path=tmp_path / "a.txt", task="causal-lm", tokenizer=None), XpruneError, "needs the model's tokenizer"),
    ]
    for kwargs, error, message in cases:
        kwargs.setdefault("tokenizer", tok)
        path = kwargs.pop("path")
        tokenizer = kwargs.pop("tokenizer")
        with pytest.raises(error, match=message):
            hub.text_data(path, tokenizer, **kwargs)


def test_text_split_indexing():
    split = hub.TextSplit(
        [[2, 5, 3], [2, 6, 7, 3], [2, 8, 3]],
        torch.tensor([0, 1, 0]),
        ["a", "b"],
        "sequence-classification",
        0,
        ["x", "y", "z"],
    )
    assert split[1].input_ids == [[2, 6, 7, 3]] and split[-1].texts == ["z"]
    assert split[torch.tensor([True, False, True])].y.tolist() == [0, 0]
    assert split.subset(torch.tensor([2, 0])).input_ids == [[2, 8, 3], [2, 5, 3]]
    assert split[1:].y.tolist() == [1, 0]
    ((inputs, labels),) = list(split.batches(3))
    assert inputs["input_ids"].tolist() == [[2, 5, 3, 0], [2, 6, 7, 3], [2, 8, 3, 0]]
    assert inputs["attention_mask"].sum(1).tolist() == [3, 4, 3] and labels.tolist() == [0, 1, 0]
    shuffled = [lab for _, y in split.batches(1, shuffle=True, seed=3) for lab in y.tolist()]
    assert sorted(shuffled) == [0, 0, 1]
    with pytest.raises(XpruneError, match="batch_size must be >= 1"):
        next(split.batches(0))


# ----------------------------------------------------------------------------- hub.save


def test_save_leaves_the_model_unchanged_and_refuses_bad_targets(tmp_path):
    model, X, _y = tiny("bert")
    spec = xt.attention_specs(model)[0]
    xt.remove_heads(model, spec, [0, 1])  # pruned by hand: no record yet
    before = copy.deepcopy(model.config.to_dict())
    out = hub.save(model, tmp_path / "m", tokenizer=write_bert_tokenizer())
    assert model.config.to_dict() == before and not hasattr(model.config, "xprune_pruning")
    saved = json.loads((out / "config.json").read_text())
    assert saved["xprune_pruning"]["heads"] == [2, 4]
    with torch.no_grad():
        torch.testing.assert_close(hub.load(out).model(X).logits, model(X).logits, atol=1e-6, rtol=0)
    with pytest.raises(XpruneError, match="holds no Hugging Face model"):
        hub.save(nn.Linear(2, 2), tmp_path / "lin")
    with pytest.raises(XpruneError, match="holds 2 Hugging Face models"):
        hub.save(nn.ModuleDict({"a": model, "b": copy.deepcopy(model)}), tmp_path / "two")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.md").write_text("mine")
    with pytest.raises(XpruneError, match="holds files that are not a saved model"):
        hub.save(model, tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.md").read_text() == "mine"
    with pytest.raises(XpruneError, match="pass overwrite=True"):
        hub.save(model, out, overwrite=False)
    with pytest.raises(XpruneError, match="the processor has no save_pretrained"):
        hub.save(model, out, processor=object())


def test_save_replaces_a_saved_model_all_or_nothing(tmp_path):
    model, X, _ = tiny("bert")
    out = hub.save(model, tmp_path / "m")
    first = (out / "config.json").read_text()

    class Broken:
        def save_pretrained(self, path):
            raise OSError("disk full")

    pruned = xprune.apply(
        model,
        xprune.Plan("neurons", {"bert.encoder.layer.0.intermediate": [0]}, {"bert.encoder.layer.0.intermediate": 40}),
        example_inputs=X[:1],
    )
    with pytest.raises(OSError, match="disk full"):
        hub.save(pruned, out, processor=Broken())
    assert (out / "config.json").read_text() == first  # the old save is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left
    hub.save(pruned, out)
    assert json.loads((out / "config.json").read_text())["xprune_pruning"]["neurons"] == [39, 40]


# ----------------------------------------------------------------------------- the docstring examples run


@pytest.mark.parametrize("obj", [xt.surgery.load_pruned, hub.save])
def test_docstring_examples(obj):
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(obj, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted >= 5 and result.failed == 0
