"""Entwined pruning vs one-shot + fine-tuning at an equal budget (SInGE, Yvinec et al. 2022).

Setting: the reference ResNet on MNIST (``xprune.models.pretrained("resnet",
"mnist")``), pruned to a 50% MACs reduction (measured, Torch-Pruning's
counter, 1 multiply-add = 1 MAC) with a global ranking. Three schedules, all
from :func:`xprune.schedules.entwined` so that everything but the schedule is
the same:

- **entwined**: ``steps`` x {score, prune 1/steps of the target, fine-tune
  budget/steps optimiser steps};
- **one-shot + FT**: ``steps=1``: score once, prune to the target, then all
  ``budget`` fine-tuning steps;
- **iterative, no FT**: the entwined steps with ``fine_tune_budget=0``.

Fine-tuning: :func:`xprune.models.fine_tune` (Adam, lr ``--lr``, batches of
``--batch-size`` from the training split, seeded). Reference samples for
scoring: ``--per-class`` per class from the training split. The defaults are
small (budget 60 steps, 3 entwined steps, 5 samples per class, SInGE K=3) so
the whole grid runs in minutes on 2 shared CPU cores. Seeds vary the reference samples and the
fine-tuning order (the pretrained model is the same). Accuracy: the test split.

Run: ``.venv/bin/python benchmarks/entwined.py [--seeds 0 1] [--budget 60] [--steps 3] [--per-class 5] [--k 3]
[--criteria singe lrp taylor weight] [--json benchmarks/results/entwined.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from xprune import criteria, schedules
from xprune.data import reference_samples
from xprune.models import accuracy, fine_tune, pretrained



def run(model, data, criterion, seed, *, steps, budget, ratio, lr, batch_size, per_class, options):
    ref = reference_samples(data.train, per_class, seed=seed)

    def tune(m, n):
        fine_tune(m, data.train, steps=n, lr=lr, batch_size=batch_size, seed=seed * 1000 + tune.calls)
        tune.calls += 1

    out = {}
    for name, kw in (("entwined", dict(steps=steps, fine_tune_budget=budget)),
                     ("one-shot + FT", dict(steps=1, fine_tune_budget=budget)),
                     ("iterative, no FT", dict(steps=steps, fine_tune_budget=0))):
        tune.calls = 0
        t0 = time.perf_counter()
        res = schedules.entwined(model, ref, criterion, ratio, by="macs", fine_tune=tune, seed=seed,
                                 **kw, **options.get(criterion, {}))
        last = res.history[-1]
        out[name] = {"accuracy": accuracy(res.model, data.test), "macs_reduction": last["macs_reduction"],
                     "units_removed": last["ratio"], "fine_tune_steps": last["fine_tune_total"],
                     "seconds": time.perf_counter() - t0}
        print(f"  {criterion:7s} seed {seed} {name:17s} acc {out[name]['accuracy']:.4f}  "
              f"MACs -{100 * last['macs_reduction']:.1f}%  units -{100 * last['ratio']:.1f}%  "
              f"FT {last['fine_tune_total']}  {out[name]['seconds']:.0f}s", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--criteria", nargs="+", default=["singe", "lrp", "taylor", "weight"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--ratio", type=float, default=0.5, help="MACs reduction")
    ap.add_argument("--steps", type=int, default=3, help="entwined steps")
    ap.add_argument("--budget", type=int, default=60, help="total fine-tuning steps")
    ap.add_argument("--per-class", type=int, default=5, help="reference samples per class for scoring")
    ap.add_argument("--k", type=int, default=3, help="SInGE quadrature points (n_steps)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--json", default="benchmarks/results/entwined.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, data = pretrained("resnet", "mnist", progress=False)
    base = accuracy(model, data.test)
    names = [c for c in args.criteria if c in criteria.available()]
    skipped = sorted(set(args.criteria) - set(names))
    print(f"unpruned test accuracy {base:.4f}; criteria {names}" + (f" (not available: {skipped})" if skipped else ""))
    options = {"singe": {"n_steps": args.k}}
    t0 = time.perf_counter()
    results = {c: [run(model, data, c, s, steps=args.steps, budget=args.budget, ratio=args.ratio, lr=args.lr,
                       batch_size=args.batch_size, per_class=args.per_class, options=options)
                   for s in args.seeds] for c in names}
    schedules_ = ["entwined", "one-shot + FT", "iterative, no FT"]

    def cell(c, s):
        v = [100 * r[s]["accuracy"] for r in results[c]]
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.2f}"

    print(f"\nResNet / MNIST, {100 * args.ratio:.0f}% MACs reduction, fine-tuning budget {args.budget} steps "
          f"(entwined: {args.steps} steps), seeds {args.seeds}; test accuracy % (mean ± std), unpruned {100 * base:.2f}\n")
    print("| criterion | " + " | ".join(schedules_) + " |")
    print("|---|" + "---|" * len(schedules_))
    for c in names:
        print(f"| {c} | " + " | ".join(cell(c, s) for s in schedules_) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")
    if args.json:
        from xprune._io import atomic_write

        atomic_write(args.json, json.dumps({"meta": __import__("_meta").meta(), "unpruned_accuracy": base, "settings": vars(args),
                                            "options": options, "results": results}, indent=1))


if __name__ == "__main__":
    main()
