"""The scarce-data claim of Pruning by Explaining, on a transfer task, without fine-tuning.

Pretrain a VGG-style CNN on Fashion-MNIST classes 0-4, adapt it to classes
5-9 from ``n`` labelled samples per class (those samples are the only data
the criteria see), then prune it at rates 0..0.95 without fine-tuning and
report, per criterion, the area under the accuracy-vs-rate curve on the
target test set (mean ± std over seeds; each seed redraws the samples,
re-adapts and re-pretrains).

Usage: python benchmarks/transfer.py [--arch vgg] [--seeds 0,1,2] [--n-per-class 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import xprune
from xprune import evaluate, report
from xprune.models import transfer

CRITERIA = ["lrp", "weight", "taylor", "gradient", "activation", "random"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="vgg")
    ap.add_argument("--source", default="fashion-mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-per-class", type=int, default=10)
    ap.add_argument("--criteria", default=",".join(CRITERIA))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    out = Path(args.out)
    curves, started = [], time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        model, ds, reference = transfer(args.arch, source=args.source, n_per_class=args.n_per_class, seed=seed,
                                        progress=False)
        base = evaluate.accuracy(model, ds.test)
        print(f"seed {seed}: adapted {args.arch} target test accuracy {base:.4f} ({len(reference)} reference samples)")
        for name in args.criteria.split(","):
            options = {"seed": seed} if name == "random" else {}
            c = evaluate.curve(model, reference, ds.test, name, **options)
            c.meta["seed"] = seed
            curves.append(c)
            print(f"  {name:<11} AUC {c.auc:.4f}")
    md = report.curves_markdown(curves)
    print(md)
    stem = f"transfer-{args.arch}-{args.source}"
    (out / f"{stem}.md").parent.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(md + "\n")
    report.save_json({"meta": __import__("_meta").meta(), "curves": curves, "seconds": time.perf_counter() - started, "args": vars(args)},
                     out / f"{stem}.json")
    report.plot_curves(curves, out / f"{stem}.png",
                       title=f"{args.arch}: {args.source} 0-4 -> 5-9, {args.n_per_class} samples/class, no fine-tuning")
    print(f"wrote {out / stem}.md/.json/.png in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
