"""Interpretations Steered Pruning vs attribution criteria at 50% MACs, with equal fine-tuning.

Setting: the reference ResNet-8 trained on MNIST (``xprune.models.pretrained("resnet", "mnist")``,
5000-sample MNIST of ``xprune.data``), channel pruning to ``--reduction`` (default 0.5) of the
whole model's MACs (Torch-Pruning's counter, 1 multiply-add = 1 MAC).

- ``taylor``, ``lrp``, ``singe`` (those registered): scored on ``--ref`` reference
  samples per class of the train split (drawn with the seed), plan from
  :func:`xprune.steered.select_for_macs` (the exact MACs model, so every method removes
  the same MACs);
- ``steered``: :func:`xprune.steered.steer` on the train split (default settings,
  stage seed = the seed), plan = units ranked by gate logit to the same exact MACs
  (``calibrate=True``); the closed gates alone (threshold 0) are reported too.

Every pruned model is then fine-tuned the same way (``--ft-steps`` Adam steps, lr
``--ft-lr``, batch 64, train split, seeded). Reported: test accuracy before and after
fine-tuning (1000 test samples), and explanation similarity of the fine-tuned model to
the original (:func:`xprune.similarity.explanation_similarity`: LRP epsilon-plus heatmaps
if available, else gradient x input, Pearson correlation and top-10% overlap, on
``--sim-n`` test samples, class = true label). Means ± std over ``--seeds``.

Stages are cached under the xprune cache dir (``$XPRUNE_CACHE`` or ``~/.cache/xprune``);
``--no-cache`` retrains (stage times are only meaningful then).

Run: ``.venv/bin/python benchmarks/steered.py [--seeds 0 1] [--out benchmarks/results/steered.md]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import xprune
from xprune.data import reference_samples
from xprune.models import fine_tune, pretrained
from xprune.similarity import default_method, explanation_similarity
from xprune.steered import MacsModel, select_for_macs, steer


def evaluate(model, pruned, ds, args, seed):
    acc0 = xprune.evaluate.accuracy(pruned, ds.test)
    t = time.perf_counter()
    fine_tune(pruned, ds.train, steps=args.ft_steps, lr=args.ft_lr, seed=seed)
    ft_s = time.perf_counter() - t
    pruned.eval()
    acc = xprune.evaluate.accuracy(pruned, ds.test)
    sim = explanation_similarity(model, pruned, ds.test, max_samples=args.sim_n)
    return {"acc_no_ft": acc0, "acc": acc, "pearson": sim.pearson, "topk": sim.topk, "ft_seconds": ft_s}


def fmt(values, digits=3):
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--reduction", type=float, default=0.5)
    p.add_argument("--ref", type=int, default=10, help="reference samples per class for the criteria")
    p.add_argument("--ft-steps", type=int, default=100)
    p.add_argument("--ft-lr", type=float, default=1e-3)
    p.add_argument("--sim-n", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--out", default="benchmarks/results/steered.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, ds = pretrained("resnet", "mnist", progress=True)
    model.eval()
    units = xprune.discover(model, ds.train.X[:1])
    macs = MacsModel(model, units, ds.train.X[:1])
    base_acc = xprune.evaluate.accuracy(model, ds.test)
    criteria = [c for c in ("taylor", "lrp", "singe") if c in xprune.criteria.available()]
    rows: dict[str, list[dict]] = {c: [] for c in criteria + ["steered"]}
    stages: list[dict] = []
    gate_only: list[float] = []
    for seed in args.seeds:
        ref = reference_samples(ds.train, args.ref, seed=seed)
        for crit in criteria:
            t = time.perf_counter()
            scores = xprune.score(model, ref, crit, units=units)
            plan = select_for_macs(scores, macs, args.reduction)
            score_s = time.perf_counter() - t
            r = evaluate(model, xprune.apply(model, plan).eval(), ds, args, seed)
            r.update(reduction=plan.meta["macs_reduction"], score_seconds=score_s, removed=plan.n_removed)
            rows[crit].append(r)
            print(crit, seed, {k: round(v, 4) for k, v in r.items()}, flush=True)
        t = time.perf_counter()
        res = steer(model, ds.train, args.reduction, seed=seed, units=units, progress=True,
                    cache_dir=None if args.no_cache else "default")
        plan = res.plan(calibrate=True)
        score_s = time.perf_counter() - t
        gate_only.append(res.plan(calibrate=False).meta["macs_reduction"])
        stages.append({k: v["seconds"] for k, v in res.stages.items()} | {"cached": any(v["cached"] for v in res.stages.values())})
        r = evaluate(model, xprune.apply(model, plan).eval(), ds, args, seed)
        r.update(reduction=plan.meta["macs_reduction"], score_seconds=score_s, removed=plan.n_removed)
        rows["steered"].append(r)
        print("steered", seed, {k: round(v, 4) for k, v in r.items()}, stages[-1], flush=True)

    method = default_method()
    lines = [
        f"ResNet-8 / MNIST (test accuracy {base_acc:.3f}, {macs.base / 1e6:.2f} M MACs), "
        f"{100 * args.reduction:.0f}% MACs removed, fine-tuning {args.ft_steps} Adam steps lr {args.ft_lr}; "
        f"seeds {args.seeds}; explanation similarity = {method} heatmaps of the fine-tuned vs the original "
        f"model on {args.sim_n} test samples (true class).",
        "",
        "| method | MACs removed | units removed | acc. no FT | acc. after FT | heatmap Pearson | top-10% overlap | scoring s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in rows.items():
        col = lambda k, d=3: fmt([r[k] for r in rs], d)  # noqa: E731
        lines.append(f"| {name} | {col('reduction')} | {col('removed', 1)} | {col('acc_no_ft')} | {col('acc')} | "
                     f"{col('pearson')} | {col('topk')} | {col('score_seconds', 1)} |")
    lines += ["", f"steered gates alone (threshold 0, no calibration): MACs removed {fmt(gate_only)}.", "",
              "Steered stage training time (s, 1 thread" + (", cached" if any(s['cached'] for s in stages) else "") + "):", "",
              "| seed | predictor | selector | gates |", "|---|---|---|---|"]
    for seed, s in zip(args.seeds, stages):
        lines.append(f"| {seed} | {s['predictor']:.1f} | {s['selector']:.1f} | {s['gates']:.1f} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": __import__("_meta").meta(), "rows": rows, "stages": stages, "gates_only": gate_only,
                                                   "base_accuracy": base_acc, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
