"""Prune the heads (KV groups) and MLP neurons of a tiny Llama-GQA language model; held-out perplexity.

Setting
-------
- Model: a Llama (Hugging Face ``transformers``) with grouped-query attention,
  byte-level (vocabulary 256), 4 layers, hidden 128, 16 query heads of width 8
  in 8 KV groups (8 head units per layer), MLP 384 (gated), 128 positions;
  trained here for ``--steps`` steps on the train split of
  :func:`xprune.llm.corpus` (the Python standard library's docstrings) and
  cached under the xprune cache folder (``$XPRUNE_CACHE`` or ``~/.cache/xprune``).
- Calibration: ``--calib`` sizes of blocks of 128 tokens (:func:`xprune.llm.calibration`,
  train split, seed 0); evaluation: the first ``--eval-blocks`` blocks of 128
  tokens of the held-out test split (no document in common with the train split).
- Criteria: ``wanda`` (structured Wanda, An et al. 2024), ``llm-pruner``
  (first-order Taylor, Ma et al. 2023), ``lrp`` with AttnLRP rules explaining the
  true next token at the last position of each block (``lrp (last)``) and the
  sum over all positions of the true next-token logits (``lrp (all)``: relevance
  = the logit at every position), ``weight`` (L1 norm of the unit's weights) and
  ``random`` (3 seeds, mean).
- Pruning: the same fraction of units in every layer (``scope="local"``), heads
  and neurons separately, removed physically, no fine-tuning; metric: perplexity
  on the held-out blocks.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/llm.py`` (about 3 minutes on one core,
training included the first time); writes ``benchmarks/results/llm.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn

import xprune
from xprune import llm
from xprune.models import cache_dir

CONFIG = dict(vocab_size=256, hidden_size=128, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8,
              head_dim=8, intermediate_size=384, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
              pad_token_id=0, tie_word_embeddings=True)
SEQ = 128
HEAD_RATIOS = [0.125, 0.25, 0.375, 0.5]
NEURON_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5]


def fit(model: nn.Module, ids: torch.Tensor, steps: int, batch: int, lr: float, seed: int = 0,
        seq: int = SEQ) -> float:
    """Train a causal LM on random windows of ``seq`` tokens of ``ids`` (AdamW, warm-up + cosine); seconds taken."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    warm = max(steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = ids[starts[:, None] + torch.arange(seq)]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:4d}  loss {loss.item():.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    return time.perf_counter() - t0


def train(steps: int, batch: int, lr: float, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    key = hashlib.sha256(json.dumps([CONFIG, steps, batch, lr, seed, SEQ, sys.version_info[:2]],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "llm" / f"tiny-llama-gqa-{key}"
    if (path / "config.json").exists():
        return LlamaForCausalLM.from_pretrained(path, local_files_only=True).eval(), path, 0.0
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    ids = llm.tokenize(llm.documents("train"))
    seconds = fit(model, ids, steps, batch, lr, seed)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return model, path, seconds


class AllTokenLogits(nn.Module):
    """``[N, 1]``: the sum over positions of the logit of the true next token (LRP with ``start="logit"``)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        logits = self.model(input_ids=input_ids).logits[:, :-1]
        return logits.gather(-1, input_ids[:, 1:, None]).sum((1, 2))[:, None]


def scores_for(model, calib, name, unit, seed=0):
    if name == "lrp (all)":
        wrapped = AllTokenLogits(model)
        data = [({"input_ids": x["input_ids"]}, torch.zeros(len(y), dtype=torch.long)) for x, y in calib.batches(16)]
        s = xprune.score(wrapped, data, "lrp", unit, composite="attnlrp", start="logit")
        units = xprune.discover(model, {"input_ids": calib.tokens[:1]}, unit)  # names without the wrapper's "model."
        return xprune.Scores.from_units({g.name: s["model." + g.name] for g in units}, units, criterion="lrp (all)")
    crit, opts = {"lrp (last)": ("lrp", {"composite": "attnlrp"}), "random": ("random", {"seed": seed})}.get(
        name, (name, {}))
    if crit in ("weight", "random"):
        return xprune.score(model, None, crit, unit, example_inputs={"input_ids": calib.tokens[:1]}, **opts)
    return xprune.score(model, calib, crit, unit, batch_size=16, **opts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--calib", default="8,32,128", help="calibration sizes (blocks of 128 tokens)")
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--criteria", default="wanda,llm-pruner,lrp (last),lrp (all),weight,random")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "llm"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    model, path, train_s = train(args.steps, args.batch, args.lr)
    test = llm.heldout(SEQ, args.eval_blocks, model=model)
    base = llm.perplexity(model, test, batch_size=16)
    print(f"model {path} (trained in {train_s:.0f} s); held-out perplexity {base:.3f} on {len(test)} x {SEQ} tokens")
    sizes = [int(s) for s in args.calib.split(",")]
    rows = []
    for name in args.criteria.split(","):
        data_free = name in ("weight", "random")
        for n in ([max(sizes)] if data_free else sizes):
            calib = llm.calibration(n, SEQ, seed=0, model=model)
            row = {"criterion": name, "calib": None if data_free else n}
            for unit, ratios in (("heads", HEAD_RATIOS), ("neurons", NEURON_RATIOS)):
                t0 = time.perf_counter()
                seeds = [0, 1, 2] if name == "random" else [0]
                all_ppl = []
                for seed in seeds:
                    s = scores_for(model, calib, name, unit, seed)
                    all_ppl.append([llm.perplexity(xprune.apply(model, xprune.select(s, r, scope="local")), test,
                                                   batch_size=16) for r in ratios])
                row[unit] = [statistics.mean(v) for v in zip(*all_ppl)]
                row[f"{unit}_s"] = (time.perf_counter() - t0) / len(seeds)
            rows.append(row)
            print(f"  {name:<11} calib {str(row['calib']):>4}: heads " +
                  " ".join(f"{v:.3f}" for v in row["heads"]) + " | neurons " +
                  " ".join(f"{v:.3f}" for v in row["neurons"]), flush=True)
    elapsed = time.perf_counter() - t_start
    head = ("| criterion | calib blocks | " + " | ".join(f"heads {r:g}" for r in HEAD_RATIOS) + " | "
            + " | ".join(f"neurons {r:g}" for r in NEURON_RATIOS) + " |")
    lines = [f"Held-out perplexity of a tiny byte-level Llama-GQA (unpruned: **{base:.3f}**; {len(test)} blocks x "
             f"{SEQ} tokens of the test split) after removing a fraction of the head units (KV groups) or MLP "
             "neurons in every layer, no fine-tuning. Lower is better; calibration: blocks of 128 tokens of the "
             "train split. `python benchmarks/llm.py`", "", head,
             "|" + "---|" * (2 + len(HEAD_RATIOS) + len(NEURON_RATIOS))]
    for row in rows:
        cells = [row["criterion"], "-" if row["calib"] is None else str(row["calib"])]
        cells += [f"{v:.3f}" for v in row["heads"]] + [f"{v:.3f}" for v in row["neurons"]]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\ntotal {elapsed:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": __import__("_meta").meta(),
        "config": CONFIG, "seq_len": SEQ, "train": {"steps": args.steps, "batch": args.batch, "lr": args.lr,
                                                    "seconds": train_s},
        "eval_blocks": len(test), "unpruned_perplexity": base, "head_ratios": HEAD_RATIOS,
        "neuron_ratios": NEURON_RATIOS, "scope": "local", "rows": rows, "seconds": elapsed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
