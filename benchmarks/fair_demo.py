"""The demo's comparison (VGG on digits, 10 reference samples per class, no fine-tuning) under several
per-layer normalisations and Taylor forms: what the defaults of issue 19 change, val and test AUC.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fair_demo.py [--seeds 0,1,2]

Writes ``benchmarks/results/fair_demo.json`` (provenance under ``"meta"``). Each row: a criterion with
its options and ``normalize`` ("default" = the criterion's own, see ``xprune.score``), the AUC (mean
accuracy over the rates 0, 0.05, ..., 0.95) per seed on the val split (180 images) and on the test
split (360 images), their means, and the fraction of each layer a 50% plan removes (first seed).
Relevance from the training split's reference samples; one global ranking; masks (equal to removal in
eval mode).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _meta  # noqa: E402

import xprune  # noqa: E402
from xprune import data as xdata  # noqa: E402
from xprune import evaluate  # noqa: E402
from xprune.errors import DegenerateResult  # noqa: E402
from xprune.models import pretrained  # noqa: E402

#: (label, criterion, options, normalize)
VARIANTS = [
    ("lrp (PXP: none)", "lrp", {}, "default"),
    ("lrp, mean", "lrp", {}, "mean"),
    ("lrp, l1", "lrp", {}, "l1"),
    ("pbe (Yeom: l1)", "pbe", {}, "default"),
    ("taylor (Molchanov: loss, per sample, l2)", "taylor", {}, "default"),
    ("taylor, mean", "taylor", {}, "mean"),
    ("taylor, none", "taylor", {}, None),
    ("taylor, objective=logit, l2", "taylor", {"objective": "logit"}, "default"),
    ("taylor-mean (logit, l2)", "taylor-mean", {}, "default"),
    ("taylor-mean, mean", "taylor-mean", {}, "mean"),
    ("taylor-mean, none", "taylor-mean", {}, None),
    ("weight (default: mean)", "weight", {}, "default"),
    ("weight, none", "weight", {}, None),
    ("weight, l1", "weight", {}, "l1"),
    ("l2 (default: mean)", "l2", {}, "default"),
    ("l2, none", "l2", {}, None),
    ("gradient (default: mean)", "gradient", {}, "default"),
    ("gradient, none", "gradient", {}, None),
    ("activation (default: mean)", "activation", {}, "default"),
    ("activation, none", "activation", {}, None),
    ("random", "random", {}, "default"),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "fair_demo.json"))
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    record = _meta.meta()
    started = time.perf_counter()
    model, ds = pretrained("vgg", "digits", progress=False)
    rows = []
    for label, name, opts, how in VARIANTS:
        if name not in xprune.criteria.available():
            print(f"skipping {label}: criterion {name!r} is not registered here")
            continue
        val, test, used, at_half = [], [], None, None
        for seed in seeds:
            reference = xdata.reference_samples(ds.train, 10, seed=seed)
            s = xprune.score(model, reference, name, normalize=how,
                             **({"seed": seed} if name == "random" else {}), **opts)
            used = s.meta.get("normalize")
            if at_half is None:  # the first seed's plan at 50%: the fraction of every layer it removes
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DegenerateResult)
                    plan = xprune.select(s, 0.5)
                at_half = {k: round(len(plan.remove.get(k, [])) / s[k].numel(), 3) for k in s}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateResult)
                val.append(evaluate.curve(model, reference, ds.val, name, scores=s).auc)
                test.append(evaluate.curve(model, reference, ds.test, name, scores=s).auc)
        rows.append({"label": label, "criterion": name, "options": opts, "normalize": how, "normalize_used": used,
                     "val_auc": val, "test_auc": test, "removed_at_50pct_seed0": at_half,
                     "val_mean": statistics.fmean(val),
                     "test_mean": statistics.fmean(test)})
        print(f"{label:<44} normalize={used!s:<5} val {rows[-1]['val_mean']:.3f}  test {rows[-1]['test_mean']:.3f}")
    _meta.write_json(args.out, {"model": "builtin vgg on digits (xprune.models.pretrained)", "n_per_class": 10,
                                "seeds": seeds, "rates": list(evaluate.DEFAULT_RATES),
                                "val_size": len(ds.val), "test_size": len(ds.test),
                                "seconds": time.perf_counter() - started, "rows": rows})


if __name__ == "__main__":
    main()
