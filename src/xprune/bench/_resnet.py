"""Scenario ``resnet``: ResNet on MNIST at 50% fewer MACs with fine-tuning, entwined vs one-shot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .. import evaluate
from ._common import Context, Spec, _fmt, _specs


def resnet(ctx: Context) -> dict:
    """Entwined vs one-shot + fine-tuning vs iterative without, at 50% fewer MACs (ResNet, MNIST).

    Every criterion of the suite runs all three schedules; ``steered`` (Interpretations Steered
    Pruning) learns its gates once on the training split for the MACs target, so it runs one-shot
    (+ fine-tuning, and without for reference) only.
    """
    from .. import schedules
    from ..criteria import get as get_criterion
    from ..data import reference_samples
    from ..models import fine_tune, pretrained
    from ..steered import steer
    from ..surgery import apply

    model, data = pretrained("resnet", "digits" if ctx.quick else "mnist", progress=False)
    base = evaluate.accuracy(model, data.test)
    specs = [s for s in _specs(ctx.quick) if s.label != "lrp (epsilon)"]  # = epsilon-plus without conv z+
    if ctx.quick:
        specs = [s for s in specs if s.label in ("taylor", "random", "lrp (epsilon-plus)")]
    else:
        specs = [Spec(s.label, s.name, (("n_steps", 3),)) if s.name in ("singe", "singe-fast") else s for s in specs]
    budget, steps = (6, 2) if ctx.quick else (60, 3)
    kinds = {"entwined": (steps, budget), "one-shot + FT": (1, budget), "iterative, no FT": (steps, 0)}  # steps, FT
    labels = [s.label for s in specs] + ["steered"]
    results: dict[str, dict[str, list[float]]] = {n: {k: [] for k in kinds} for n in labels}
    for seed in ctx.seeds:
        ref = reference_samples(data.train, 5, seed=seed)

        def tuner(seed):
            calls = [0]

            def tune(m, n):
                fine_tune(m, data.train, steps=n, lr=1e-3, batch_size=32, seed=seed * 1000 + calls[0])
                calls[0] += 1

            return tune

        for spec in specs:
            for kind, (n_steps, ft_budget) in kinds.items():
                # random's own seed option would clash with the schedule's seed: pass it as an object
                crit, opts = (
                    (get_criterion(spec.name, **spec.kwargs(seed)), {})
                    if spec.name == "random"
                    else (spec.name, spec.kwargs(seed))
                )
                res = schedules.entwined(
                    model,
                    ref,
                    crit,
                    0.5,
                    by="macs",
                    fine_tune=tuner(seed),
                    seed=seed,
                    steps=n_steps,
                    fine_tune_budget=ft_budget,
                    **opts,
                )
                results[spec.label][kind].append(evaluate.accuracy(res.model, data.test))
            ctx.advance(1)
        fast: dict[str, Any] = {"predictor_steps": 20, "selector_steps": 20, "gate_steps": 20} if ctx.quick else {}
        st = steer(model, data.train, 0.5, seed=seed, progress=False, **fast)
        pruned = apply(model, st.plan(calibrate=True)).eval()
        results["steered"]["iterative, no FT"].append(evaluate.accuracy(pruned, data.test))
        tuner(seed)(pruned, budget)
        pruned.eval()
        results["steered"]["one-shot + FT"].append(evaluate.accuracy(pruned, data.test))
        ctx.advance(1)
        ctx.log(f"resnet seed {seed} done")
    md = [
        f"ResNet on {'digits' if ctx.quick else 'MNIST'}, 50% fewer MACs, fine-tuning budget {budget} steps "
        f"(entwined: {steps} steps), test accuracy (mean ± std over seeds {ctx.seeds}), unpruned {base:.3f}. "
        "`steered` learns its gates once for the MACs target, so it runs one-shot only (its no-FT column is "
        "one-shot without fine-tuning).\n",
        "| criterion | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for label in sorted(labels, key=lambda n: -statistics.fmean(results[n]["one-shot + FT"])):
        md.append(
            f"| {label} | " + " | ".join(_fmt(results[label][k]) if results[label][k] else "—" for k in kinds) + " |"
        )
    payload = {
        "settings": {"budget": budget, "steps": steps, "seeds": ctx.seeds, "per_class": 5},
        "unpruned_accuracy": base,
        "results": results,
    }
    ctx.write("resnet", payload, "\n".join(md))
    _plot_bars(
        results,
        list(kinds),
        ctx.out / "resnet.png",
        title=f"ResNet, 50% fewer MACs (unpruned {base:.3f})",
        ylabel="test accuracy",
    )
    return payload


def _plot_bars(
    results: dict[str, dict[str, list[float]]], groups: list[str], path: Path, *, title: str, ylabel: str
) -> None:
    """Grouped bars: one group per schedule, one bar per criterion (mean, error bar = std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = sorted(results, key=lambda n: -statistics.fmean(results[n][groups[0]] or [0.0]))
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for i, label in enumerate(labels):
        xs, ms, ss = [], [], []
        for j, g in enumerate(groups):
            v = results[label][g]
            if v:
                xs.append(j + (i - (len(labels) - 1) / 2) * width)
                ms.append(statistics.fmean(v))
                ss.append(statistics.stdev(v) if len(v) > 1 else 0.0)
        ax.bar(xs, ms, width, yerr=ss, label=label, color=colours[i % 20], capsize=2)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
