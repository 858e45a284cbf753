"""Scenario ``vit``: heads and MLP neurons of xprune's ViT on MNIST in PXP's setting (3-class tasks)."""

from __future__ import annotations

from typing import Any

from .. import evaluate, report
from ._common import _TUNE, Context, Spec, _curves, _tuned_lrp

_VIT_SPECS = [
    Spec("lrp (attnlrp)", "lrp", (("composite", "attnlrp"),)),
    Spec("lrp (cp-lrp)", "lrp", (("composite", "cp-lrp"),)),
    Spec("taylor", "taylor"),
    Spec("gradient", "gradient"),
    Spec("activation", "activation"),
    Spec("weight", "weight"),
    Spec("l2", "l2"),
    Spec("random", "random"),
]


def vit(ctx: Context) -> dict:
    """PXP's ViT setting: heads and MLP neurons of xprune's ViT on MNIST, 3 random classes, no fine-tuning.

    Per seed: 3 classes drawn at random (domain restriction: other logits suppressed), 10
    reference samples per class, nested prunings at every rate, accuracy over the task's
    classes. ``integrated-gradients`` and ``singe`` score channels only, ``steered`` CNNs
    only: they do not apply here. Tuned LRP: the PXP search on validation samples of the task (:data:`_TUNE`).
    """
    import random as _random

    from ..data import RestrictedModel, reference_samples, restrict
    from ..models import pretrained

    model, ds = pretrained("vit", "digits" if ctx.quick else "mnist", seed=0, progress=False)
    model.eval()
    rates = (0.0, 0.25, 0.5, 0.75) if ctx.quick else evaluate.DEFAULT_RATES
    specs = [s for s in _VIT_SPECS if not ctx.quick or s.name in ("lrp", "taylor", "random")]
    curves: dict[str, list] = {"heads": [], "neurons": []}
    settings: dict[str, Any] = {"rates": list(rates), "per_class": 10, "seeds": ctx.seeds, "classes": {}, "tuning": {}}
    for seed in ctx.seeds:
        classes = sorted(_random.Random(seed).sample(range(len(ds.classes)), 3))
        settings["classes"][seed] = classes
        task = RestrictedModel(model, classes).eval()
        ref = reference_samples(restrict(ds.train, classes), 10, seed=seed)
        test = restrict(ds.test, classes)
        val = restrict(ds.val, classes)
        for kind in ("heads", "neurons"):
            tuned, settings["tuning"].setdefault(kind, {})[seed] = _tuned_lrp(
                ctx, "vit", task, ref, val, rates, seed, folder=f"vit-{kind}", units=kind, classes=classes
            )
            runs = [("lrp (tuned)", "lrp", tuned)] + [(sp.label, sp.name, sp.kwargs(seed)) for sp in specs]
            curves[kind] += _curves(task, ref, test, runs, seed, units=kind, rates=rates, classes=classes)
        ctx.advance(1)
        ctx.log(f"vit seed {seed}: classes {classes}")
    md = [
        f"xprune ViT on {'digits' if ctx.quick else 'MNIST'}, 3 random classes per seed "
        f"({', '.join(f'{s}: {c}' for s, c in settings['classes'].items())}), 10 reference samples per class, "
        f"no fine-tuning; AUC of the task accuracy over {len(rates)} rates 0..{max(rates):.2f}.\n"
    ]
    for kind in ("heads", "neurons"):
        md += [f"**{kind}**\n", report.curves_markdown(curves[kind]), ""]
        report.plot_curves(curves[kind], ctx.out / f"vit-{kind}.png", title=f"ViT {kind}, 3-class tasks")
    for kind, per_seed in settings["tuning"].items():
        md.append(
            f"`lrp (tuned)`, {kind}: PXP search (`xprune.tune`) on {_TUNE['vit'][2]} validation samples of "
            "the task; best validation AUC per seed: "
            + ", ".join(f"{t['val_auc']:.3f} ({t['trials']} trials, {t['seconds']:.0f} s)" for t in per_seed.values())
            + ".\n"
        )
    payload = {"settings": settings, "curves": curves}
    ctx.write("vit", payload, "\n".join(md))
    return payload
