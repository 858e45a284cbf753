"""Pruning with a guarantee: the rate each criterion can certify on the reference models.

For each reference model (``pretrained("resnet", "mnist")``, ``pretrained("vgg", "digits")``; trained once
and cached) and each criterion, relevance is computed on 10 reference samples per class of the training
split, and :func:`xprune.guarantee.choose_rate` picks the largest rate of a grid fixed in advance (default
0, 0.01, ..., 0.10, then 0.15, ..., 0.95: these small models break quickly without fine-tuning, so the
grid is finer at low rates) whose accuracy drop is at most ``max_drop`` (1% and 5%) with 95% confidence (Learn-then-Test, fixed-sequence
exact binomial tests), calibrated on the dataset's val split. For reference, the table also gives the
observed calibration drop, the simultaneous 95% upper bound on the flip risk at the chosen rate, and the
drop measured afterwards on the test split (never used for the choice).

Each cell is a separate guarantee; picking the best criterion from this table on the same calibration set
would need a Bonferroni correction (confidence 1 - 0.05 / #criteria).

Usage: python benchmarks/guarantee.py [--models resnet:mnist,vgg:digits] [--criteria ...] [--rates ...]
       [--threads 1] [--json benchmarks/results/guarantee.json]
(the JSON file carries the run's provenance from benchmarks/_meta.py; ``--json ''`` skips it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import xprune
from xprune import criteria as xcriteria
from xprune.data import reference_samples
from xprune.evaluate import accuracy
from xprune.guarantee import calibration_size, choose_rate
from xprune.models import pretrained

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import ROOT, write_json  # noqa: E402

DEFAULT_CRITERIA = ["lrp", "taylor", "gradient", "activation", "weight", "random"]
DEFAULT_GRID = [round(0.01 * i, 2) for i in range(11)] + [round(0.05 * i, 2) for i in range(3, 20)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet:mnist,vgg:digits", help="arch:dataset pairs")
    ap.add_argument("--criteria", default=",".join(DEFAULT_CRITERIA))
    ap.add_argument("--max-drops", default="0.01,0.05")
    ap.add_argument("--rates", help="comma-separated rate grid (default 0..0.1 by 0.01, then 0.15..0.95 by 0.05)")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--n-per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seed of the reference samples (and of random)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "guarantee.json"),
                    help="write the figures to this JSON file ('' to skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [c for c in args.criteria.split(",") if c and (c != "lrp" or "lrp" in xcriteria.available())]
    drops = [float(d) for d in args.max_drops.split(",")]
    grid = [float(r) for r in args.rates.split(",")] if args.rates else DEFAULT_GRID
    rows, bases, t0 = [], {}, time.time()
    for spec in args.models.split(","):
        arch, dataset = spec.split(":")
        model, ds = pretrained(arch, dataset, progress=False)
        ref = reference_samples(ds.train, args.n_per_class, seed=args.seed)
        base_test = accuracy(model, ds.test)
        n = len(ds.val)
        bases[spec] = {"n_calibration": n, "n_test": len(ds.test), "accuracy_val": accuracy(model, ds.val),
                       "accuracy_test": base_test, "n_needed_at_first_drop": calibration_size(drops[0], args.confidence)}
        print(f"\n### {arch} on {dataset}: calibration = val split (n = {n}), test n = {len(ds.test)}, "
              f"unpruned accuracy {100 * accuracy(model, ds.val):.2f}% (val) / {100 * base_test:.2f}% (test); "
              f"certifying anything at {drops[0]:.0%} needs n >= {calibration_size(drops[0], args.confidence)}\n")
        print("| criterion | " + " | ".join(f"rate @{d:.0%}" for d in drops) + " | " + " | ".join(
            f"@{d:.0%}: broken, drop cal. / test, UCB" for d in drops) + " |")
        print("|:--|" + "--:|" * (2 * len(drops)))
        for name in names:
            options = {"seed": args.seed} if name == "random" else {}
            t = time.time()
            scores = xprune.score(model, ref, name, **options)
            cells, rates = [], []
            for d in drops:
                choice = choose_rate(model, ref, ds.val, name, max_drop=d, confidence=args.confidence,
                                     scores=scores, rates=grid)
                if choice.certified:
                    pruned = xprune.apply(model, xprune.select(scores, choice.rate), "mask")
                    test_drop = base_test - accuracy(pruned, ds.test)
                else:
                    test_drop = 0.0
                rates.append(f"{choice.rate:.2f}")
                cells.append(f"{choice.flips[choice.index]}/{n}, {100 * choice.drop:+.1f} / {100 * test_drop:+.1f}%, "
                             f"{100 * choice.bound:.1f}%")
                rows.append({"model": spec, "criterion": name, "max_drop": d, "confidence": args.confidence,
                             "rate": choice.rate, "n_calibration": n, "calibration_drop": choice.drop,
                             "test_drop": test_drop, "bound": choice.bound, "flips": choice.flips[choice.index],
                             "p_values": choice.p_values, "seconds": time.time() - t})
            print(f"| {name} | " + " | ".join(rates) + " | " + " | ".join(cells) + " |", flush=True)
    print(f"\n(total {time.time() - t0:.0f} s, {torch.get_num_threads()} torch thread(s))")
    if args.json:
        settings = {"grid": grid, "max_drops": drops, "confidence": args.confidence, "n_per_class": args.n_per_class,
                    "seed": args.seed, "seconds": time.time() - t0}
        write_json(args.json, {"settings": settings, "models": bases, "rows": rows})


if __name__ == "__main__":
    main()
