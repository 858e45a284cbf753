"""Large language models: calibration text, perplexity, the "wanda" and "llm-pruner" criteria (issue #9)."""

import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

import xprune
from xprune import llm

T = pytest.importorskip("transformers")
xt = pytest.importorskip("xprune.transformers")

TEXT = " ".join(f"Sentence number {i} talks about pruning {i % 7} heads and neurons." for i in range(200))
HERE = Path(__file__).resolve().parent


def tiny(kind, dtype=torch.float64):
    """Random-init causal LMs with a byte-level vocabulary (256) and 32 positions."""
    torch.manual_seed(0)
    common = dict(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=40,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    if kind == "llama":  # grouped-query attention: 2 KV groups of 2 query heads
        model = T.LlamaForCausalLM(T.LlamaConfig(**common))
    elif kind == "qwen2":  # Llama layout with q/k/v biases
        model = T.Qwen2ForCausalLM(T.Qwen2Config(**common))
    elif kind == "gpt2":  # fused c_attn, Conv1D weights [in, out]
        model = T.GPT2LMHeadModel(
            T.GPT2Config(
                vocab_size=256,
                n_embd=32,
                n_layer=2,
                n_head=4,
                n_inner=40,
                n_positions=32,
                bos_token_id=0,
                eos_token_id=0,
            )
        )
    else:
        raise ValueError(kind)
    return model.to(dtype).eval()


def calib(n=6, seq_len=12, seed=0):
    return llm.calibration(n, seq_len, text=TEXT, seed=seed)


KINDS = ["llama", "qwen2", "gpt2"]


def _specs(model, unit):
    from xprune.transformers.adapters import attention_specs, mlp_specs

    return attention_specs(model) if unit == "heads" else mlp_specs(model)


def _weight_out_in(module):
    """A projection's weight as [out, in] (GPT-2's Conv1D stores [in, out])."""
    from xprune.transformers.adapters import is_conv1d

    return module.weight.t() if is_conv1d(module) else module.weight


# ----------------------------------------------------------------------------- wanda


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_wanda_equals_hand_computation(kind, unit):
    model, data = tiny(kind), calib()
    mods = dict(model.named_modules())
    specs = _specs(model, unit)
    readers = {s.name: mods[s.o if unit == "heads" else s.output] for s in specs}
    seen = {n: [] for n in readers}
    hs = [m.register_forward_pre_hook(lambda m, a, n=n: seen[n].append(a[0].detach())) for n, m in readers.items()]
    with torch.no_grad():
        model(input_ids=data.tokens)
    for h in hs:
        h.remove()
    s = xprune.score(model, data, "wanda", unit)
    for spec in specs:
        X = torch.cat(seen[spec.name]).reshape(-1, seen[spec.name][0].shape[-1])  # all tokens x features
        W = _weight_out_in(readers[spec.name]).detach()
        per_weight = W.abs() * X.norm(dim=0)[None, :]  # Wanda: |W_ij| * ||X_j||_2
        if unit == "heads":
            width = spec.group_size * spec.head_dim  # a KV group's columns of the output projection
            want = torch.stack([per_weight[:, u * width : (u + 1) * width].sum() for u in range(spec.units)])
        else:
            want = per_weight.sum(0)
        torch.testing.assert_close(s[spec.name], want.double(), rtol=1e-10, atol=0)


@pytest.mark.filterwarnings("ignore:the reference samples cover")
def test_wanda_ignores_padding_tokens():
    model, data = tiny("llama"), calib(2)
    ids = data.tokens
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones_like(ids), torch.zeros(2, 3, dtype=torch.long)], 1)
    a = xprune.score(model, data, "wanda", "neurons")
    b = xprune.score(model, [({"input_ids": padded, "attention_mask": mask}, data.next)], "wanda", "neurons")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- llm-pruner


def _hand_slices(model, spec, unit, u):
    """(parameter, [its entries belonging to unit u]) pairs, written out per layout."""
    mods = dict(model.named_modules())
    out = []
    if unit == "heads":
        q, kv = spec.q_index([u]), spec.kv_index([u])
        if spec.fused:  # GPT-2: c_attn weight [in, 3W] -> columns q, W + kv, 2W + kv; bias likewise
            W = spec.num_heads * spec.head_dim
            cols = torch.cat([q, W + kv, 2 * W + kv])
            c = mods[spec.fused]
            out += [(c.weight, lambda t: t[:, cols]), (c.bias, lambda t: t[cols])]
            out.append((mods[spec.o].weight, lambda t: t[q, :]))  # c_proj weight [in, out]: rows
        else:
            for name, idx in ((spec.q, q), (spec.k, kv), (spec.v, kv)):
                m = mods[name]
                out.append((m.weight, lambda t, idx=idx: t[idx, :]))
                if m.bias is not None:
                    out.append((m.bias, lambda t, idx=idx: t[idx]))
            out.append((mods[spec.o].weight, lambda t: t[:, q]))
    else:
        for name in spec.inputs:
            m = mods[name]
            if spec.name.endswith("mlp") and hasattr(m, "nf"):  # GPT-2 c_fc: [in, out]
                out += [(m.weight, lambda t: t[:, u]), (m.bias, lambda t: t[u])]
            else:
                out.append((m.weight, lambda t: t[u, :]))
                if m.bias is not None:
                    out.append((m.bias, lambda t: t[u]))
        o = mods[spec.output]
        out.append((o.weight, (lambda t: t[u, :]) if hasattr(o, "nf") else (lambda t: t[:, u])))
    return out


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("unit", ["heads", "neurons"])
def test_llm_pruner_equals_autograd_hand_computation(kind, unit):
    model, data = tiny(kind), calib()
    ids = data.tokens
    logits = model(input_ids=ids).logits[:, :-1]  # the mean next-token loss over all predicted tokens, in float64
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    params = list(model.parameters())
    grads = dict(zip(map(id, params), torch.autograd.grad(loss, params, allow_unused=True), strict=True))
    for aggregate in ("element", "vector"):
        s = xprune.score(model, data, "llm-pruner", unit, aggregate=aggregate)
        for spec in _specs(model, unit):
            want = []
            for u in range(len(s[spec.name])):
                total = 0.0
                for p, take in _hand_slices(model, spec, unit, u):
                    wg = take(p.detach() * grads[id(p)])
                    total += float(wg.abs().sum() if aggregate == "element" else wg.sum().abs())
                want.append(total)
            # q/k gradients of a random-init model are small differences of large terms: float64 roundoff ~1e-8
            torch.testing.assert_close(s[spec.name], torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("criterion", ["wanda", "llm-pruner"])
def test_scores_are_streamed_batching_does_not_matter(criterion):
    model, data = tiny("llama"), calib(7)
    for unit in ("heads", "neurons"):
        one = xprune.score(model, data, criterion, unit, batch_size=7)
        many = xprune.score(model, data, criterion, unit, batch_size=2)  # 4 batches, the last one partial
        for k in one:
            torch.testing.assert_close(one[k], many[k], rtol=1e-10, atol=0)


def test_llm_criteria_are_registered_and_shard():
    assert {"wanda", "llm-pruner"} <= set(xprune.criteria.available())
    for name in ("wanda", "llm-pruner"):
        c = xprune.criteria.get(name)
        assert c.distributed_sums("heads") and c.distributed_sums("neurons") and not c.distributed_sums("channels")


# ----------------------------------------------------------------------------- text and perplexity


def test_perplexity_equals_exp_of_hf_loss():
    model, data = tiny("llama", torch.float32), calib(3, 16)
    for i in range(3):
        with torch.no_grad():
            ref = model(input_ids=data.tokens[i : i + 1], labels=data.tokens[i : i + 1]).loss.exp()
        assert llm.perplexity(model, data.tokens[i]) == pytest.approx(float(ref), rel=1e-5)
    with torch.no_grad():  # blocks of equal length: exp of the mean over all predicted tokens of all blocks
        ref = model(input_ids=data.tokens, labels=data.tokens).loss.exp()
    for bs in (1, 2, 8):
        assert llm.perplexity(model, data, batch_size=bs) == pytest.approx(float(ref), rel=1e-5)
    assert not model.training


def test_calibration_sizes_seeds_and_next_tokens():
    text = " ".join(map(str, range(2000)))  # every window of 16 characters occurs once
    ids = llm.tokenize(text)
    assert ids.dtype == torch.long and len(ids) == len(text.encode())
    a8, a32 = llm.calibration(8, 16, text=text, seed=1), llm.calibration(32, 16, text=text, seed=1)
    assert a8.tokens.shape == (8, 16) and a32.tokens.shape == (32, 16) and len(a32) == 32
    assert torch.equal(a8.tokens, a32.tokens[:8])  # a smaller set is the start of a larger one
    assert torch.equal(a8.tokens, llm.calibration(8, 16, text=text, seed=1).tokens)  # deterministic
    assert not torch.equal(a8.tokens, llm.calibration(8, 16, text=text, seed=2).tokens)
    assert llm.ByteTokenizer().decode(ids) == text
    for block, nxt in zip(
        a32.tokens, a32.next, strict=True
    ):  # each block is a window of the text, its label the next token
        s = llm.ByteTokenizer().decode(block)
        at = text.find(s)
        assert at >= 0 and ids[at + 16] == nxt
    starts = {text.find(llm.ByteTokenizer().decode(b)) for b in a32.tokens}
    assert len(starts) == 32  # non-overlapping windows
    batches = list(a32.batches(10))
    assert [len(y) for _, y in batches] == [10, 10, 10, 2] and set(batches[0][0]) == {"input_ids"}
    h = llm.heldout(16, 5, text=text)
    assert torch.equal(h.tokens.reshape(-1), ids[:80]) and torch.equal(h.next, ids[16:81:16])


def test_default_corpus_splits_are_disjoint_and_deterministic():
    train, test = llm.documents("train"), llm.documents("test")
    assert len(test) > 100 and len(train) > 5 * len(test)
    assert not set(train) & set(test)
    assert llm.corpus("test") == "\n\n".join(test)
    a = llm.calibration(4, 64, seed=3)
    assert torch.equal(a.tokens, llm.calibration(4, 64, seed=3).tokens) and int(a.tokens.max()) < 256
    h = llm.heldout(64, 4)
    assert llm.ByteTokenizer().decode(h.tokens[0]) in llm.corpus("test")


def test_text_file_source_and_hf_tokenizer_protocol(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"Paragraph {i}: " + "words " * 20 for i in range(60)), encoding="utf-8")
    train, test = llm.documents("train", f), llm.documents("test", f)
    assert train and test and not set(train) & set(test) and len(train) + len(test) == 60

    class WordTok:  # a minimal stand-in for a Hugging Face tokenizer (encode only)
        def encode(self, text, add_special_tokens=False):
            return [len(w) for w in text.split()]

    blocks = llm.calibration(3, 5, source=f, tokenizer=WordTok())
    assert blocks.tokens.shape == (3, 5) and int(blocks.tokens.max()) < 20


def test_bad_inputs_raise_clear_errors(tmp_path):
    model = tiny("llama", torch.float32)
    with pytest.raises(xprune.DataError, match="fewer than"):
        llm.calibration(1000, 16, text=TEXT)
    with pytest.raises(xprune.DataError, match="positions"):
        llm.calibration(2, 64, text=TEXT, model=model)
    with pytest.raises(xprune.DataError, match="positions"):
        llm.perplexity(model, llm.calibration(2, 64, text=TEXT))
    small_vocab = T.LlamaForCausalLM(
        T.LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    )
    with pytest.raises(xprune.DataError, match="vocabulary"):
        llm.perplexity(small_vocab, calib())
    with pytest.raises(xprune.XpruneError, match="split"):
        llm.documents("validation")
    with pytest.raises(xprune.XpruneError, match="seq_len"):
        llm.calibration(2, 1, text=TEXT)
    with pytest.raises(xprune.XpruneError, match="n_samples"):
        llm.calibration(0, 8, text=TEXT)
    with pytest.raises(xprune.DataError, match="cannot give"):
        llm.heldout(16, 10_000, text=TEXT)
    with pytest.raises(xprune.DataError, match="does not exist"):
        llm.documents("train", tmp_path / "missing.txt")
    with pytest.raises(xprune.DataError, match="TokenBlocks"):
        llm.perplexity(model, [[1, 2, 3]])
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    with pytest.raises(xprune.XpruneError, match="units='heads'"):
        xprune.score(mlp, (torch.randn(5, 4), torch.randint(0, 3, (5,))), "wanda", "channels")
    with pytest.raises(xprune.XpruneError, match="aggregate"):
        xprune.score(model, calib(), "llm-pruner", "heads", aggregate="mean")


def test_next_token_labels_do_not_warn_about_missing_classes():
    model = tiny("llama", torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xprune.score(model, calib(4), "taylor", "heads")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("criterion", ["wanda", "llm-pruner"])
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_prune_quarter_heads_and_neurons_keeps_generate(criterion, kind):
    model, data = tiny(kind, torch.float32), calib(4)
    held_out = llm.heldout(16, 2, text=TEXT[::-1])
    pruned = {}
    for mode in ("remove", "mask"):
        m = model
        for unit in ("heads", "neurons"):
            plan = xprune.select(xprune.score(m, data, criterion, unit), 0.25)
            assert plan.n_removed == (1 if (unit == "heads" and kind != "gpt2") else 2 if unit == "heads" else 20)
            m = xprune.apply(m, plan, mode)
        pruned[mode] = m
    removed, masked = pruned["remove"], pruned["mask"]
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            removed(input_ids=held_out.tokens).logits, masked(input_ids=held_out.tokens).logits, atol=1e-5, rtol=0
        )
        gen = removed.generate(held_out.tokens[:1, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9)
    assert llm.perplexity(removed, held_out) == pytest.approx(llm.perplexity(masked, held_out), rel=1e-4)


# ----------------------------------------------------------------------------- distributed (2 gloo processes)


def _worker(rank: int, world: int, init_file: str, out_file: str) -> int:
    import datetime

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=30)
    )
    try:
        model, data = tiny("llama"), calib(5)
        got = {
            f"{c}/{u}": dict(xprune.score(model, data, c, u, batch_size=2))
            for c in ("wanda", "llm-pruner")
            for u in ("heads", "neurons")
        }
        meta = xprune.score(model, data, "wanda", "heads").meta
        if rank == 0:
            torch.save({"scores": got, "meta": meta}, out_file)
        return 0
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path):
    import subprocess

    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    out = tmp_path / "r.pt"
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(r), "2", str(tmp_path / "init"), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(2)
    ]
    try:
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    got = torch.load(out, weights_only=False)
    assert got["meta"]["distributed"] == "shard"
    model, data = tiny("llama"), calib(5)
    for key, scores in got["scores"].items():
        c, u = key.split("/")
        ref = xprune.score(model, data, c, u)
        for k in ref:
            torch.testing.assert_close(scores[k], ref[k], rtol=1e-9, atol=1e-15)


if __name__ == "__main__":
    sys.exit(_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))
