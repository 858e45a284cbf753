"""The published methods side by side at 50% of the MACs, one fine-tuning budget for all (issue 20).

Settings (``--settings``): ``resnet-mnist`` (the suite's reference ResNet-8 on the 5,000-sample MNIST of
``xprune.data``) and ``resnet-fashion`` (the same architecture trained on the full Fashion-MNIST, 54,000 training
images, harder classes). Each model is pruned to ``--reduction`` (default 0.5) of its MACs (Torch-Pruning's counter,
1 multiply-add = 1 MAC) and every pruned model gets the same fine-tuning: ``--ft-steps`` Adam steps at ``--ft-lr``,
batches of 64 from the training split, seeded (:func:`xprune.models.fine_tune`).

Rows (what each one is):

- ``singe``: SInGE as xprune reads the paper: each unit alone on a geometric path to its removal, the loss as
  objective, per-sample absolute integrals (see ``docs/singe.md`` for which constants are xprune's);
  one-shot to the target, then fine-tuning.
- ``singe + entwined``: the same criterion inside SInGE's entwined schedule (``xprune.schedules.entwined``:
  ``--entwined-steps`` rounds of score / remove / fine-tune, the same total fine-tuning steps).
- ``singe-fast``: the shared-path simplification (all units of a layer on one path, uniform, target logit).
- ``ISP (hypernet)``, ``ISP (free gates)``: Interpretations Steered Pruning with the authors' GRU hypernetwork or
  with free per-channel gate logits (their ``Simplified_Gate``); the architecture is taken from the hard gates
  (``raw``) and, as a separate row, calibrated to exactly the MACs target (``calibrated``).
- ``taylor``: Molchanov et al. 2017 (per-sample |a dL/da|, L2 per layer).
- ``pbe``: Pruning by Explaining (Yeom et al. 2021): the z+ LRP preset, signed sum, L1 per layer.
- ``lrp (tuned)``: PXP (Hatefi et al. 2024): the LRP composite searched by ``xprune.tune`` (random search,
  ``--trials`` trials) on the validation split with seed 0's reference samples, reused for every seed.
- ``random``.

Criteria score ``--per-class`` reference samples per class of the training split (drawn with the seed); the
plan is :func:`xprune.select` with ``by="macs"`` (global ranking, each criterion's default per-layer
normalisation). Seeds vary the reference samples, the ISP stages and the fine-tuning order; the trained model
is the same. Accuracy is measured on the test split (``--test-n`` samples drawn once at random for Fashion-MNIST) by physical
removal. ``score s`` is the wall time of scoring (ISP: of training its three stages; lrp (tuned): per seed,
without the one search).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/faithful.py [--settings resnet-mnist resnet-fashion]
[--seeds 0 1 2] [--json benchmarks/results/faithful.json]``; ``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meta  # noqa: E402

import xprune  # noqa: E402
from xprune import schedules  # noqa: E402
from xprune.data import reference_samples  # noqa: E402
from xprune.data.containers import Split  # noqa: E402
from xprune.models import accuracy, fine_tune, pretrained  # noqa: E402

SETTINGS = {"resnet-mnist": ("resnet", "mnist"), "resnet-fashion": ("resnet", "fashion-mnist")}
METHODS = ["singe", "singe + entwined", "singe-fast", "ISP (hypernet, raw)", "ISP (hypernet, calibrated)",
           "ISP (free gates, raw)", "ISP (free gates, calibrated)", "taylor", "pbe", "lrp (tuned)", "random"]


def _subset(split: Split, n: int | None) -> Split:
    """``n`` samples drawn at random (fixed generator: the same for every method and seed); splits may be sorted."""
    if n is None or len(split) <= n:
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(1234))[:n]
    return Split(split.X[idx], split.y[idx])


def _ft(model, train, args, seed):
    fine_tune(model, train, steps=args.ft_steps, lr=args.ft_lr, batch_size=64, seed=seed)
    model.eval()
    return model


def _row(pruned, base_macs, example, test, train, args, seed, score_s, ft=True):
    macs = float(xprune.measure.count(pruned, example)["macs"])
    before = accuracy(pruned, test)
    after = accuracy(_ft(pruned, train, args, seed), test) if ft else before
    return {"macs_reduction": 1 - macs / base_macs, "acc_no_ft": before, "acc": after, "score_seconds": score_s}


def run_setting(name, args):
    arch, data_name = SETTINGS[name]
    model, ds = pretrained(arch, data_name, progress=False)
    model.eval()
    test = _subset(ds.test, args.test_n)
    example = ds.train.X[:1]
    units = xprune.discover(model, example)
    base_macs = float(xprune.measure.count(model, example)["macs"])
    base_acc = accuracy(model, test)
    print(f"{name}: unpruned test accuracy {base_acc:.4f}, {base_macs / 1e6:.2f} M MACs, {len(units)} groups, "
          f"{sum(g.size for g in units)} units", flush=True)

    # PXP: one search of the composite on the validation split, seed 0's reference samples
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tuned = xprune.tune(model, reference_samples(ds.train, args.per_class, seed=0), _subset(ds.val, args.val_n),
                            trials=args.trials, out=tmp, seed=0, progress=False)
        tuned_file = Path(tmp) / "best_composite.json"
        composite_text = tuned_file.read_text() if tuned_file.is_file() else None
        tune_s = time.perf_counter() - t
        print(f"  tuned composite in {tune_s:.0f} s ({args.trials} trials)", flush=True)

        rows = {m: [] for m in METHODS if m in args.methods}
        for seed in args.seeds:
            ref = reference_samples(ds.train, args.per_class, seed=seed)
            for method in rows:
                t = time.perf_counter()
                if method.startswith("ISP"):
                    generator = "hypernet" if "hypernet" in method else "free"
                    calibrate = "calibrated" in method
                    key = (generator, seed)
                    if key not in _ISP:
                        t0 = time.perf_counter()
                        _ISP[key] = (xprune.steered.steer(model, ds.train, args.reduction, seed=seed, units=units,
                                                          generator=generator, progress=False, cache_dir=None,
                                                          **args.isp_options),
                                     time.perf_counter() - t0)
                    res, steer_s = _ISP[key]
                    plan = res.plan(calibrate=calibrate)
                    r = _row(xprune.apply(model, plan).eval(), base_macs, example, test, ds.train, args, seed, steer_s)
                elif method == "singe + entwined":
                    def tune_fn(m, n, _s=seed):
                        fine_tune(m, ds.train, steps=n, lr=args.ft_lr, batch_size=64, seed=_s * 1000 + tune_fn.calls)
                        tune_fn.calls += 1
                    tune_fn.calls = 0
                    res = schedules.entwined(model, ref, "singe", args.reduction, by="macs", steps=args.entwined_steps,
                                             fine_tune_budget=args.ft_steps, fine_tune=tune_fn, seed=seed)
                    res.model.eval()
                    r = _row(res.model, base_macs, example, test, ds.train, args, seed, time.perf_counter() - t,
                             ft=False)
                    r["acc_no_ft"] = None  # fine-tuning is interleaved with the pruning
                else:
                    criterion, options = method, {}
                    if method == "lrp (tuned)":
                        criterion, options = "lrp", {k: v for k, v in tuned.options.items()}
                    if criterion == "random":
                        options = {"seed": seed}
                    scores = xprune.score(model, ref, criterion, units=units, **options)
                    score_s = time.perf_counter() - t
                    plan = xprune.select(scores, args.reduction, by="macs", model=model, warn=False)
                    r = _row(xprune.apply(model, plan).eval(), base_macs, example, test, ds.train, args, seed, score_s)
                r["seconds"] = time.perf_counter() - t
                rows[method].append(r)
                print(f"  {method:28s} seed {seed}: MACs -{100 * r['macs_reduction']:.1f}%  "
                      f"no FT {r['acc_no_ft'] if r['acc_no_ft'] is None else round(r['acc_no_ft'], 4)}  "
                      f"FT {r['acc']:.4f}  score {r['score_seconds']:.1f}s  ({r['seconds']:.0f}s)", flush=True)
    _ISP.clear()
    return {"setting": name, "arch": arch, "data": data_name, "unpruned_accuracy": base_acc, "macs": base_macs,
            "units": sum(g.size for g in units), "test_n": len(test), "tune_seconds": tune_s,
            "tuned_composite": composite_text, "tuned_options": {k: str(v) for k, v in tuned.options.items()},
            "rows": rows}


_ISP: dict = {}


def _fmt(values, digits=3, scale=1.0):
    values = [scale * v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(result) -> str:
    lines = [f"**{result['setting']}** ({result['arch']} on {result['data']}, unpruned test accuracy "
             f"{result['unpruned_accuracy']:.3f} on {result['test_n']} test samples, {result['macs'] / 1e6:.2f} M MACs)",
             "", "| method | MACs removed % | acc. before FT | acc. after FT | scoring s |", "|---|---|---|---|---|"]
    for method, rs in result["rows"].items():
        lines.append(f"| {method} | {_fmt([r['macs_reduction'] for r in rs], 1, 100)} | "
                     f"{_fmt([r['acc_no_ft'] for r in rs])} | {_fmt([r['acc'] for r in rs])} | "
                     f"{_fmt([r['score_seconds'] for r in rs], 1)} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, metavar="METHOD")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--reduction", type=float, default=0.5)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--ft-steps", type=int, default=150)
    ap.add_argument("--ft-lr", type=float, default=1e-3)
    ap.add_argument("--entwined-steps", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--val-n", type=int, default=1000)
    ap.add_argument("--test-n", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, tiny budgets")
    ap.add_argument("--json", default="benchmarks/results/faithful.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.isp_options = {}
    if args.quick:
        args.seeds, args.ft_steps, args.trials, args.test_n, args.val_n = [0], 5, 2, 300, 200
        args.isp_options = {"predictor_steps": 3, "selector_steps": 3, "gate_steps": 3}
    t0 = time.perf_counter()
    results = [run_setting(s, args) for s in args.settings]
    text = "\n\n".join(table(r) for r in results)
    print("\n" + text + f"\n\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json and not args.quick:
        settings = {k: v for k, v in vars(args).items() if k != "quick"}
        _meta.write_json(args.json, {"settings": settings, "results": results,
                                     "seconds": time.perf_counter() - t0})
        Path(args.json).with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
