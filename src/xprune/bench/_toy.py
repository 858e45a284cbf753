"""Scenario ``toy``: the 2-D MLP study of Pruning by Explaining (circles, moons, blobs; a third of every
hidden layer removed without fine-tuning, from 1..200 reference samples per class)."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .. import evaluate
from ._common import Context, _fmt, _specs

TOY_SETS: dict[str, dict[str, Any]] = {"circles": {}, "moons": {}, "blobs": {"centers": 4, "noise": 2.0}}
TOY_N = (1, 2, 5, 10, 20, 50, 100, 200)
TOY_N_QUICK = (1, 5, 20)


def _toy_steps(quick: bool, seeds: int) -> int:
    return len(TOY_SETS) * seeds


def toy(ctx: Context) -> dict:
    """Accuracy after removing a third of each hidden layer's neurons, vs reference samples per class."""
    import xprune

    from ..data import load, reference_samples
    from ..models import build, train

    hidden = (64, 64, 64) if ctx.quick else (1000, 1000, 1000)
    ns = TOY_N_QUICK if ctx.quick else TOY_N
    # on an MLP the epsilon-plus preset *is* epsilon (they differ on conv layers only): run it once
    specs = [s for s in _specs(ctx.quick) if s.label != "lrp (epsilon)"]
    ratio = 1 / 3
    results: dict[str, Any] = {
        d: {"base": [], "acc": {s.label: {str(n): [] for n in ns} for s in specs}} for d in TOY_SETS
    }
    seconds: dict[str, float] = {s.label: 0.0 for s in specs}
    payload: dict[str, Any] = {}
    for i, seed in enumerate(ctx.seeds):  # seeds outermost: the outputs are rewritten after every seed
        for ds_name, kw in TOY_SETS.items():
            per_ds = results[ds_name]
            ds = load(ds_name, seed=seed, n_samples=600 if ctx.quick else 2000, **kw)
            torch.manual_seed(seed)  # the initialisation
            model = build("mlp", input_shape=ds.input_shape, hidden=hidden, num_classes=ds.num_classes)
            train(model, ds.train, epochs=20 if ctx.quick else 30, lr=1e-3, batch_size=64, seed=seed, progress=False)
            per_ds["base"].append(evaluate.accuracy(model, ds.test))
            for spec in specs:
                cached = None
                for n in ns:
                    if spec.data_free and cached is not None:
                        per_ds["acc"][spec.label][str(n)].append(cached)
                        continue
                    ref = reference_samples(ds.train, n, seed=seed)
                    t0 = time.process_time()
                    scores = xprune.score(model, ref, spec.name, **spec.kwargs(seed))
                    seconds[spec.label] += time.process_time() - t0
                    plan = xprune.select(scores, ratio, scope="local")
                    acc = evaluate.accuracy(xprune.apply(model, plan, mode="mask"), ds.test)
                    per_ds["acc"][spec.label][str(n)].append(acc)
                    cached = acc
            ctx.advance(1)
            ctx.log(f"toy {ds_name} seed {seed}: unpruned {per_ds['base'][-1]:.3f}")
        payload = _toy_write(ctx, results, ns, hidden, ratio, ctx.seeds[: i + 1], seconds)
    return payload


def _toy_write(
    ctx: Context,
    results: dict,
    ns: Sequence[int],
    hidden: Sequence[int],
    ratio: float,
    seeds: list[int],
    seconds: dict[str, float],
) -> dict:
    payload = {
        "settings": {
            "hidden": list(hidden),
            "ratio": ratio,
            "scope": "local (a third of every hidden layer)",
            "reference_per_class": list(ns),
            "seeds": seeds,
            "data": TOY_SETS,
            "fine_tuning": False,
        },
        "scoring_cpu_seconds": seconds,
        "results": results,
    }
    md = [
        f"MLP 2 -> {' -> '.join(map(str, hidden))} -> classes; a third of every hidden layer's neurons removed "
        f"at once, no fine-tuning; test accuracy (mean ± std over seeds {seeds}) by reference samples per "
        "class. On an MLP the `epsilon-plus` and `epsilon-alpha2-beta1` presets are the epsilon rule everywhere "
        "(they differ from it on conv layers only), hence identical rows.\n"
    ]
    for ds_name, r in results.items():
        md.append(f"**{ds_name}** (unpruned {_fmt(r['base'])})\n")
        md.append("| criterion | " + " | ".join(f"n={n}" for n in ns) + " | mean |")
        md.append("|---|" + "---|" * (len(ns) + 1))
        rows = sorted(r["acc"].items(), key=lambda kv: -statistics.fmean(itertools.chain.from_iterable(kv[1].values())))
        for label, by_n in rows:
            md.append(
                f"| {label} | "
                + " | ".join(_fmt(by_n[str(n)]) for n in ns)
                + f" | {statistics.fmean(itertools.chain.from_iterable(by_n.values())):.3f} |"
            )
        md.append("")
    ctx.write("toy", payload, "\n".join(md))
    _plot_toy(results, ns, ctx.out / "toy.png")
    return payload


def _plot_toy(results: dict, ns: Sequence[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), dpi=110, sharey=True)
    for ax, (ds_name, r) in zip(np.atleast_1d(axes), results.items(), strict=True):
        colours = plt.cm.tab20(np.linspace(0, 1, 20))
        for i, (label, by_n) in enumerate(sorted(r["acc"].items())):
            acc = np.array([by_n[str(n)] for n in ns])
            (line,) = ax.plot(
                ns,
                acc.mean(1),
                marker="o",
                ms=3,
                label=label,
                color=colours[(2 * i) % 20 + (2 * i) // 20],
                ls="-" if label.startswith("lrp") else "--",
            )
            if acc.shape[1] > 1:
                ax.fill_between(
                    ns, acc.mean(1) - acc.std(1), acc.mean(1) + acc.std(1), color=line.get_color(), alpha=0.1
                )
        ax.axhline(statistics.fmean(r["base"]), color="gray", lw=1, ls=":", label="unpruned")
        ax.set_xscale("log")
        ax.set_title(ds_name)
        ax.set_xlabel("reference samples per class")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("test accuracy, 1/3 of neurons removed")
    np.atleast_1d(axes)[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
