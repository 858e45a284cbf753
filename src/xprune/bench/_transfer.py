"""Scenario ``transfer``: the scarce-data CNN transfer task (AUC of accuracy over rates, no fine-tuning)."""

from __future__ import annotations

import statistics
from typing import Any

from .. import evaluate, report
from ._common import Context, _curves, _fmt, _specs, _tuned_lrp


def transfer_task(ctx: Context) -> dict:
    """AUC of accuracy over pruning rates on the few-sample transfer task, per criterion."""
    from ..models import transfer

    arch, source = ("mlp", "digits") if ctx.quick else ("vgg", "fashion-mnist")
    specs = _specs(ctx.quick)
    rates = (0.0, 0.25, 0.5, 0.75) if ctx.quick else evaluate.DEFAULT_RATES
    curves, bases = [], []
    tuning: dict[int, dict] = {}
    extra: dict[str, Any] = {"hidden": (64, 64)} if ctx.quick else {}
    for seed in ctx.seeds:
        model, ds, reference = transfer(arch, source=source, n_per_class=10, seed=seed, progress=False, **extra)
        bases.append(evaluate.accuracy(model, ds.test))
        tuned, tuning[seed] = _tuned_lrp(ctx, "transfer", model, reference, ds.val, rates, seed)
        runs = [("lrp (tuned)", "lrp", tuned)] + [(spec.label, spec.name, spec.kwargs(seed)) for spec in specs]
        curves += _curves(model, reference, ds.test, runs, seed, rates=rates)
        ctx.advance(1)
        ctx.log(f"transfer seed {seed}: adapted accuracy {bases[-1]:.3f}")
    title = f"{arch}: {source} 0-4 -> 5-9, 10 samples/class, no fine-tuning"
    md = (
        f"{title}; AUC of test accuracy over {len(rates)} rates 0..{max(rates):.2f}; seeds {ctx.seeds}; "
        f"adapted (unpruned) accuracy {_fmt(bases)}.\n\n" + report.curves_markdown(curves)
    )
    how = {k: tuning[ctx.seeds[0]][k] for k in ("trials", "sampler", "validation_samples")}
    md += (
        f"\n\n`lrp (tuned)`: the PXP search (`xprune.tune`, {how['trials']} trials, sampler {how['sampler']!r}) "
        f"of an LRP composite per layer group, scored by the AUC on {how['validation_samples']} *validation* "
        "samples of the target task (more labelled data than the 10 reference samples per class the criteria "
        "see; the test split is never used); best validation AUC per seed: "
        + ", ".join(f"{t['val_auc']:.3f} ({t['seconds']:.0f} s)" for t in tuning.values())
        + "."
    )
    payload = {
        "settings": {
            "arch": arch,
            "source": source,
            "n_per_class": 10,
            "rates": list(rates),
            "seeds": ctx.seeds,
            "tuning": how,
        },
        "base": bases,
        "curves": curves,
        "tuning": tuning,
    }
    ctx.write("transfer", payload, md)
    report.plot_curves(curves, ctx.out / "transfer.png", title=title, baseline=statistics.fmean(bases))
    return payload
