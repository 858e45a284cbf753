"""How far is ``"singe-fast"`` from ``"singe"``? Rank agreement and one-shot pruning curves on the reference ResNet.

On ``xprune.models.pretrained("resnet", "mnist")``, for each seed (a different
draw of ``--per-class`` reference samples per class from the train split):

- the scores of ``"singe"`` (per unit, geometric path, loss, mean of per-sample
  |IG|) and ``"singe-fast"`` (a layer's units together, uniform path, target
  logit, |sum over samples|), both at K = ``--k`` points;
- Spearman's rank correlation of the two, per layer (raw scores) and global
  (after each criterion's default normalisation, which is what a global plan
  ranks);
- the one-shot pruning curve of each, and of ``"taylor"``, without
  fine-tuning: test accuracy (first ``--test-n`` test images) after
  ``xprune.select(scores, r, by="macs")`` and ``xprune.apply`` for r in
  ``--ratios``;
- the seconds each scoring took (one torch thread by default).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/singe_agreement.py [--seeds 0 1 2 3 4] [--per-class 2]``
Writes ``benchmarks/results/singe_agreement.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import xprune
from xprune.data import reference_samples
from xprune.measure import accuracy
from xprune.models import pretrained

import _meta

OUT = Path(__file__).resolve().parent / "results"


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--per-class", type=int, default=2, help="reference samples per class")
    ap.add_argument("--k", type=int, default=10, help="quadrature points of both criteria")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--test-n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT / "singe_agreement"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, data = pretrained("resnet", "mnist", progress=False)
    model.eval()
    test = data.test[: args.test_n]
    base = accuracy(model, test)
    criteria = {"singe": {"n_steps": args.k}, "singe-fast": {"n_steps": args.k}, "taylor": {}}
    rows = []
    for seed in args.seeds:
        ref = reference_samples(data.train, args.per_class, seed=seed)
        row = {"seed": seed, "n_ref": len(ref), "seconds": {}, "curves": {}, "passes": {}}
        scores = {}
        for name, opts in criteria.items():
            crit = xprune.criteria.get(name, **opts)
            t0 = time.perf_counter()
            scores[name] = xprune.score(model, ref, crit, batch_size=len(ref))
            row["seconds"][name] = time.perf_counter() - t0
            row["passes"][name] = getattr(crit, "passes", None)
            row["curves"][name] = {}
            for r in args.ratios:
                plan = xprune.select(scores[name], r, by="macs", model=model, warn=False)
                row["curves"][name][str(r)] = accuracy(xprune.apply(model, plan), test)
        exact, fast = scores["singe"], scores["singe-fast"]
        row["spearman_layer"] = {g: spearman(exact[g], fast[g]) for g in exact}
        row["spearman_global"] = spearman(torch.cat([exact[g] for g in exact]), torch.cat([fast[g] for g in exact]))
        print(f"seed {seed}: spearman global {row['spearman_global']:.3f}, per layer "
              + ", ".join(f"{g} {v:.2f}" for g, v in row["spearman_layer"].items())
              + "; seconds " + ", ".join(f"{k} {v:.1f}" for k, v in row["seconds"].items()), flush=True)
        rows.append(row)
    layers = list(rows[0]["spearman_layer"])

    def ms(vals):
        vals = list(vals)
        return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)

    summary = {
        "spearman_global": ms(r["spearman_global"] for r in rows),
        "spearman_layer": {g: ms(r["spearman_layer"][g] for r in rows) for g in layers},
        "seconds": {c: ms(r["seconds"][c] for r in rows) for c in criteria},
        "curves": {c: {str(x): ms(r["curves"][c][str(x)] for r in rows) for x in args.ratios} for c in criteria},
    }
    payload = {"base_accuracy": base, "test_n": len(test), "k": args.k, "per_class": args.per_class,
               "seeds": args.seeds, "ratios": args.ratios, "summary": summary, "runs": rows}
    _meta.write_json(args.out + ".json", payload)
    lines = [f"# singe vs singe-fast on ResNet/MNIST ({len(args.seeds)} seeds, {args.per_class} reference samples "
             f"per class, K={args.k}, test accuracy on the first {len(test)} test images, no fine-tuning)", "",
             f"Unpruned accuracy {base:.4f}. Command: `{_meta.meta()['command']}`", "",
             "| Spearman(singe, singe-fast) | mean ± std over seeds |", "|---|---|",
             f"| global, after default normalisation | {summary['spearman_global'][0]:.3f} ± "
             f"{summary['spearman_global'][1]:.3f} |"]
    lines += [f"| layer {g} | {m:.3f} ± {s:.3f} |" for g, (m, s) in summary["spearman_layer"].items()]
    lines += ["", "| MACs removed | " + " | ".join(criteria) + " |", "|---" * (len(criteria) + 1) + "|"]
    for x in args.ratios:
        lines.append(f"| {x:.0%} | " + " | ".join(f"{summary['curves'][c][str(x)][0]:.4f} ± "
                                                  f"{summary['curves'][c][str(x)][1]:.4f}" for c in criteria) + " |")
    lines += ["", "| scoring seconds | " + " | ".join(criteria) + " |", "|---" * (len(criteria) + 1) + "|",
              "| mean ± std | " + " | ".join(f"{summary['seconds'][c][0]:.2f} ± {summary['seconds'][c][1]:.2f}"
                                           for c in criteria) + " |"]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
