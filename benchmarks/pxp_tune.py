"""PXP composite tuning (Hatefi et al. 2024) vs preset composites vs baselines, AUC on the test set.

Task (``--task cnn``, the reference CNN transfer task): xprune's VGG pretrained on
Fashion-MNIST classes 0-4 and adapted to classes 5-9 from 10 samples per class
(:func:`xprune.models.transfer`). Per seed ``s``:

- reference: 10 training samples per class (``reference_samples(ds.train, 10, seed=s)``);
- validation (tuning only): ``--val-size`` samples of ``ds.val`` drawn with seed ``s``;
- test (reported): the first ``--test-size`` samples of ``ds.test`` (the same for all seeds);
- ``xprune.tune`` (GP sampler, ``--trials`` trials, seed ``s``) on the validation split, then
  the tuned composite, every preset composite of :data:`xprune.lrp.PRESETS` and the
  baselines weight, taylor, gradient, activation, random scored on the reference set and
  evaluated on the test set (rates 0, 0.05, ..., 0.95, masking, no fine-tuning).

``--task vit-heads`` / ``vit-neurons``: xprune's ViT on MNIST restricted to 3 random classes
(as in ``benchmarks/vit_pxp.py``), the attention presets AttnLRP and CP-LRP instead of the CNN
presets (needs :mod:`xprune.transformers`).

Run: ``.venv/bin/python benchmarks/pxp_tune.py`` (about 8 minutes on 2 busy cores);
writes ``benchmarks/results/pxp_tune_<task>.{md,json}`` and one study folder per seed
(``benchmarks/results/pxp_tune_<task>/seed<s>/``: SQLite study, best composite, plots).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import xprune
from xprune import data as xdata
from xprune.evaluate import DEFAULT_RATES
from xprune.tune import _Evaluator  # the masking evaluator tune uses (equal to evaluate.curve, see tests)

BASELINES = ["weight", "taylor", "gradient", "activation", "random"]
CNN_PRESETS = ["epsilon-plus", "epsilon-plus-flat", "epsilon-alpha2-beta1", "epsilon-alpha2-beta1-flat",
               "epsilon-gamma-box", "epsilon", "zplus", "gradient"]
VIT_PRESETS = ["attnlrp", "cp-lrp"]


def _subset(split, n, seed):
    if seed is None:
        idx = torch.arange(min(n, len(split)))
    else:
        idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.X[idx], split.y[idx]


_TRANSFER = {}


def load_task(task, seed):
    """(model, reference, validation, test, classes, units, presets) for one seed."""
    if task == "cnn":
        from xprune.models import transfer

        if not _TRANSFER:  # the model does not depend on the seed; load it once
            _TRANSFER["t"] = transfer("vgg", source="fashion-mnist", n_per_class=10, progress=False)
        model, ds, _ = _TRANSFER["t"]
        units, classes = "channels", None
        lo, hi = float(ds.train.X.min()), float(ds.train.X.max())
        presets = [(p, ("epsilon-gamma-box", {"low": lo, "high": hi}) if p == "epsilon-gamma-box" else p)
                   for p in CNN_PRESETS]
        train, val, test = ds.train, ds.val, ds.test
    else:
        import xprune.transformers  # noqa: F401  (heads / neurons)
        from xprune.models import pretrained

        base, ds = pretrained("vit", "mnist", seed=0, progress=False)
        classes = sorted(random.Random(seed).sample(range(len(ds.classes)), 3))
        model = xdata.RestrictedModel(base.eval(), classes).eval()
        units = task.split("-")[1]
        presets = [(p, p) for p in VIT_PRESETS]
        train, val, test = (xdata.restrict(s, classes) for s in (ds.train, ds.val, ds.test))
    ref = xdata.reference_samples(train, 10, seed=seed)
    return model.eval(), (ref.X, ref.y), val, test, classes, units, presets


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="cnn", choices=["cnn", "vit-heads", "vit-neurons"])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trials", type=int, default=15)
    ap.add_argument("--sampler", default="gp")
    ap.add_argument("--val-size", type=int, default=600)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows: dict[str, list[float]] = {}
    timing = []
    t_start = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        model, ref, val_split, test_split, classes, units, presets = load_task(args.task, seed)
        val = _subset(val_split, args.val_size, seed)
        test = _subset(test_split, args.test_size, None)
        t0 = time.perf_counter()
        res = xprune.tune(model, ref, val, units=units, trials=args.trials, sampler=args.sampler, seed=seed,
                          classes=classes, out=out / f"pxp_tune_{args.task}" / f"seed{seed}", progress=True)
        summary = json.loads((res.out / "summary.json").read_text())
        timing.append({"seed": seed, "tune_seconds": time.perf_counter() - t0, "counts": res.counts,
                       "seconds_per_trial": res.seconds_per_trial,
                       "seconds_complete_trial": summary["seconds_complete_trial"], "val_auc": res.best_value})
        print(res, flush=True)
        ev = _Evaluator(model, ref, test, units, classes, DEFAULT_RATES)  # test-set curves, shared mask cache
        runs = [("lrp (tuned)", "lrp", {k: v for k, v in res.options.items()})]
        runs += [(f"lrp ({name})", "lrp", {"composite": spec}) for name, spec in presets]
        runs += [(b, b, {"seed": seed} if b == "random" else {}) for b in BASELINES]
        for label, crit, opts in runs:
            scores = xprune.score(model, ref, crit, ev.units, **opts)
            accs = [a for _, a in ev.accuracies(scores)]
            rows.setdefault(label, []).append(sum(accs) / len(accs))
            print(f"seed {seed} {label}: test AUC {rows[label][-1]:.4f}", flush=True)
    total = time.perf_counter() - t_start

    def fmt(v):
        m = statistics.fmean(v)
        s = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{m:.4f} ± {s:.4f}", m

    order = sorted(rows, key=lambda k: -statistics.fmean(rows[k]))
    lines = [f"Task `{args.task}`, test AUC (mean ± std over seeds {args.seeds}; rates 0..0.95, masking, "
             f"no fine-tuning; {args.test_size} test samples). Tuned: {args.trials} trials of `xprune.tune` "
             f"(sampler {args.sampler}) on {args.val_size} validation samples.", "",
             "| criterion | test AUC | per seed |", "|---|---|---|"]
    for k in order:
        lines.append(f"| {k} | {fmt(rows[k])[0]} | {', '.join(f'{v:.4f}' for v in rows[k])} |")
    lines += ["", "| seed | validation AUC (tuned) | trials (complete/pruned) | s per trial (all) | "
              "s per complete trial | tuning s |", "|---|---|---|---|---|---|"]
    for t in timing:
        lines.append(f"| {t['seed']} | {t['val_auc']:.4f} | {t['counts'].get('complete', 0)}/"
                     f"{t['counts'].get('pruned', 0)} | {t['seconds_per_trial']:.2f} | "
                     f"{t['seconds_complete_trial']:.2f} | {t['tune_seconds']:.0f} |")
    lines += ["", f"Total wall time {total:.0f} s (torch threads {args.threads})."]
    md = "\n".join(lines) + "\n"
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pxp_tune_{args.task}.md").write_text(md)
    (out / f"pxp_tune_{args.task}.json").write_text(json.dumps({"meta": __import__("_meta").meta(), "auc": rows, "timing": timing, "args": vars(args),
                                                               "total_seconds": total}, indent=1))


if __name__ == "__main__":
    main()
