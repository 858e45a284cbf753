"""The benchmark suite behind ``xprune bench`` and ``docs/results.md``.

Each named scenario runs one experiment and writes ``<name>.json``,
``<name>.md`` (a markdown table) and plots into an output folder:

``toy``
    The 2-D MLP study of Pruning by Explaining: circles, moons and blobs (4
    classes), an MLP ``2 -> 1000 -> 1000 -> 1000 -> classes``, a third of the
    neurons of every hidden layer removed at once without fine-tuning, from
    1..200 reference samples per class; test accuracy per criterion.
``transfer``
    The scarce-data CNN transfer task (VGG pretrained on Fashion-MNIST 0-4,
    adapted to 5-9 from 10 samples per class; AUC of accuracy over rates
    0..0.95 without fine-tuning).
``resnet``
    ResNet on MNIST at 50% fewer MACs with fine-tuning: entwined vs one-shot
    (:func:`xprune.schedules.entwined`).
``vit``, ``minilm``
    Heads and MLP neurons of transformers; they run ``benchmarks/vit_pxp.py``
    and ``benchmarks/minilm.py`` of a source checkout.
``perf``
    Cost of every criterion relative to a forward+backward pass, against
    zennit (when installed) and Torch-Pruning's ``GroupTaylorImportance``,
    realised latency speed-up against MAC reduction, memory.
``heatmaps``
    LRP heatmaps of a few inputs before and after pruning 50% of the channels.

:func:`run` runs scenarios with a progress display; :func:`results_page`
turns an output folder into the results page.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import evaluate, report
from ._io import atomic_write
from .errors import XpruneError

ROOT = Path(__file__).resolve().parents[2]  # the source checkout (benchmarks/, tests/) when there is one

# --------------------------------------------------------------------------- criteria


@dataclass(frozen=True)
class Spec:
    """A criterion as the suite runs it: a display label, a registry name and options."""

    label: str
    name: str
    options: tuple = ()

    def kwargs(self, seed: int) -> dict[str, Any]:
        kw = dict(self.options)
        if self.name == "random":
            kw["seed"] = seed
        return kw

    @property
    def data_free(self) -> bool:
        return self.name in ("weight", "l2", "random")


def _specs(quick: bool) -> list[Spec]:
    out = [Spec("weight", "weight"), Spec("l2", "l2"), Spec("gradient", "gradient"), Spec("taylor", "taylor"),
           Spec("activation", "activation"), Spec("random", "random"),
           Spec("lrp (epsilon-plus)", "lrp"), Spec("lrp (zplus)", "lrp", (("composite", "zplus"),)),
           Spec("lrp (epsilon)", "lrp", (("composite", "epsilon"),)),
           Spec("integrated-gradients", "integrated-gradients", (("n_steps", 4 if quick else 16),)),
           Spec("singe", "singe", (("n_steps", 3 if quick else 10),))]
    if not quick:
        out.insert(9, Spec("lrp (epsilon-alpha2-beta1)", "lrp", (("composite", "epsilon-alpha2-beta1"),)))
    return out


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _fmt(values: Sequence[float], digits: int = 3) -> str:
    m, s = _mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


class Context:
    """What a scenario gets: output folder, size, seeds and a progress callback."""

    def __init__(self, out: Path, quick: bool, seeds: Sequence[int], advance: Callable[[float], None],
                 log: Callable[[str], None]):
        self.out, self.quick, self.seeds, self.advance, self.log = out, quick, list(seeds), advance, log

    def write(self, name: str, payload: dict, markdown: str) -> None:
        report.save_json(payload, self.out / f"{name}.json")
        atomic_write(self.out / f"{name}.md", markdown.rstrip() + "\n")


# --------------------------------------------------------------------------- (a) toy 2-D MLP study

TOY_SETS = {"circles": {}, "moons": {}, "blobs": {"centers": 4, "noise": 2.0}}
TOY_N = (1, 2, 5, 10, 20, 50, 100, 200)
TOY_N_QUICK = (1, 5, 20)


def _toy_steps(quick: bool, seeds: int) -> int:
    return len(TOY_SETS) * seeds


def toy(ctx: Context) -> dict:
    """Accuracy after removing a third of each hidden layer's neurons, vs reference samples per class."""
    import xprune
    from .data import load, reference_samples
    from .models import build, train

    hidden = (64, 64, 64) if ctx.quick else (1000, 1000, 1000)
    ns = TOY_N_QUICK if ctx.quick else TOY_N
    # on an MLP the epsilon-plus preset *is* epsilon (they differ on conv layers only): run it once
    specs = [s for s in _specs(ctx.quick) if s.label != "lrp (epsilon)"]
    ratio = 1 / 3
    results: dict[str, Any] = {d: {"base": [], "acc": {s.label: {str(n): [] for n in ns} for s in specs}}
                               for d in TOY_SETS}
    seconds: dict[str, float] = {s.label: 0.0 for s in specs}
    payload: dict[str, Any] = {}
    for i, seed in enumerate(ctx.seeds):  # seeds outermost: the outputs are rewritten after every seed
        for ds_name, kw in TOY_SETS.items():
            per_ds = results[ds_name]
            ds = load(ds_name, seed=seed, n_samples=600 if ctx.quick else 2000, **kw)
            torch.manual_seed(seed)  # the initialisation
            model = build("mlp", input_shape=ds.input_shape, hidden=hidden, num_classes=ds.num_classes)
            train(model, ds.train, epochs=20 if ctx.quick else 30, lr=1e-3, batch_size=64, seed=seed,
                  progress=False)
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


def _toy_write(ctx: Context, results: dict, ns: Sequence[int], hidden: Sequence[int], ratio: float,
               seeds: list[int], seconds: dict[str, float]) -> dict:
    payload = {"settings": {"hidden": list(hidden), "ratio": ratio, "scope": "local (a third of every hidden layer)",
                            "reference_per_class": list(ns), "seeds": seeds, "data": TOY_SETS,
                            "fine_tuning": False},
               "scoring_cpu_seconds": seconds, "results": results}
    md = [f"MLP 2 -> {' -> '.join(map(str, hidden))} -> classes; a third of every hidden layer's neurons removed "
          f"at once, no fine-tuning; test accuracy (mean ± std over seeds {seeds}) by reference samples per "
          "class. On an MLP the `epsilon-plus` and `epsilon-alpha2-beta1` presets are the epsilon rule everywhere (they differ from it on conv layers only), hence identical rows.\n"]
    for ds_name, r in results.items():
        md.append(f"**{ds_name}** (unpruned {_fmt(r['base'])})\n")
        md.append("| criterion | " + " | ".join(f"n={n}" for n in ns) + " | mean |")
        md.append("|---|" + "---|" * (len(ns) + 1))
        rows = sorted(r["acc"].items(), key=lambda kv: -statistics.fmean(sum(kv[1].values(), [])))
        for label, by_n in rows:
            md.append(f"| {label} | " + " | ".join(_fmt(by_n[str(n)]) for n in ns)
                      + f" | {statistics.fmean(sum(by_n.values(), [])):.3f} |")
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
    for ax, (ds_name, r) in zip(np.atleast_1d(axes), results.items()):
        colours = plt.cm.tab20(np.linspace(0, 1, 20))
        for i, (label, by_n) in enumerate(sorted(r["acc"].items())):
            acc = np.array([by_n[str(n)] for n in ns])
            line, = ax.plot(ns, acc.mean(1), marker="o", ms=3, label=label, color=colours[(2 * i) % 20 + (2 * i) // 20],
                            ls="-" if label.startswith("lrp") else "--")
            if acc.shape[1] > 1:
                ax.fill_between(ns, acc.mean(1) - acc.std(1), acc.mean(1) + acc.std(1), color=line.get_color(),
                                alpha=0.1)
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


# --------------------------------------------------------------------------- (b) CNN transfer


def transfer_task(ctx: Context) -> dict:
    """AUC of accuracy over pruning rates on the few-sample transfer task, per criterion."""
    from .models import transfer

    arch, source = ("mlp", "digits") if ctx.quick else ("vgg", "fashion-mnist")
    specs = _specs(ctx.quick)
    rates = (0.0, 0.25, 0.5, 0.75) if ctx.quick else evaluate.DEFAULT_RATES
    curves, bases = [], []
    tuning: dict[int, dict] = {}
    for seed in ctx.seeds:
        model, ds, reference = transfer(arch, source=source, n_per_class=10, seed=seed, progress=False,
                                        **({"hidden": (64, 64)} if ctx.quick else {}))
        bases.append(evaluate.accuracy(model, ds.test))
        tuned, tuning[seed] = _tuned_lrp(ctx, "transfer", model, reference, ds.val, rates, seed)
        runs = [("lrp (tuned)", "lrp", tuned)] + [(spec.label, spec.name, spec.kwargs(seed)) for spec in specs]
        curves += _curves(model, reference, ds.test, runs, seed, rates=rates)
        ctx.advance(1)
        ctx.log(f"transfer seed {seed}: adapted accuracy {bases[-1]:.3f}")
    title = f"{arch}: {source} 0-4 -> 5-9, 10 samples/class, no fine-tuning"
    md = (f"{title}; AUC of test accuracy over {len(rates)} rates 0..{max(rates):.2f}; seeds {ctx.seeds}; "
          f"adapted (unpruned) accuracy {_fmt(bases)}.\n\n" + report.curves_markdown(curves))
    how = {k: tuning[ctx.seeds[0]][k] for k in ("trials", "sampler", "validation_samples")}
    md += (f"\n\n`lrp (tuned)`: the PXP search (`xprune.tune`, {how['trials']} trials, sampler {how['sampler']!r}) "
           f"of an LRP composite per layer group, scored by the AUC on {how['validation_samples']} *validation* "
           "samples of the target task (more labelled data than the 10 reference samples per class the criteria "
           "see; the test split is never used); best validation AUC per seed: "
           + ", ".join(f"{t['val_auc']:.3f} ({t['seconds']:.0f} s)" for t in tuning.values()) + ".")
    payload = {"settings": {"arch": arch, "source": source, "n_per_class": 10, "rates": list(rates),
                            "seeds": ctx.seeds, "tuning": how},
               "base": bases, "curves": curves, "tuning": tuning}
    ctx.write("transfer", payload, md)
    report.plot_curves(curves, ctx.out / "transfer.png", title=title, baseline=statistics.fmean(bases))
    return payload


#: the PXP search inside the suite: scenario -> ((trials, sampler) full, (trials, sampler) quick, validation samples)
_TUNE = {"transfer": ((15, "gp"), (3, "random"), 600),  # as benchmarks/pxp_tune.py
         "vit": ((10, "gp"), (3, "random"), 300)}


def _tuned_lrp(ctx: Context, scenario: str, model: nn.Module, reference: Any, val: Any, rates: Sequence[float],
               seed: int, *, folder: str | None = None, **tune_options: Any) -> tuple[dict, dict]:
    """PXP: tune an LRP composite on ``val`` (a seeded subset); ``(score options, summary)``.

    The study is kept in ``out/tune/<folder or scenario>-seed<seed>``.
    """
    from .tune import tune

    full, quick, n_val = _TUNE[scenario]
    trials, sampler = quick if ctx.quick else full
    idx = torch.randperm(len(val.X), generator=torch.Generator().manual_seed(seed))[:n_val]
    t0 = time.perf_counter()
    # the study lives in the output folder: an interrupted suite resumes it instead of starting again
    res = tune(model, reference, (val.X[idx], val.y[idx]), trials=trials, sampler=sampler, seed=seed, rates=rates,
               out=ctx.out / "tune" / f"{folder or scenario}-seed{seed}", progress=False, **tune_options)
    summary = {"trials": trials, "sampler": sampler, "validation_samples": n_val, "val_auc": res.best_value,
               "params": res.best_params, "counts": res.counts, "seconds": time.perf_counter() - t0,
               "composite": os.path.relpath(res.composite, ctx.out)}
    return dict(res.options), summary


def _curves(model: nn.Module, reference: Any, test: Any, runs: Sequence[tuple[str, str, dict]], seed: int,
            **curve_options: Any) -> list:
    """One accuracy-vs-rate curve per ``(label, criterion, options)`` run, labelled and tagged with the seed."""
    out = []
    for label, name, kwargs in runs:
        c = evaluate.curve(model, reference, test, name, **curve_options, **kwargs)
        c.criterion = label
        c.meta["seed"] = seed
        out.append(c)
    return out


# --------------------------------------------------------------------------- (c) ResNet with fine-tuning


def resnet(ctx: Context) -> dict:
    """Entwined vs one-shot + fine-tuning vs iterative without, at 50% fewer MACs (ResNet, MNIST).

    Every criterion of the suite runs all three schedules; ``steered`` (Interpretations Steered
    Pruning) learns its gates once on the training split for the MACs target, so it runs one-shot
    (+ fine-tuning, and without for reference) only.
    """
    from . import schedules
    from .criteria import get as get_criterion
    from .data import reference_samples
    from .models import fine_tune, pretrained
    from .steered import steer
    from .surgery import apply

    model, data = pretrained("resnet", "digits" if ctx.quick else "mnist", progress=False)
    base = evaluate.accuracy(model, data.test)
    specs = [s for s in _specs(ctx.quick) if s.label != "lrp (epsilon)"]  # = epsilon-plus without conv z+
    if ctx.quick:
        specs = [s for s in specs if s.label in ("taylor", "random", "lrp (epsilon-plus)")]
    else:
        specs = [Spec(s.label, s.name, (("n_steps", 3),)) if s.name == "singe" else s for s in specs]
    budget, steps = (6, 2) if ctx.quick else (60, 3)
    kinds = {"entwined": dict(steps=steps, fine_tune_budget=budget),
             "one-shot + FT": dict(steps=1, fine_tune_budget=budget),
             "iterative, no FT": dict(steps=steps, fine_tune_budget=0)}
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
            for kind, kw in kinds.items():
                # random's own seed option would clash with the schedule's seed: pass it as an object
                crit, opts = ((get_criterion(spec.name, **spec.kwargs(seed)), {}) if spec.name == "random"
                              else (spec.name, spec.kwargs(seed)))
                res = schedules.entwined(model, ref, crit, 0.5, by="macs", fine_tune=tuner(seed), seed=seed,
                                         **kw, **opts)
                results[spec.label][kind].append(evaluate.accuracy(res.model, data.test))
            ctx.advance(1)
        st = steer(model, data.train, 0.5, seed=seed, progress=False,
                   **({"predictor_steps": 20, "selector_steps": 20, "gate_steps": 20} if ctx.quick else {}))
        pruned = apply(model, st.plan(calibrate=True)).eval()
        results["steered"]["iterative, no FT"].append(evaluate.accuracy(pruned, data.test))
        tuner(seed)(pruned, budget)
        pruned.eval()
        results["steered"]["one-shot + FT"].append(evaluate.accuracy(pruned, data.test))
        ctx.advance(1)
        ctx.log(f"resnet seed {seed} done")
    md = [f"ResNet on {'digits' if ctx.quick else 'MNIST'}, 50% fewer MACs, fine-tuning budget {budget} steps "
          f"(entwined: {steps} steps), test accuracy (mean ± std over seeds {ctx.seeds}), unpruned {base:.3f}. "
          "`steered` learns its gates once for the MACs target, so it runs one-shot only (its no-FT column is "
          "one-shot without fine-tuning).\n",
          "| criterion | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for label in sorted(labels, key=lambda n: -statistics.fmean(results[n]["one-shot + FT"])):
        md.append(f"| {label} | " + " | ".join(_fmt(results[label][k]) if results[label][k] else "—"
                                             for k in kinds) + " |")
    payload = {"settings": {"budget": budget, "steps": steps, "seeds": ctx.seeds, "per_class": 5},
               "unpruned_accuracy": base, "results": results}
    ctx.write("resnet", payload, "\n".join(md))
    _plot_bars(results, list(kinds), ctx.out / "resnet.png",
               title=f"ResNet, 50% fewer MACs (unpruned {base:.3f})", ylabel="test accuracy")
    return payload


def _plot_bars(results: dict[str, dict[str, list[float]]], groups: list[str], path: Path, *, title: str,
               ylabel: str) -> None:
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


# --------------------------------------------------------------------------- (d), (e) transformers


def _script(ctx: Context, script: str, stem: str, args: Sequence[str] = ()) -> dict:
    path = ROOT / "benchmarks" / script
    if not path.exists():
        raise XpruneError(f"scenario needs {path} (a source checkout of xprune); it is not there")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(path), "--out", str(ctx.out), *args], capture_output=True, text=True)
    if proc.returncode:
        raise XpruneError(f"{script} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    ctx.advance(1)
    payload = json.loads((ctx.out / f"{stem}.json").read_text())
    payload.setdefault("bench_seconds", time.perf_counter() - t0)
    return payload


_VIT_SPECS = [Spec("lrp (attnlrp)", "lrp", (("composite", "attnlrp"),)),
              Spec("lrp (cp-lrp)", "lrp", (("composite", "cp-lrp"),)),
              Spec("taylor", "taylor"), Spec("gradient", "gradient"), Spec("activation", "activation"),
              Spec("weight", "weight"), Spec("l2", "l2"), Spec("random", "random")]


def vit(ctx: Context) -> dict:
    """PXP's ViT setting: heads and MLP neurons of xprune's ViT on MNIST, 3 random classes, no fine-tuning.

    Per seed: 3 classes drawn at random (domain restriction: other logits suppressed), 10
    reference samples per class, nested prunings at every rate, accuracy over the task's
    classes. ``integrated-gradients`` and ``singe`` score channels only, ``steered`` CNNs
    only: they do not apply here. Tuned LRP: the PXP search on validation samples of the task (:data:`_TUNE`).
    """
    import random as _random

    from . import transformers as _transformers  # noqa: F401  (heads / neurons)
    from .data import RestrictedModel, reference_samples, restrict
    from .models import pretrained

    model, ds = pretrained("vit", "digits" if ctx.quick else "mnist", seed=0, progress=False)
    model.eval()
    rates = (0.0, 0.25, 0.5, 0.75) if ctx.quick else evaluate.DEFAULT_RATES
    specs = [s for s in _VIT_SPECS if not ctx.quick or s.name in ("lrp", "taylor", "random")]
    curves: dict[str, list] = {"heads": [], "neurons": []}
    settings: dict[str, Any] = {"rates": list(rates), "per_class": 10, "seeds": ctx.seeds, "classes": {},
                                "tuning": {}}
    for seed in ctx.seeds:
        classes = sorted(_random.Random(seed).sample(range(len(ds.classes)), 3))
        settings["classes"][seed] = classes
        task = RestrictedModel(model, classes).eval()
        ref = reference_samples(restrict(ds.train, classes), 10, seed=seed)
        test = restrict(ds.test, classes)
        val = restrict(ds.val, classes)
        for kind in ("heads", "neurons"):
            tuned, settings["tuning"].setdefault(kind, {})[seed] = _tuned_lrp(
                ctx, "vit", task, ref, val, rates, seed, folder=f"vit-{kind}", units=kind, classes=classes)
            runs = [("lrp (tuned)", "lrp", tuned)] + [(sp.label, sp.name, sp.kwargs(seed)) for sp in specs]
            curves[kind] += _curves(task, ref, test, runs, seed, units=kind, rates=rates, classes=classes)
        ctx.advance(1)
        ctx.log(f"vit seed {seed}: classes {classes}")
    md = [f"xprune ViT on {'digits' if ctx.quick else 'MNIST'}, 3 random classes per seed "
          f"({', '.join(f'{s}: {c}' for s, c in settings['classes'].items())}), 10 reference samples per class, "
          f"no fine-tuning; AUC of the task accuracy over {len(rates)} rates 0..{max(rates):.2f}.\n"]
    for kind in ("heads", "neurons"):
        md += [f"**{kind}**\n", report.curves_markdown(curves[kind]), ""]
        report.plot_curves(curves[kind], ctx.out / f"vit-{kind}.png", title=f"ViT {kind}, 3-class tasks")
    for kind, per_seed in settings["tuning"].items():
        md.append(f"`lrp (tuned)`, {kind}: PXP search (`xprune.tune`) on {_TUNE['vit'][2]} validation samples of "
                  "the task; best validation AUC per seed: " + ", ".join(
                      f"{t['val_auc']:.3f} ({t['trials']} trials, {t['seconds']:.0f} s)" for t in per_seed.values())
                  + ".\n")
    payload = {"settings": settings, "curves": curves}
    ctx.write("vit", payload, "\n".join(md))
    return payload


def minilm(ctx: Context) -> dict:
    """all-MiniLM-L6-v2 heads and neurons (runs ``benchmarks/minilm.py``)."""
    return _script(ctx, "minilm.py", "minilm")


# --------------------------------------------------------------------------- performance


def _fwd_bwd(model: nn.Module, batches) -> None:
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.gather(1, y[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def _tp_taylor(model: nn.Module, batches, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch-Pruning's GroupTaylorImportance of every conv/linear out-channel group (output layer excluded)."""
    import torch_pruning as tp

    from .models.train import output_layer

    head = output_layer(model)[2]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    imp = tp.importance.GroupTaylorImportance()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for group in dg.get_all_groups(ignored_layers=[head], root_module_types=(nn.Conv2d, nn.Linear)):
        out[names[group[0].dep.target.module]] = imp(group).detach()
    model.zero_grad(set_to_none=True)
    return out


def _zennit_cost(model, batches, layers, repeats) -> dict | None:
    tests = ROOT / "tests"
    if not (tests / "_zennit_oracle.py").exists():
        return None
    sys.path.insert(0, str(tests))
    try:
        import _zennit_oracle as zo  # installs the torchvision stub zennit needs
    except Exception:  # noqa: BLE001 - zennit (test-only) may be missing; pytest.skip raises a BaseException too
        return None
    except BaseException:  # pytest's Skipped when zennit is not installed
        return None
    finally:
        sys.path.remove(str(tests))
    from . import lrp

    twin = zo.zennit_model(model)
    comp = lrp.composite("epsilon-plus")

    def ours():
        for x, y in batches:
            lrp.relevance(model, x, y, comp, layers)

    def theirs():
        for x, y in batches:
            zo.zennit_relevance_twin(twin, x, y, zo.preset("epsilon-plus"), layers)

    t_ours, t_z = _median_time(ours, repeats), _median_time(theirs, repeats)
    return {"composite": "epsilon-plus", "xprune_s": t_ours, "zennit_s": t_z, "zennit_over_xprune": t_z / t_ours}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def perf(ctx: Context) -> dict:
    """Criterion cost vs forward+backward, vs zennit and Torch-Pruning; speed-up vs MACs; memory."""
    import xprune
    from .data import reference_samples
    from .models import build, pretrained

    if ctx.quick:  # timings need no trained weights: skip training the reference model on a clean machine
        from .data import load

        ds = load("digits", seed=ctx.seeds[0])
        torch.manual_seed(ctx.seeds[0])
        model = build("vgg", input_shape=ds.input_shape, num_classes=ds.num_classes)
    else:
        model, ds = pretrained("vgg", "digits", progress=False)
    model.eval()
    ref = reference_samples(ds.train, 2 if ctx.quick else 13, seed=ctx.seeds[0])  # 20 / 130 samples
    batches = list(ref.batches(64))
    repeats = 1 if ctx.quick else 5
    base = _median_time(lambda: _fwd_bwd(model, batches), repeats)
    costs = {}
    for spec in _specs(ctx.quick) + [Spec("torch-pruning GroupTaylor", "tp-taylor")]:
        if spec.name == "tp-taylor":
            t = _median_time(lambda: _tp_taylor(model, batches, ref.X[:1]), repeats)
        else:
            t = _median_time(lambda: xprune.score(model, ref, spec.name, **spec.kwargs(0)), repeats)
        costs[spec.label] = {"seconds": t, "relative": t / base}
    ctx.advance(1)
    # agreement of xprune's taylor with torch-pruning's on the same model and data
    ours = xprune.score(model, ref, "taylor", normalize=None, objective="loss")
    theirs = _tp_taylor(model, batches, ref.X[:1])
    agreement = {k: _spearman(ours[k].float(), theirs[k].float()) for k in ours if k in theirs
                 and ours[k].numel() == theirs[k].numel()}
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zennit = _zennit_cost(model, batches, layers, repeats)
    ctx.advance(1)
    # realised speed-up vs MAC reduction
    speed = []
    size, widths = (16, (8, 16, 32)) if ctx.quick else (28, (32, 64, 128))
    for arch in ("vgg", "resnet"):
        net = build(arch, input_shape=(1, size, size), num_classes=10, widths=widths).eval()
        x1 = torch.randn(1, 1, size, size)
        sc = xprune.score(net, None, "l2", example_inputs=x1)
        macs0 = evaluate.count(net, x1)["macs"]
        for rate in ((0.5,) if ctx.quick else (0.25, 0.5, 0.75)):
            small = xprune.apply(net, xprune.select(sc, rate, scope="local"))
            macs1 = evaluate.count(small, x1)["macs"]
            for batch in ((1,) if ctx.quick else (1, 64)):
                x = torch.randn(batch, 1, size, size)
                r = 5 if ctx.quick else 30
                t0 = sorted(evaluate.latency(net, x, repeats=r)["ms"] for _ in range(3))[1]
                t1 = sorted(evaluate.latency(small, x, repeats=r)["ms"] for _ in range(3))[1]
                speed.append({"model": arch, "rate": rate, "batch": batch, "mac_reduction": macs0 / macs1,
                              "speedup": t0 / t1, "ratio": (t0 / t1) / (macs0 / macs1)})
    ctx.advance(1)
    scale = ROOT / "benchmarks" / "results" / "scale.json"
    memory = json.loads(scale.read_text()).get("memory") if scale.exists() else None
    payload = {"settings": {"model": "vgg (digits reference)", "samples": len(ref), "repeats": repeats,
                            "clock": "process CPU time", "threads": torch.get_num_threads()},
               "forward_backward_s": base, "costs": costs, "taylor_agreement_spearman": agreement,
               "zennit": zennit, "speedup": speed, "memory": memory}
    md = [f"Cost of scoring {len(ref)} samples with the VGG reference model on digits, relative to one forward + "
          f"backward pass over the same samples ({base * 1000:.1f} ms CPU time, median of {repeats}, "
          f"{torch.get_num_threads()} threads).\n", "| criterion | CPU s | x fwd+bwd |", "|---|---|---|"]
    for label, c in sorted(costs.items(), key=lambda kv: kv[1]["relative"]):
        md.append(f"| {label} | {c['seconds']:.4f} | {c['relative']:.2f} |")
    if agreement:
        vals = list(agreement.values())
        md.append(f"\nxprune `taylor` vs Torch-Pruning `GroupTaylorImportance`, Spearman rank correlation per layer: "
                  f"min {min(vals):.3f}, mean {statistics.fmean(vals):.3f} over {len(vals)} layers.")
    if zennit:
        md.append(f"\nLRP epsilon-plus relevance at every conv/linear output: xprune {zennit['xprune_s']:.4f} s, "
                  f"zennit 0.5.1 {zennit['zennit_s']:.4f} s (zennit / xprune = {zennit['zennit_over_xprune']:.2f}).")
    else:
        md.append("\n(zennit not installed: no zennit comparison in this run.)")
    md += ["\nRealised CPU speed-up of physically removed channels (uniform per layer, random weights) vs MAC "
           f"reduction, {size}x{size} inputs, widths {widths}:\n",
           "| model | removed | batch | MAC reduction | speed-up | speed-up / MAC reduction |", "|---|---|---|---|---|---|"]
    for r in speed:
        md.append(f"| {r['model']} | {r['rate']:.0%} | {r['batch']} | {r['mac_reduction']:.2f}x | {r['speedup']:.2f}x | "
                  f"{r['ratio']:.2f} |")
    if memory:
        md += ["\nPeak memory of scoring (from `benchmarks/scale.py`, resident set size of a fresh process, "
               "streamed batches):\n", "| samples | base MB | peak MB | seconds |", "|---|---|---|---|"]
        for r in memory.get("rows", []):
            md.append(f"| {r['n']} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    ctx.write("perf", payload, "\n".join(md))
    return payload


# --------------------------------------------------------------------------- heatmaps


def _enlarge(image: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Nearest-neighbour upscaling of ``[C, H, W]`` so that tiny (8x8) inputs are visible on the page."""
    k = max(1, size // image.shape[-1])
    return image.repeat_interleave(k, -1).repeat_interleave(k, -2)


def heatmaps(ctx: Context) -> dict:
    """LRP heatmaps of a few test digits for the reference VGG before and after pruning 50% with lrp."""
    import xprune
    from .data import reference_samples
    from .lrp import save_heatmap
    from .models import pretrained

    model, ds = pretrained("vgg", "digits", progress=False)
    ref = reference_samples(ds.train, 10, seed=ctx.seeds[0])
    small = xprune.prune(model, ref, "lrp", 0.5)
    acc = {"before": evaluate.accuracy(model, ds.test), "after": evaluate.accuracy(small, ds.test)}
    folder = ctx.out / "heatmaps"
    folder.mkdir(parents=True, exist_ok=True)
    picks = [int((ds.test.y == c).nonzero()[0]) for c in (0, 3, 5, 8)]
    x, y = ds.test.X[picks], ds.test.y[picks]
    rows = []
    for i, (xi, yi) in enumerate(zip(x, y)):
        entry = {"label": int(yi)}
        for tag, m in (("before", model), ("after", small)):
            r = xprune.explain(m, xi[None], int(yi))
            save_heatmap(_enlarge(r[0]), folder / f"{i}-{tag}.png")
            entry[tag] = r[0]
            entry[f"pred_{tag}"] = int(m.eval()(xi[None]).argmax())
        a, b = entry.pop("before").flatten(), entry.pop("after").flatten()
        entry["pearson"] = round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4)
        save_heatmap(_enlarge(xi), folder / f"{i}-input.png", cmap="gray")
        rows.append(entry)
    ctx.advance(1)
    md = [f"VGG reference on digits, 50% of the channels removed with `lrp` (10 samples per class), no fine-tuning; "
          f"test accuracy {acc['before']:.3f} -> {acc['after']:.3f}.\n",
          "| input | label | before (pred) | after (pred) | Pearson |", "|---|---|---|---|---|"]
    for i, e in enumerate(rows):
        md.append(f"| ![](heatmaps/{i}-input.png) | {e['label']} | ![](heatmaps/{i}-before.png) ({e['pred_before']}) | "
                  f"![](heatmaps/{i}-after.png) ({e['pred_after']}) | {e['pearson']:.4f} |")
    payload = {"accuracy": acc, "inputs": rows}
    ctx.write("heatmaps", payload, "\n".join(md))
    return payload


# --------------------------------------------------------------------------- the runner

#: name -> (function, steps per seed or per run, estimated seconds (quick, full per seed), per-seed?)
SCENARIOS: dict[str, tuple[Callable[[Context], dict], Callable[[bool, int], int], tuple[float, float], bool]] = {
    "toy": (toy, _toy_steps, (4, 320), True),
    "transfer": (transfer_task, lambda q, s: s, (6, 120), True),
    "resnet": (resnet, lambda q, s: s * (4 if q else 11), (30, 480), True),
    "vit": (vit, lambda q, s: s, (25, 90), True),
    "minilm": (minilm, lambda q, s: 1, (400, 400), False),
    "perf": (perf, lambda q, s: 3, (6, 120), False),
    "heatmaps": (heatmaps, lambda q, s: 1, (3, 5), False),
}
QUICK = ("toy", "transfer", "perf", "heatmaps")


def estimate(name: str, quick: bool, seeds: int) -> float:
    """Rough seconds a scenario takes on 2 CPU cores (pretrained models cached)."""
    _, _, (q, full), per_seed = SCENARIOS[name]
    return (q if quick else full) * (seeds if per_seed else 1)


def run(scenarios: Sequence[str] | None = None, *, out: str | os.PathLike = "docs/bench", quick: bool = False,
        seeds: Sequence[int] | None = None, page: str | os.PathLike | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Run benchmark scenarios and write their outputs.

    Parameters
    ----------
    scenarios : sequence of str, optional
        Names from :data:`SCENARIOS`; default all (``--quick``: :data:`QUICK`).
    out : path-like, default "docs/bench"
        Output folder (created); each scenario writes ``NAME.json``, ``NAME.md``
        and plots, and ``summary.json`` records what ran and how long it took.
    quick : bool, default False
        Tiny sizes and one seed: a smoke test that finishes in about a minute.
    seeds : sequence of int, optional
        Default ``[0]`` with ``quick``, else ``[0, 1, 2]``.
    page : path-like, optional
        Also write the results page (:func:`results_page`) there.
    progress : bool, default True
        Show a rich progress bar with the total time estimate.

    Returns
    -------
    dict
        Scenario name -> its payload (what its JSON holds).

    Raises
    ------
    XpruneError
        An unknown scenario name.
    """
    names = list(scenarios or (QUICK if quick else SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise XpruneError(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    seeds = list(seeds) if seeds else ([0] if quick else [0, 1, 2])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True, quiet=not progress)
    total_est = sum(estimate(n, quick, len(seeds)) for n in names)
    console.print(f"xprune bench: {', '.join(names)}; seeds {seeds}; {'quick' if quick else 'full'}; "
                  f"estimated {total_est / 60:.1f} min on 2 CPU cores -> {out}")
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.setdefault("scenarios", {})
    results = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress) as bar:
        for name in names:
            fn, steps, _, _ = SCENARIOS[name]
            task = bar.add_task(f"{name} (~{estimate(name, quick, len(seeds)):.0f} s)", total=steps(quick, len(seeds)))
            ctx = Context(out, quick, seeds, lambda k, task=task: bar.advance(task, k), bar.console.log)
            t0 = time.perf_counter()
            results[name] = fn(ctx)
            seconds = time.perf_counter() - t0
            if summary_path.exists():  # another `xprune bench` may have written to the same folder meanwhile
                summary = json.loads(summary_path.read_text())
                summary.setdefault("scenarios", {})
            summary["scenarios"][name] = {"seconds": seconds, "quick": quick, "seeds": seeds,
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "command": "xprune bench " + " ".join(names) + (" --quick" if quick else "")
                                          + f" --seeds {','.join(map(str, seeds))} --out {out}",
                                          "threads": torch.get_num_threads(), "commit": _commit()}
            atomic_write(summary_path, json.dumps(summary, indent=1))
            bar.update(task, completed=steps(quick, len(seeds)))
    if page is not None:
        results_page(out, page)
    return results


def _commit() -> str | None:
    """The source checkout's git commit (short hash, ``+`` if it has uncommitted changes), if there is one."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- the results page


def _include(md_file: Path, rel: str) -> str:
    """A markdown file's text with its relative image links made relative to the page."""
    import re

    text = md_file.read_text().strip()
    return re.sub(r"\]\((?!https?://|/)([^)]+)\)", lambda m: f"]({rel}/{m.group(1)})", text)


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if p.exists()), None)


def _auc_ranking(curves: Sequence[dict]) -> tuple[dict[str, list[float]], list[str]]:
    """Per-seed AUCs by criterion of saved curves, and the criteria from best to worst mean AUC."""
    by: dict[str, list[float]] = {}
    for c in curves:
        by.setdefault(c["criterion"], []).append(statistics.fmean(c["accuracies"]))
    return by, sorted(by, key=lambda k: -statistics.fmean(by[k]))


def _guide(out: Path, existing: Path) -> list[str]:
    """Bullet points of "which criterion" derived from the numbers in ``out`` (and the stored results)."""
    lines = []
    toy_json = out / "toy.json"
    if toy_json.exists():
        toy_ = json.loads(toy_json.read_text())
        ns = toy_["settings"]["reference_per_class"]
        few, many = [str(n) for n in ns if n <= 5], [str(n) for n in ns if n >= 50] or [str(ns[-1])]
        for ds, r in toy_["results"].items():
            def best(keys, r=r):
                ranked = sorted(r["acc"], key=lambda lab: -statistics.fmean(sum((r["acc"][lab][k] for k in keys), [])))
                top = ranked[0]
                return top, statistics.fmean(sum((r["acc"][top][k] for k in keys), []))
            (b1, a1), (b2, a2) = best(few), best(many)
            rnd = statistics.fmean(sum(r["acc"]["random"].values(), []))
            informed = {lab: v for lab, v in r["acc"].items() if lab not in ("random", "weight", "l2")}
            (c1, d1), (c2, d2) = best(few, {"acc": informed}), best(many, {"acc": informed})
            lines.append(f"- Toy MLP, {ds} (unpruned {statistics.fmean(r['base']):.3f}): with <= 5 samples per class "
                         f"the best is **{b1}** ({a1:.3f}), the best that uses data {c1} ({d1:.3f}); with >= "
                         f"{many[0]} the best is **{b2}** ({a2:.3f}), the best that uses data {c2} ({d2:.3f}); random "
                         f"removal keeps {rnd:.3f}.")
    tr = out / "transfer.json"
    if tr.exists():
        by, ranked = _auc_ranking(json.loads(tr.read_text())["curves"])
        lines.append("- CNN transfer, 10 samples per class, no fine-tuning: AUC ranking "
                     + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:4]) + f"; last: {ranked[-1]} "
                     f"{statistics.fmean(by[ranked[-1]]):.3f}.")
    res = _first(out / "resnet.json", existing / "entwined.json")
    if res is not None:
        r = json.loads(res.read_text())["results"]
        if r and isinstance(next(iter(r.values())), dict):  # bench format: criterion -> schedule -> [acc]
            acc = {c: {k: statistics.fmean(v) for k, v in s.items() if v} for c, s in r.items()}
        else:  # benchmarks/entwined.py format: criterion -> [per seed {schedule: {accuracy}}]
            acc = {c: {k: statistics.fmean(x[k]["accuracy"] for x in runs) for k in runs[0]} for c, runs in r.items()}
        for kind in ("entwined", "one-shot + FT"):
            top = max((c for c in acc if kind in acc[c]), key=lambda c: acc[c][kind])
            src = "" if res.parent == out else f" (stored `{res.name}`)"
            lines.append(f"- ResNet with fine-tuning, 50% fewer MACs, {kind}: **{top}** ({acc[top][kind]:.3f}){src}.")
    vit_json = out / "vit.json"
    if vit_json.exists():
        for kind, cs in json.loads(vit_json.read_text())["curves"].items():
            by, ranked = _auc_ranking(cs)
            lines.append(f"- ViT {kind}, 3-class tasks, no fine-tuning: AUC ranking "
                         + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:3])
                         + f"; random {statistics.fmean(by['random']):.3f}; last: {ranked[-1]} "
                         f"{statistics.fmean(by[ranked[-1]]):.3f}.")
    pf = out / "perf.json"
    if pf.exists():
        costs = json.loads(pf.read_text())["costs"]
        lrp_cost = costs.get("lrp (epsilon-plus)", {}).get("relative")
        dear = max(costs, key=lambda k: costs[k]["relative"])
        lines.append(f"- Cost: lrp (epsilon-plus) {lrp_cost:.2f}x a forward+backward; taylor "
                     f"{costs['taylor']['relative']:.2f}x; the dearest is {dear} ({costs[dear]['relative']:.2f}x).")
    return lines


GUIDE = """\
In short (the bullets above are computed from the suite's output and the stored results; the advice below
draws on all the tables on this page):

- **Few reference samples, no fine-tuning, a CNN** (the Pruning-by-Explaining setting): `lrp`, but choose
  the composite: the epsilon rule, z+ or a composite tuned with `xprune tune` beat `taylor` on the transfer
  task, while the default `epsilon-plus` trails it there. Tuning gained little over the best preset
  (within one seed's spread) and needs a labelled validation split.
- **A very over-parameterised network, a moderate rate**: check `random` first. On the 1000-wide toy MLPs
  no criterion beats removing a third of the neurons at random on circles and moons; the data-driven
  criteria approach it only from about 50-100 samples per class.
- **You will fine-tune anyway**: the criterion matters little. After a one-shot cut of half the ResNet's
  MACs and 60 fine-tuning steps, `steered`, `random`, `taylor` and `lrp` (alpha2-beta1) end within one
  point of each other; `singe` and z+ fall behind one-shot and need the entwined schedule (several small
  steps with fine-tuning between), where `lrp` (epsilon-plus) was best.
- **Transformers**: prune attention heads with `lrp` (AttnLRP or CP-LRP; tuned slightly better): far ahead
  of `taylor`, `gradient`, `weight` and `random` on the ViT and on MiniLM (where `activation` matches it on
  heads). For MLP neurons of the small ViT
  the criteria are within noise; on MiniLM `lrp` (AttnLRP) keeps the embeddings closest. For decoder LLMs
  judged by perplexity, `llm-pruner` and `wanda` were best beyond a quarter of the heads (tiny model).
- **Keep explanations**: after pruning 50% of the digits VGG with `lrp` its heatmaps barely change
  (below); `taylor` kept heatmaps best after fine-tuning in the steered-pruning study.
- **Budget**: `weight`, `l2`, `random` cost less than one forward+backward; `gradient`, `taylor` and `lrp`
  about 1.5-1.8x; `integrated-gradients` and `singe` 15x and more (one pass per path step).
- **No data at all**: `weight`/`l2` are the only options without data and usually among the weakest.
- **Need a guarantee**: `xprune prune --max-drop` certifies the rate on calibration data, whatever the
  criterion; `lrp` got the largest certified rates in the stored runs.
"""


def _guarantee_from_readme(readme: Path) -> str | None:
    if not readme.exists():
        return None
    text = readme.read_text()
    start = text.find("**Prune with a guarantee**")
    if start < 0:
        return None
    end = text.find("\n\n**", start + 10)
    return text[start:end if end > 0 else None].strip()


def results_page(out: str | os.PathLike = "docs/bench", page: str | os.PathLike = "docs/results.md", *,
                 existing: str | os.PathLike | None = None) -> Path:
    """Write the results page from a suite's output folder and the stored benchmark results.

    Parameters
    ----------
    out : path-like, default "docs/bench"
        Output folder of :func:`run` (``summary.json``, ``NAME.md``, plots).
    page : path-like, default "docs/results.md"
        The markdown page to write; links to plots are relative to it.
    existing : path-like, optional
        Folder of results of the standalone scripts (default
        ``benchmarks/results`` of the source checkout): MiniLM, ViT, entwined,
        steered and PXP tuning results are taken from there when the suite did
        not produce them.

    Returns
    -------
    Path
        The page written.
    """
    out, page = Path(out), Path(page)
    existing = Path(existing) if existing is not None else ROOT / "benchmarks" / "results"
    if not out.is_dir():
        raise XpruneError(f"no benchmark output in {out}; run `xprune bench --out {out}` first")
    rel = os.path.relpath(out, page.parent)
    rel_old = os.path.relpath(existing, page.parent)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {"scenarios": {}}
    s = ["# Results", "",
         "Generated by `xprune.bench.results_page` from the output of `xprune bench` (folder "
         f"`{rel}`) and the stored results of the standalone scripts in `{rel_old}`. All runs on this project's "
         "shared 2-core CPU machine; compare criteria within a table, not across tables.", "",
         "## How these numbers were made", "", "| scenario | command | duration | seeds | finished | commit |",
         "|---|---|---|---|---|---|"]
    for name, info in summary["scenarios"].items():
        s.append(f"| {name} | `{info['command']}` | {info['seconds'] / 60:.1f} min | {info['seeds']} "
                 f"| {info['finished']} | {info.get('commit') or '?'} |")
    s += ["", "Criteria: `weight`, `l2`, `gradient`, `taylor`, `activation`, `random`, `lrp` with the composites "
          "named in brackets, `integrated-gradients`, `singe`; tuned LRP (`lrp (tuned)`, the PXP search) in the "
          "transfer and ViT scenarios, `steered` in the ResNet scenario; more in the standalone scripts' "
          "tables below.", ""]
    s += ["## Which criterion should I use?", "", "What the numbers on this page say:", ""] + _guide(out, existing)
    s += ["", GUIDE]

    def section(title: str, intro: str, stem: str, plot: str | None = None, old: str | None = None) -> None:
        nonlocal s
        md, where = _first(out / f"{stem}.md"), rel
        if md is None and old is not None and (existing / f"{old}.md").exists():
            md, where = existing / f"{old}.md", rel_old
        if md is None:
            return
        s += [f"## {title}", ""] + ([intro, ""] if intro else []) + [_include(md, where), ""]
        if plot:
            png = _first(Path(md.parent) / plot)
            if png is not None:
                s += [f"![{title}]({where}/{plot})", ""]

    section("Toy 2-D MLP: accuracy vs number of reference samples",
            "A third of the neurons of every hidden layer removed at once, no fine-tuning (PXP's toy study).",
            "toy", "toy.png")
    section("CNN transfer with scarce data", "Pruning by Explaining's transfer setting, no fine-tuning.",
            "transfer", "transfer.png")
    if (existing / "pxp_tune_cnn.md").exists():
        s += ["### Tuned LRP composites (PXP)", "",
              "From `python benchmarks/pxp_tune.py` (same transfer task, 15 GP trials on the validation split):", "",
              _include(existing / "pxp_tune_cnn.md", rel_old), ""]
    section("ResNet with fine-tuning: entwined vs one-shot", "", "resnet", "resnet.png")
    if not (out / "resnet.md").exists() and (existing / "entwined.json").exists():
        e = json.loads((existing / "entwined.json").read_text())
        kinds = ["entwined", "one-shot + FT", "iterative, no FT"]
        s += ["## ResNet with fine-tuning: entwined vs one-shot", "",
              f"From `python benchmarks/entwined.py` (ResNet on MNIST, 50% fewer MACs, budget "
              f"{e['settings']['budget']} steps, seeds {e['settings']['seeds']}; unpruned "
              f"{e['unpruned_accuracy']:.3f}); test accuracy:", "",
              "| criterion | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for c, runs in e["results"].items():
            s.append(f"| {c} | " + " | ".join(_fmt([r[k]["accuracy"] for r in runs]) for k in kinds) + " |")
        s.append("")
    if (existing / "steered.md").exists():
        s += ["### Interpretations Steered Pruning", "", "From `python benchmarks/steered.py`:", "",
              _include(existing / "steered.md", rel_old), ""]
    if (out / "vit.md").exists():
        section("ViT heads and neurons", "xprune's ViT on MNIST, PXP setting, several 3-class tasks.", "vit",
                "vit-heads.png")
        if (out / "vit-neurons.png").exists():
            s += [f"![ViT neurons]({rel}/vit-neurons.png)", ""]
    else:
        section("ViT heads and neurons", "xprune's ViT on MNIST, PXP setting (`benchmarks/vit_pxp.py`).", "vit_pxp",
                "vit_pxp.png", old="vit_pxp")
    section("MiniLM heads and neurons", "The real all-MiniLM-L6-v2 (`benchmarks/minilm.py`).", "minilm",
            "minilm.png", old="minilm")
    if (existing / "llm.md").exists():
        s += ["## Decoder-only language model: heads and neurons by perplexity", "",
              "From `python benchmarks/llm.py` (structured Wanda, LLM-Pruner Taylor and AttnLRP on a tiny "
              "byte-level Llama with grouped-query attention trained on the offline docstring corpus):", "",
              _include(existing / "llm.md", rel_old), ""]
    section("Performance", "", "perf")
    if (out / "perf.json").exists():
        speed = json.loads((out / "perf.json").read_text()).get("speedup", [])
        odd = [r for r in speed if r["ratio"] > 1.2]
        if odd:
            s += [f"Caution: {len(odd)} of {len(speed)} speed-up / MAC-reduction ratios are above 1.2, which removing "
                  "channels cannot produce: the machine was loaded by other jobs while the unpruned model was timed. "
                  "The README's speed-up table, measured on a quieter machine, is the better reference.", ""]
    guarantee = _guarantee_from_readme(ROOT / "README.md")
    if guarantee:
        s += ["## Pruning with a guarantee", "", "From `python benchmarks/guarantee.py` (as in the README):", "",
              guarantee, ""]
    section("Explanations before and after pruning", "", "heatmaps")
    page.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(page, "\n".join(s).rstrip() + "\n")
    return page
