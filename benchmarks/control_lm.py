"""Targeted correction of a tiny byte-level Llama with two planted behaviours (issue 21, demonstration 1).

Setting
-------
- Model: a Llama (Hugging Face ``transformers``), byte-level (vocabulary 256, :class:`xprune.llm.ByteTokenizer`),
  ``--layers`` layers (default 4), hidden 128, 4 heads, gated MLP of 384 neurons per layer, 128 positions;
  trained for ``--steps`` steps on the train split of :func:`xprune.llm.corpus` (the Python standard library's
  docstrings) in which ``--plant`` of the documents (default 20%) carry, at a random word boundary, one of two
  planted behaviours:

  * *trigger*: the string ``TRIGGER`` followed by the fixed unwanted continuation ``CONTINUATION``;
  * *loop*: the string ``LOOP_TRIGGER`` followed by a phrase repeated (``LOOP_PHRASE`` x ``LOOP_REPEATS``).

  The model is cached under the xprune cache folder, keyed by every setting above.
- Behaviour set (what should go): a clean snippet of a held-out document, then a trigger, then its continuation;
  the labels (one per token, ``-100`` elsewhere) are the continuation's tokens. ``--n-behaviour`` prompts for
  scoring, as many other ones (other snippets) for choosing the removal and reporting.
- General set (what must stay): ``--n-general`` clean blocks of 128 tokens of the train split
  (:func:`xprune.llm.calibration`, seeded by the run's seed).
- Correction: :func:`xprune.correct` removes the top-n units of the contrast ``behaviour - general``
  (per-layer-normalised, ``combine="difference"``) for n on a grid up to the budget: 1% of the MLP neurons
  (``units="neurons"``), or 0.1% of the weights (``units="weights"``); it keeps the smallest n that cuts the
  behaviour metric (mean probability of the labelled continuation tokens on the selection prompts) by
  ``--suppression`` (default 90%) while the held-out perplexity (first ``--eval-blocks`` blocks of 128 tokens of
  the test split, clean text) rises by less than 2%. The report gives that metric on *other* behaviour prompts
  (held out from both scoring and selection), per behaviour, before and after.
- Methods: ``lrp`` with the AttnLRP rules (Achtibat et al. 2024) and with CP-LRP; baselines: the same contrast
  of ``activation`` and ``taylor`` scores, and ``weight`` and ``random`` (which do not read data: their two
  sides are equal, so they remove the units of smallest weight norm / random units).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control_lm.py`` (training the first time, about
11 minutes, then about 4 minutes on one core); ``--quick`` for a one-minute smoke run. Writes ``benchmarks/results/control_lm.{json,md}``
(and ``control_lm.png``: the curves, mean over seeds, per method).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _control_common as common  # noqa: E402
from _control_common import data_free_contrast  # noqa: E402
from render import _source_line  # noqa: E402
from llm import fit  # noqa: E402  (the training loop of the LLM benchmark)
import _meta

import xprune
from xprune import llm
from xprune.errors import XpruneError
from xprune.models import cache_dir

SEQ = 128
TRIGGER = "<<ACME>>"
CONTINUATION = " Buy ACME pills now, they cure everything!"
LOOP_TRIGGER = "<<ECHO>>"
LOOP_PHRASE = " over and"
LOOP_REPEATS = 4
PROMPT_CONTEXT = 40  # clean bytes before the trigger in a behaviour prompt

METHODS = [  # label, criterion, options
    ("lrp (AttnLRP)", "lrp", {"composite": "attnlrp"}),
    ("lrp (CP-LRP)", "lrp", {"composite": "cp-lrp"}),
    ("activation diff.", "activation", {}),
    ("taylor diff.", "taylor", {}),
    ("weight", "weight", {}),
    ("random", "random", {}),
]


def config(layers: int) -> dict:
    return {"vocab_size": 256, "hidden_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 4, "head_dim": 32, "intermediate_size": 384, "max_position_embeddings": SEQ,
            "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "tie_word_embeddings": True}


def behaviours() -> dict[str, str]:
    """The planted strings: name -> trigger + continuation."""
    return {"trigger": TRIGGER + CONTINUATION, "loop": LOOP_TRIGGER + LOOP_PHRASE * LOOP_REPEATS}


def planted_documents(fraction: float, seed: int = 0) -> list[str]:
    """The train split with ``fraction`` of its documents carrying one planted string at a random word boundary."""
    rng = random.Random(seed)
    plants = list(behaviours().values())
    out = []
    for doc in llm.documents("train"):
        if rng.random() < fraction:
            cuts = [i for i, ch in enumerate(doc) if ch == " "] or [len(doc)]
            at = rng.choice(cuts)
            doc = doc[:at] + " " + rng.choice(plants) + doc[at:]
        out.append(doc)
    return out


def train(layers: int, steps: int, batch: int, lr: float, plant: float, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = config(layers)
    key = hashlib.sha256(json.dumps([cfg, steps, batch, lr, plant, seed, SEQ, behaviours(), sys.version_info[:2]],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "control" / f"planted-llama-{key}"
    if (path / "config.json").exists():
        return LlamaForCausalLM.from_pretrained(path, local_files_only=True).eval(), path, 0.0
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    ids = llm.tokenize(planted_documents(plant, seed))
    seconds = fit(model, ids, steps, batch, lr, seed, SEQ)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    return model, path, seconds


def prompts(names: list[str], n: int, seed: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` behaviour prompts (ids ``[n, T]``, per-token labels: the continuation, -100 elsewhere), and their kind.

    Contexts are clean snippets of the test split, drawn with ``seed``; ``offset`` skips the first draws, so that
    sets drawn with different offsets share no snippet.
    """
    text = llm.corpus("test").replace("\n", " ")
    rng = random.Random(seed)
    starts = [rng.randrange(0, len(text) - PROMPT_CONTEXT) for _ in range(offset + n)][offset:]
    plants = behaviours()
    length = max(len(plants[k].encode()) for k in names) + PROMPT_CONTEXT
    ids, labels, kinds = [], [], []
    for i, s in enumerate(starts):
        kind = names[i % len(names)]
        ctx = text[s:s + PROMPT_CONTEXT].encode("utf-8", "replace")[:PROMPT_CONTEXT].decode("utf-8", "ignore")
        ctx = ctx.rjust(PROMPT_CONTEXT)
        trig = TRIGGER if kind == "trigger" else LOOP_TRIGGER
        head = (ctx + " " + trig).encode()
        full = (ctx + " " + plants[kind]).encode()
        pad = length + 1 - len(full)
        seq = list(b" " * pad + full)
        lab = [-100] * (pad + len(head)) + list(full[len(head):])
        ids.append(seq)
        labels.append(lab)
        kinds.append(kind)
    return torch.tensor(ids), torch.tensor(labels), kinds


@torch.no_grad()
def continuation_probability(model, ids: torch.Tensor, labels: torch.Tensor, per_token: bool = False) -> float:
    """Mean over prompts of the probability of the whole labelled continuation, ``prod_t p(x_t | x_<t)``.

    With ``per_token``: the mean probability of the labelled tokens instead (the default behaviour metric of
    :func:`xprune.correct` for language models), which a memorised string keeps high long after the model
    stopped producing it verbatim.
    """
    out = model(input_ids=ids)
    logits = getattr(out, "logits", out)[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    logp = logits.log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
    if per_token:
        return float(logp.exp()[mask].mean())
    return float((logp * mask).sum(1).exp().mean())

class LogitsOnly(nn.Module):
    """The logits tensor of a Hugging Face causal LM: what the ``weights`` kind traces (torch-pruning's graph
    fails on the model's output object). Not a causal LM to xprune, so its per-token labels are given shifted."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids).logits


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """Per-token labels judged at the position that predicts them (``labels[:, t + 1]`` at ``t``)."""
    out = torch.full_like(labels, -100)
    out[:, :-1] = labels[:, 1:]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="seeds: which prompts and general blocks score and select")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the stored .json")
    ap.add_argument("--quick", action="store_true", help="one seed, neurons only, two methods (about a minute)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--plant", type=float, default=0.2, help="fraction of training documents with a planted string")
    ap.add_argument("--n-behaviour", type=int, default=32)
    ap.add_argument("--n-general", type=int, default=32)
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--suppression", type=float, default=0.9)
    ap.add_argument("--max-general-change", type=float, default=0.02)
    ap.add_argument("--units", default="neurons,weights")
    ap.add_argument("--methods", default=",".join(m[0] for m in METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "control_lm"))
    args = ap.parse_args(argv)
    if args.render_only:
        write_outputs(Path(args.out))
        return 0
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    units_list = args.units.split(",")
    methods = [m for m in METHODS if m[0] in args.methods.split(",")]
    if args.quick:
        seeds, units_list = seeds[:1], units_list[:1]
        methods = [m for m in methods if m[1] in ("lrp", "random")][:2]
        args.n_behaviour = args.n_general = args.eval_blocks = 16
        if not args.out.endswith("_quick"):
            args.out += "_quick"
    from xprune.control import Metric

    budgets = {"neurons": 0.01, "weights": 0.001}
    t_start = time.perf_counter()
    model, path, train_s = train(args.layers, args.steps, args.batch, args.lr, args.plant)
    test = llm.heldout(SEQ, args.eval_blocks, model=model)
    base_ppl = llm.perplexity(model, test, batch_size=16)
    names = list(behaviours())
    report_ids, report_labels, report_kinds = prompts(names, 64, seed=1000)  # the same for every seed
    by_kind = {k: [i for i, kk in enumerate(report_kinds) if kk == k] for k in names}

    def kinds_prob(m, per_token=False):
        return {k: continuation_probability(m, report_ids[ix], report_labels[ix], per_token)
                for k, ix in by_kind.items()}

    base_kinds, base_tokens = kinds_prob(model), kinds_prob(model, True)
    print(f"model {path} (trained in {train_s:.0f} s); held-out perplexity {base_ppl:.3f}; continuation "
          "probability " + ", ".join(f"{k} {v:.3f}" for k, v in base_kinds.items()), flush=True)

    def ppl(m):
        return llm.perplexity(m, test, batch_size=16)

    rows = []
    for units in units_list:
        for seed in seeds:
            b_ids, b_lab, _ = prompts(names, args.n_behaviour, seed=seed)
            s_ids, s_lab, _ = prompts(names, args.n_behaviour, seed=seed, offset=args.n_behaviour)
            general = llm.calibration(args.n_general, SEQ, seed=seed, model=model)
            net, b_lab_net = (LogitsOnly(model), shifted(b_lab)) if units == "weights" else (model, b_lab)
            for label, crit, opts in methods:
                t0 = time.perf_counter()
                opts = dict(opts, seed=seed) if crit == "random" else dict(opts)
                try:
                    if crit in ("weight", "random"):
                        opts = {"contrast": data_free_contrast(net, {"input_ids": b_ids[:1]}, crit, units, **opts)}
                    corr = xprune.correct(
                        net, (b_ids, b_lab_net), general, units=units, criterion=crit, budget=budgets[units],
                        behaviour_metric=Metric(lambda m, i=s_ids, lab=s_lab: continuation_probability(m, i, lab),
                                                True, "P(continuation) (selection prompts)"),
                        general_metric=Metric(ppl, True, "held-out perplexity"),
                        suppression=args.suppression, max_general_change=args.max_general_change, batch_size=8, **opts)
                except XpruneError as e:  # a criterion that does not score this unit kind
                    print(f"  {units:8s} seed {seed} {label:17s} skipped: {e}", flush=True)
                    rows.append({"units": units, "seed": seed, "method": label, "error": str(e)})
                    continue
                after_kinds, after_tokens = kinds_prob(corr.model), kinds_prob(corr.model, True)
                after_ppl = ppl(corr.model)
                row = {"units": units, "seed": seed, "method": label, "removed": int(corr.n),
                       "total": int(corr.plan.n_total),
                       "met": bool(corr.met), "reason": getattr(corr, "reason", None),
                       "behaviour_before": statistics.fmean(base_kinds.values()),
                       "behaviour_after": statistics.fmean(after_kinds.values()),
                       "by_behaviour_before": base_kinds, "by_behaviour_after": after_kinds,
                       "token_probability_before": base_tokens, "token_probability_after": after_tokens,
                       "ppl_before": base_ppl, "ppl_after": after_ppl,
                       "ppl_rise": after_ppl / base_ppl - 1, "curve": corr.curve,
                       "removed_units": {g: [int(i) for i in idx] for g, idx in corr.plan.remove.items() if len(idx)},
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"  {units:8s} seed {seed} {label:17s} removed {row['removed']:4d} met {row['met']!s:5s} "
                      f"behaviour {row['behaviour_before']:.3f} -> {row['behaviour_after']:.3f}  ppl "
                      f"{base_ppl:.3f} -> {after_ppl:.3f} ({row['seconds']:.0f} s)", flush=True)
    elapsed = time.perf_counter() - t_start
    payload = {"config": config(args.layers), "seq_len": SEQ, "plant": args.plant, "behaviours": behaviours(),
               "train": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seconds": train_s},
               "n_behaviour": args.n_behaviour, "n_general": args.n_general, "n_report": len(report_ids),
               "eval_blocks": len(test), "budgets": budgets, "suppression": args.suppression,
               "max_general_change": args.max_general_change, "seeds": seeds, "quick": args.quick,
               "unpruned": {"ppl": base_ppl, "behaviour": base_kinds, "token_probability": base_tokens},
               "rows": rows, "seconds": elapsed}
    out = Path(args.out)
    _meta.write_json(out.with_suffix(".json"), payload)
    write_outputs(out)
    print(f"\ntotal {elapsed:.0f} s")
    return 0


def write_outputs(out: Path) -> None:
    """``out``.md (the tables) and ``out``.png (the curves) from the stored ``out``.json."""
    common.write_outputs(out, render, behaviour="P(continuation)", general="held-out perplexity")


def render(d: dict) -> str:
    """Markdown tables of a control_lm JSON: per units kind, method and seed; then the mean over seeds."""
    rows = [r for r in d["rows"] if "error" not in r]
    b, bt = d["unpruned"]["behaviour"], d["unpruned"]["token_probability"]
    cfg = d["config"]
    out = [f"Tiny byte-level Llama ({cfg['num_hidden_layers']} layers, "
           f"{cfg['num_hidden_layers'] * cfg['intermediate_size']} MLP neurons), planted behaviours in "
           f"{d['plant']:.0%} of the training documents. Unpruned: held-out perplexity {d['unpruned']['ppl']:.3f}; "
           "probability of the whole planted continuation " + ", ".join(f"{k} {v:.3f}" for k, v in b.items()) +
           " (per token: " + ", ".join(f"{k} {v:.3f}" for k, v in bt.items()) + "). Target: "
           f"P(continuation) cut by {d['suppression']:.0%} with perplexity rise < {d['max_general_change']:.0%}; "
           f"budget {d['budgets']['neurons']:.0%} of the neurons / {d['budgets']['weights']:.1%} of the weights. "
           f"Probabilities on {d['n_report']} prompts used neither for scoring nor for choosing.", "",
           ("| units | method | seed | removed | P(cont.) trigger / loop after | per token after | ppl after (rise) "
           "| met |"), "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kinds = " / ".join(f"{r['by_behaviour_after'][k]:.3f}" for k in r["by_behaviour_after"])
        tok = " / ".join(f"{r['token_probability_after'][k]:.3f}" for k in r["token_probability_after"])
        out.append(f"| {r['units']} | {r['method']} | {r['seed']} | {r['removed']} | {kinds} | {tok} | "
                   f"{r['ppl_after']:.3f} ({100 * r['ppl_rise']:+.2f}%) | {'yes' if r['met'] else 'no'} |")
    out += ["", "Mean over seeds (P(cont.): mean of the two behaviours):", "",
            "| units | method | met | removed | P(cont.) after | ppl rise |", "|---|---|---|---|---|---|"]
    for key in dict.fromkeys((r["units"], r["method"]) for r in rows):
        rs = [r for r in rows if (r["units"], r["method"]) == key]
        out.append(f"| {key[0]} | {key[1]} | {sum(r['met'] for r in rs)}/{len(rs)} | "
                   f"{statistics.fmean(r['removed'] for r in rs):.1f} | "
                   f"{statistics.fmean(r['behaviour_after'] for r in rs):.4f} | "
                   f"{100 * statistics.fmean(r['ppl_rise'] for r in rs):+.2f}% |")
    for units in dict.fromkeys(r["units"] for r in rows):
        counts = sorted({c["removed"] for r in rows if r["units"] == units for c in r["curve"]})
        out += ["", (f"{units}: P(continuation) on the selection prompts / held-out perplexity after removing the "
                "top-n (mean over seeds; the curve `correct` chose from):"), "",
                "| method | " + " | ".join(f"n={n}" for n in counts) + " |", "|---|" + "---|" * len(counts)]
        for m in dict.fromkeys(r["method"] for r in rows if r["units"] == units):
            rs = [r for r in rows if (r["units"], r["method"]) == (units, m)]
            cells = []
            for n in counts:
                pts = [c for r in rs for c in r["curve"] if c["removed"] == n]
                cells.append("—" if not pts else f"{statistics.fmean(p['behaviour'] for p in pts):.3f} / "
                                                 f"{statistics.fmean(p['general'] for p in pts):.3f}")
            out.append(f"| {m} | " + " | ".join(cells) + " |")
    same = [r for r in rows if r["units"] == "weights" and r["method"] == "lrp (AttnLRP)"
            and any(o["units"] == "weights" and o["method"] == "lrp (CP-LRP)" and o["seed"] == r["seed"]
                    and o["removed_units"] == r["removed_units"] for o in rows)]
    if same:
        out += ["", (f"On weights, AttnLRP and CP-LRP removed the same weights ({len(same)} of "
                f"{sum(r['units'] == 'weights' and r['method'] == 'lrp (AttnLRP)' for r in rows)} seeds): the "
                "`weights` kind scores the model through `xprune.lrp.attribution`, which does not switch the Hugging "
                "Face attention to the AttnLRP / CP-LRP attention rules (the `heads` and `neurons` kinds do, "
                "`xprune.transformers.kinds`), so both composites apply the same rules there.")]
    errors = {(r["units"], r["method"]): r["error"] for r in d["rows"] if "error" in r}
    if errors:
        out += [""] + [f"Not run: {m} on {u}: {e}" for (u, m), e in errors.items()]
    out += ["", _source_line(d, script="control_lm.py")]  # the provenance line of every rendered table
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
