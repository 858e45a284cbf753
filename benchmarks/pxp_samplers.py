"""Samplers of the PXP composite search at equal budgets: GP (Bayesian optimisation) vs TPE vs random search.

For each seed and sampler, one ``xprune.tune`` study of ``--trials`` trials (default bound pruner,
:data:`xprune.tune.study.N_STARTUP` random start-up trials for GP and TPE) on the task of
``benchmarks/pxp_tune.py`` (same reference, validation and test splits per seed):

- ``--task cnn``: the CNN transfer task (xprune's VGG pretrained on Fashion-MNIST classes 0-4,
  adapted to classes 5-9 from 10 samples per class; :func:`xprune.models.transfer`), channels;
- ``--task vit-heads``: xprune's ViT on MNIST restricted to 3 random classes, attention heads.

The start-up design does not depend on the budget, so the study of ``--trials`` trials read after
its first ``b`` finished trials *is* the study a budget of ``b`` would have run: every budget of
``--budgets`` is read from the one run. Recorded per run: every trial (state, value, seconds, the
rate it was stopped after), the best validation AUC after each number of trials (complete,
fully measured trials only), and for each budget the test AUC of the composite chosen then
(scored on the reference set, measured on the test split, rates 0..0.95, masking, no fine-tuning),
plus ``repeats``: trials whose point repeats an earlier one (same categorical choices, every float
parameter within 5% of its normalised range), the failure mode of optuna's GP sampler when stopped
trials were hidden from it.

Run (``OMP_NUM_THREADS=1``)::

    python benchmarks/pxp_samplers.py --task cnn --seeds 0,1,2 --trials 50
    python benchmarks/pxp_samplers.py --task vit-heads --seeds 0,1 --trials 30 --budgets 10,20,30

Writes ``benchmarks/results/pxp_samplers_<task>.json`` (with the provenance record of
``benchmarks/_meta.py``, rewritten after every run) and ``.md``; the studies go to ``--work``.
Seeds run in separate processes (e.g. ``--seeds 2 --out OTHER``) are combined with
``--merge A.json B.json`` (their runs, and each part's record under ``meta.parts``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pxp_tune  # noqa: E402  (the tasks and splits of the tuning benchmark)
from _meta import meta, write_json  # noqa: E402

import xprune  # noqa: E402
from xprune.evaluate import DEFAULT_RATES  # noqa: E402
from xprune.tune import _Evaluator  # noqa: E402


def _normalised(dist, v):
    if dist.log:
        return (math.log(v) - math.log(dist.low)) / (math.log(dist.high) - math.log(dist.low))
    return (v - dist.low) / (dist.high - dist.low) if dist.high > dist.low else 0.0


def _same_point(a, b, tol=0.05):
    import optuna

    for name, d in a.distributions.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            if a.params[name] != b.params[name]:
                return False
        elif abs(_normalised(d, a.params[name]) - _normalised(d, b.params[name])) > tol:
            return False
    return True


def run_one(task, seed, sampler, model, ref, val, units, classes, trials, budgets, ev_test, work):
    """One study; its trials, best-so-far curve and the test AUC of the composite chosen at each budget."""
    import optuna

    out = work / task / f"seed{seed}" / sampler
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = xprune.tune(model, ref, val, units=units, trials=trials, sampler=sampler, seed=seed, classes=classes,
                      out=out, progress=False)
    seconds = time.perf_counter() - t0
    TS = optuna.trial.TrialState
    finished = [t for t in res.study.get_trials(deepcopy=False) if t.state in (TS.COMPLETE, TS.PRUNED)]
    setup = json.loads(res.study.user_attrs["setup"])
    kwargs = {} if units in ("heads", "neurons") else {"groups": setup["design"]["groups"]}
    rows, best_so_far, best_trial, best = [], [], [], -math.inf
    chosen = None
    for i, t in enumerate(finished):
        full = t.state == TS.COMPLETE and "stopped_after" not in t.user_attrs
        if full and t.value > best:
            best, chosen = t.value, t
        best_so_far.append(best if chosen is not None else None)
        best_trial.append(chosen.number if chosen is not None else None)
        rows.append({"number": t.number, "state": "COMPLETE" if full else "PRUNED", "value": t.value,
                     "seconds": t.user_attrs.get("seconds"), "stopped_after": t.user_attrs.get("stopped_after"),
                     "repeats": next((u.number for u in finished[:i] if _same_point(t, u)), None),
                     "params": t.params})
    by_number = {t.number: t for t in finished}
    test_auc = {}
    for b in budgets:
        n = best_trial[min(b, len(finished)) - 1]
        if n is None:
            continue
        if n not in test_auc:
            t = by_number[n]
            scores = ev_test.score(t.user_attrs["composite"], kwargs, **t.user_attrs["options"])
            accs = [a for _, a in ev_test.accuracies(scores)]
            test_auc[n] = sum(accs) / len(accs)
    at_budget = {str(b): {"trial": best_trial[min(b, len(finished)) - 1],
                          "validation_auc": best_so_far[min(b, len(finished)) - 1],
                          "test_auc": test_auc.get(best_trial[min(b, len(finished)) - 1])} for b in budgets}
    return {"task": task, "seed": seed, "sampler": sampler, "trials": rows, "best_so_far": best_so_far,
            "at_budget": at_budget, "seconds": seconds, "counts": res.counts,
            "repeats": sum(r["repeats"] is not None for r in rows)}


def summary(runs, budgets, samplers):
    """Per sampler and budget: the per-seed values (seed order) with their mean and std, as the tables quote them."""
    out = {}
    for s in samplers:
        rs = sorted((r for r in runs if r["sampler"] == s), key=lambda r: r["seed"])
        out[s] = {"seeds": [r["seed"] for r in rs]}
        for b in budgets:
            entry = {}
            for key in ("validation_auc", "test_auc"):
                v = [r["at_budget"][str(b)][key] for r in rs]
                ok = [x for x in v if x is not None]
                entry[key] = v
                entry[key + "_mean"] = statistics.fmean(ok) if ok else None
                entry[key + "_std"] = statistics.stdev(ok) if len(ok) > 1 else None
            out[s][str(b)] = entry
    return out


def _fmt(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {sd:.4f}"


def markdown(task, runs, budgets, samplers, record):
    lines = [f"Task `{task}`: best validation AUC after b trials and test AUC of the composite chosen then "
             f"(mean ± std over seeds {sorted({r['seed'] for r in runs})}; one study per sampler and seed, "
             "read at each budget).", ""]
    head = "| sampler | " + " | ".join(f"val AUC @{b}" for b in budgets) + " | " + \
        " | ".join(f"test AUC @{b}" for b in budgets) + " | complete/pruned | repeats | s per study |"
    lines += [head, "|" + "---|" * (2 * len(budgets) + 4)]
    for s in samplers:
        rs = [r for r in runs if r["sampler"] == s]
        if not rs:
            continue
        val = [_fmt([r["at_budget"][str(b)]["validation_auc"] for r in rs]) for b in budgets]
        test = [_fmt([r["at_budget"][str(b)]["test_auc"] for r in rs]) for b in budgets]
        counts = f"{sum(r['counts'].get('complete', 0) for r in rs)}/{sum(r['counts'].get('pruned', 0) for r in rs)}"
        secs = statistics.fmean(r["seconds"] for r in rs)
        lines.append(f"| {s} | " + " | ".join(val) + " | " + " | ".join(test) +
                     f" | {counts} | {sum(r['repeats'] for r in rs)} | {secs:.0f} |")
    lines += ["", "Per seed, best validation AUC at each budget:", "",
              "| seed | sampler | " + " | ".join(f"@{b}" for b in budgets) + " |",
              "|" + "---|" * (len(budgets) + 2)]
    for r in sorted(runs, key=lambda r: (r["seed"], samplers.index(r["sampler"]))):
        vals = [r["at_budget"][str(b)]["validation_auc"] for b in budgets]
        lines.append(f"| {r['seed']} | {r['sampler']} | " +
                     " | ".join("-" if v is None else f"{v:.4f}" for v in vals) + " |")
    lines += ["", f"Command: `{record['command']}`; commit {record['commit']}"
              f"{' (uncommitted changes)' if record.get('dirty') else ''}; torch threads {record['threads']}; "
              f"{record['date']}."]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="cnn", choices=["cnn", "vit-heads", "vit-neurons"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samplers", default="gp,tpe,random")
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--budgets", default="10,25,50")
    ap.add_argument("--val-size", type=int, default=600)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--work", default="/tmp/xprune-pxp-samplers", help="folder of the studies")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine the runs of these result files instead")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        return merge(args)
    budgets = [int(b) for b in args.budgets.split(",")]
    if max(budgets) > args.trials:
        ap.error("every budget must be <= --trials")
    samplers = args.samplers.split(",")
    record = meta()
    out, work = Path(args.out), Path(args.work)
    if args.task != "cnn":  # the pretrained ViT is the same for every seed: load it once
        import xprune.models

        xprune.models.pretrained = functools.lru_cache(maxsize=None)(xprune.models.pretrained)
    runs, started = [], time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        model, ref, val_split, test_split, classes, units, _ = pxp_tune.load_task(args.task, seed)
        val = pxp_tune._subset(val_split, args.val_size, seed)
        test = pxp_tune._subset(test_split, args.test_size, None)
        ev_test = _Evaluator(model, ref, test, units, classes, DEFAULT_RATES)
        for sampler in samplers:
            r = run_one(args.task, seed, sampler, model, ref, val, units, classes, args.trials, budgets, ev_test,
                        work)
            runs.append(r)
            print(f"seed {seed} {sampler}: " + ", ".join(
                f"@{b} val {v['validation_auc']:.4f} test {v['test_auc']:.4f}" for b, v in r["at_budget"].items()
                if v["validation_auc"] is not None) + f"; {r['counts']}, {r['repeats']} repeats, {r['seconds']:.0f} s",
                flush=True)
            payload = {"task": args.task, "args": vars(args), "budgets": budgets, "samplers": samplers,
                       "summary": summary(runs, budgets, samplers), "runs": runs,
                       "total_seconds": time.perf_counter() - started}
            write_json(out / f"pxp_samplers_{args.task}.json", payload, record=record)
    md = markdown(args.task, runs, budgets, samplers, record)
    print(md)
    (out / f"pxp_samplers_{args.task}.md").write_text(md)


def merge(args):
    """One result file (and table) from the runs of several: seeds run in separate processes."""
    parts = [json.loads(Path(f).read_text()) for f in args.merge]
    if len({(p["task"], tuple(p["budgets"]), p["args"]["trials"]) for p in parts}) != 1:
        raise SystemExit("the files to merge differ in task, budgets or trials")
    runs = [r for p in parts for r in p["runs"]]
    keys = [(r["seed"], r["sampler"]) for r in runs]
    if len(set(keys)) != len(keys):
        raise SystemExit("the files to merge hold the same seed and sampler twice")
    samplers = list(dict.fromkeys(s for p in parts for s in p["samplers"]))
    task, budgets = parts[0]["task"], parts[0]["budgets"]
    record = meta(parts=[p["meta"] for p in parts])
    payload = {"task": task, "args": parts[0]["args"], "budgets": budgets, "samplers": samplers,
               "summary": summary(runs, budgets, samplers), "runs": runs,
               "total_seconds": sum(p["total_seconds"] for p in parts)}
    out = Path(args.out)
    write_json(out / f"pxp_samplers_{task}.json", payload, record=record)
    md = markdown(task, runs, budgets, samplers, record)
    md += "".join(f"Part: `{p['meta']['command']}`, {p['meta']['date']}.\n" for p in parts)
    print(md)
    (out / f"pxp_samplers_{task}.md").write_text(md)


if __name__ == "__main__":
    main()
