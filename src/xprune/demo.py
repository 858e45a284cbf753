"""The main job on built-in data: compare criteria with few reference samples, then prune.

``xprune demo`` (and ``make demo``) runs :func:`run`:

1. load (or train once and cache) a reference model on a built-in dataset;
2. draw ``n_per_class`` reference samples per class from the training split
   (the scarce-data regime of Pruning by Explaining);
3. for every criterion, compute the accuracy-vs-pruning-rate curve on the
   test split (relevance computed once, nested prunings, no fine-tuning) and
   its area (PXP's AUC);
4. prune at ``ratio`` with the criterion of best AUC (or the one asked for),
   physically, and measure accuracy, parameters, MACs and latency before/after;
5. write ``curves.png``, ``results.json``, ``pruned.pt`` (whole module) and
   ``plan.json`` into the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import criteria as _criteria
from . import evaluate, report
from .errors import XpruneError
from .scores import score
from .select import select
from .surgery import apply


def default_criteria() -> list[str]:
    """Every registered criterion that scores channels (user-registered test criteria excluded)."""
    preferred = ["lrp", "weight", "l2", "gradient", "taylor", "activation", "random"]
    return [c for c in preferred if c in _criteria.available()]


def measure(model: torch.nn.Module, test: Any, example: torch.Tensor) -> dict[str, Any]:
    """Accuracy, parameters, MACs and latency at batch sizes 1 and 64."""
    out = {"accuracy": evaluate.accuracy(model, test)}
    out.update(evaluate.count(model, example[:1]))
    out["ms_1"] = evaluate.latency(model, example[:1])["ms"]
    big = example.repeat((64 // len(example)) + 1, *([1] * (example.dim() - 1)))[:64]
    out["ms_64"] = evaluate.latency(model, big, repeats=15)["ms"]
    return out


def run(
    *,
    arch: str = "vgg",
    dataset: str = "digits",
    n_per_class: int = 10,
    criteria: Sequence[str] | None = None,
    ratio: float = 0.5,
    criterion: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "xprune-demo",
    rates: Sequence[float] = evaluate.DEFAULT_RATES,
    cache_dir: str | None = None,
    console: Any = None,
) -> dict[str, Any]:
    """Run the demo; returns everything it printed, as a dict (also written to ``results.json``).

    ``seeds`` draws several reference sets (same model) so the table shows a spread.
    """
    from rich.console import Console

    from . import data as xdata
    from .models import pretrained

    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    criteria = list(criteria or default_criteria())
    unknown = [c for c in criteria if c not in _criteria.available()]
    if unknown:
        raise XpruneError(f"unknown criteria {unknown}; known: {', '.join(_criteria.available())}")

    console.rule(f"[bold]xprune demo[/]: {arch} on {dataset}, {n_per_class} reference samples per class")
    model, ds = pretrained(arch, dataset, cache_dir=cache_dir, progress=True)
    base_acc = evaluate.accuracy(model, ds.test)
    console.print(f"reference model: test accuracy {base_acc:.4f} on {len(ds.test)} test images")

    curves = []
    scores_by = {}
    for seed in seeds:
        reference = xdata.reference_samples(ds.train, n_per_class, seed=seed)
        for name in criteria:
            options = {"seed": seed} if name == "random" else {}
            s = score(model, reference, name, **options)
            scores_by.setdefault(name, s)
            curves.append(evaluate.curve(model, reference, ds.test, name, scores=s, rates=rates,
                                         progress=True))
            console.print(f"  seed {seed} {name:<11} AUC {curves[-1].auc:.4f}")
    console.print(report.curves_table(curves, title=f"Accuracy vs pruning rate, no fine-tuning "
                                                     f"({n_per_class} reference samples/class)"))
    plot = report.plot_curves(curves, out / "curves.png", baseline=base_acc,
                              title=f"{arch} on {dataset}: {n_per_class} ref. samples/class, no fine-tuning")

    aucs = {name: sum(c.auc for c in curves if c.criterion == name) / len(seeds) for name in criteria}
    chosen = criterion or max(aucs, key=aucs.get)
    plan = select(scores_by[chosen], ratio)
    pruned = apply(model, plan)
    example = ds.test.X[:64]
    before, after = measure(model, ds.test, example), measure(pruned, ds.test, example)
    console.print(f"\nPruning {100 * ratio:.0f}% of the channels with [bold]{chosen}[/] "
                  f"(best AUC above), removed physically, no fine-tuning:")
    console.print(report.comparison_table(before, after))
    torch.save(pruned, out / "pruned.pt.tmp")
    (out / "pruned.pt.tmp").replace(out / "pruned.pt")
    plan.save(out / "plan.json")
    results = {"arch": arch, "dataset": dataset, "n_per_class": n_per_class, "seeds": list(seeds),
               "base_accuracy": base_acc, "curves": [c.to_dict() for c in curves], "auc": aucs,
               "chosen": chosen, "ratio": ratio, "before": before, "after": after,
               "seconds": time.perf_counter() - started}
    report.save_json(results, out / "results.json")
    console.print(f"\nwrote {plot}, {out / 'results.json'}, {out / 'pruned.pt'} and {out / 'plan.json'} "
                  f"in {results['seconds']:.0f} s")
    return results
