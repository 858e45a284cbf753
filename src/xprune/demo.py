"""The main job on built-in data: compare criteria with few reference samples, then prune.

``xprune demo`` (and ``make demo``) runs :func:`run`:

1. load (or train once and cache) a reference model on a built-in dataset,
   with the inputs normalised as it was trained (the line ``data: ...`` says how);
2. draw ``n_per_class`` reference samples per class from the training split
   (the scarce-data regime of Pruning by Explaining);
3. for every criterion (each at its default per-layer normalisation, see
   :func:`xprune.score`), compute the accuracy-vs-pruning-rate curve
   (relevance computed once, nested prunings, no fine-tuning) and its area
   (PXP's AUC) on the **val** split, for choosing, and on the **test** split,
   for reporting;
4. choose the criterion of best mean val AUC (or the one asked for) and the
   rate: ``ratio="auto"`` (default) takes the largest rate at which the
   chosen criterion's val accuracy is within ``tolerance`` of the unpruned
   model's. The test split plays no part in either choice;
5. prune at that rate with that criterion, physically, and measure test
   accuracy, parameters, MACs and latency before/after (a pruned model at
   chance accuracy is warned about);
6. write ``curves.png``, ``results.json``, ``pruned.pt`` (whole module) and
   ``plan.json`` into the output folder, saying how to open each.
"""

from __future__ import annotations

import contextlib
import copy
import io
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from . import _inputs, criteria as _criteria, evaluate, report
from ._io import atomic_write
from .errors import XpruneError
from .scores import score
from .select import select
from .surgery import apply

#: The files a demo writes into its output folder, and how to open each.
FILES = {
    "curves.png": "accuracy vs pruning rate of every criterion (an image)",
    "results.json": "everything printed above: json.load(open(path))",
    "pruned.pt": "the pruned model: torch.load(path, weights_only=False)",
    "plan.json": "the units removed: xprune.Plan.load(path)",
}


def default_criteria() -> list[str]:
    """Every registered criterion that scores channels (user-registered test criteria excluded)."""
    preferred = ["lrp", "weight", "l2", "gradient", "taylor", "activation", "random"]
    return [c for c in preferred if c in _criteria.available()]


def provenance() -> dict[str, Any]:
    """Where the figures come from: the command, the git commit of the source (None outside a checkout;
    ``dirty`` when tracked files had uncommitted changes), torch's threads, the machine and the UTC date."""
    import os
    import platform
    import shlex
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def git(*args):
        try:
            r = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    dirty = git("status", "--porcelain", "--untracked-files=no")
    cmd = ["xprune", *sys.argv[1:]] if Path(sys.argv[0]).name in ("xprune", "__main__.py") else sys.argv
    return {
        "command": " ".join(shlex.quote(a) for a in cmd),
        "commit": git("rev-parse", "HEAD"),
        "dirty": None if dirty is None else bool(dirty),
        "threads": torch.get_num_threads(),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "system": platform.system(),
        },
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def measure(model: torch.nn.Module, test: Any, example: Any = None, *, accuracy: bool = True) -> dict[str, Any]:
    """Accuracy on ``test``, parameters, MACs and CPU latency at batch sizes 1 and 64.

    ``example`` is a batch of inputs (default: the first 64 of ``test``); a
    tensor batch is repeated up to 64 samples for the second latency.
    ``accuracy=False`` leaves the accuracy out (models without classes).
    """
    if example is None:
        example = next(iter(_inputs.batches(test, 64)))[0]
    out = {"accuracy": evaluate.accuracy(model, test)} if accuracy else {}
    one = _inputs.first_sample(example)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Torch-Pruning's counter prints notes on dict inputs
            out.update(evaluate.count(model, one))
    except Exception:  # noqa: BLE001  (the MAC counter cannot trace every model: parameters are still counted)
        out["params"] = sum(p.numel() for p in model.parameters())
    out["ms_1"] = evaluate.latency(model, one)["ms"]
    big = example
    if isinstance(example, torch.Tensor):
        big = example.repeat((64 // len(example)) + 1, *([1] * (example.dim() - 1)))[:64]
    out["ms_64"] = evaluate.latency(model, big, repeats=15)["ms"]
    return out


def refuse_existing(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse to replace earlier results in ``out`` unless ``overwrite``: one line naming them and the way on."""
    existing = [str(out / n) for n in names if (out / n).exists()]
    if out.exists() and not out.is_dir():
        raise XpruneError(f"--out {out} is a file; the demo writes a folder ({', '.join(names)})")
    if existing and not overwrite:
        raise XpruneError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "pass --overwrite to replace, or choose another --out"
        )


def auto_ratio(val_curve: evaluate.Curve, base: float, tolerance: float) -> float:
    """The largest rate of ``val_curve`` whose accuracy is within ``tolerance`` of ``base`` (0 if none is)."""
    within = [r for r, a in zip(val_curve.rates, val_curve.accuracies, strict=True) if a >= base - tolerance - 1e-12]
    return max(within, default=0.0)


def run(
    *,
    arch: str = "vgg",
    dataset: str = "digits",
    n_per_class: int = 10,
    criteria: Sequence[str] | None = None,
    ratio: float | str = "auto",
    criterion: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    out: str | Path = "xprune-demo",
    rates: Sequence[float] = evaluate.DEFAULT_RATES,
    cache_dir: str | None = None,
    console: Any = None,
    tolerance: float = 0.02,
    normalize: Any = "auto",
    data_root: str | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the demo; returns everything it printed, as a dict (also written to ``results.json``).

    Parameters
    ----------
    arch, dataset : str
        Built-in architecture (``"mlp"``, ``"vgg"``, ``"resnet"``, ``"vit"``) and dataset.
    n_per_class : int
        Reference samples per class.
    criteria : sequence of str, optional
        Criteria compared (default :func:`default_criteria`).
    ratio : float or "auto"
        Fraction of channels removed at the end; ``"auto"``: the largest rate
        of ``rates`` at which the chosen criterion keeps the val accuracy
        within ``tolerance`` of the unpruned model's.
    criterion : str, optional
        Criterion of the final pruning (default: best mean AUC on the val split).
    seeds : sequence of int
        Several reference sets (same model), so the table shows a spread.
    out : str or Path
        Output folder; earlier results there are refused unless ``overwrite``.
    rates : sequence of float
        Rates of the curves.
    normalize : "auto", "mean-std", "none", dict or path
        Input normalisation (see :func:`xprune.data.load`); ``"auto"`` is what
        the built-in models were trained with.
    data_root : str, optional
        Folder of the dataset's files (Fashion-MNIST).
    options : mapping, optional
        Criterion name -> keyword arguments of :func:`xprune.score` for it
        (e.g. ``{"lrp": {"composite": "alpha2-beta1"}}``).
    overwrite : bool
        Replace earlier results in ``out``.
    """
    from rich.console import Console

    from . import checks, data as xdata
    from .models import pretrained

    console = console or Console(
        highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140
    )  # tables unclipped when piped
    out = Path(out)
    refuse_existing(out, list(FILES), overwrite)
    if ratio != "auto" and not (isinstance(ratio, (int, float)) and 0 <= ratio < 1):
        raise XpruneError(f"ratio must be 'auto' or a number in [0, 1), got {ratio!r}")
    started = time.perf_counter()
    criteria = list(criteria or default_criteria())
    unknown = [c for c in criteria if c not in _criteria.available()]
    if unknown:
        raise XpruneError(f"unknown criteria {unknown}; known: {', '.join(_criteria.available())}")
    if criterion is not None and criterion not in _criteria.available():
        raise XpruneError(f"unknown criterion {criterion!r}; known: {', '.join(_criteria.available())}")
    options = {k: dict(v) for k, v in (options or {}).items()}

    console.rule(f"[bold]xprune demo[/]: {arch} on {dataset}, {n_per_class} reference samples per class")
    data_kwargs: dict[str, Any] | None = {"root": data_root} if data_root else None
    model, ds = pretrained(arch, dataset, cache_dir=cache_dir, progress=True, data_kwargs=data_kwargs)
    if normalize != "auto":
        ds = xdata.load(dataset, normalize=normalize, **(data_kwargs or {}))
    console.print(f"data: {ds.describe_normalization(cli=True)}")
    base_acc = evaluate.accuracy(model, ds.test)
    console.print(f"reference model: test accuracy {base_acc:.4f} on {len(ds.test)} test images")
    checks.warn_if_chance(base_acc, len(ds.classes), what="the reference model")

    curves, val_curves = [], []  # test split: reported; val split: what the choices are made on
    scores_by: dict[str, Any] = {}
    references: dict[int, Any] = {}
    val_by: dict[str, evaluate.Curve] = {}
    names = list(dict.fromkeys(criteria + ([criterion] if criterion else [])))
    for seed in seeds:
        reference = references.setdefault(seed, xdata.reference_samples(ds.train, n_per_class, seed=seed))
        for name in names:
            opts = {**options.get(name, {}), **({"seed": seed} if name == "random" else {})}
            s = score(model, reference, name, **opts)
            scores_by.setdefault(name, s)
            if name not in criteria and not (ratio == "auto" and seed == seeds[0]):
                continue
            val = evaluate.curve(model, reference, ds.val, name, scores=s, rates=rates)
            val_by.setdefault(name, val)  # the first seed's, whose scores the final pruning uses
            if name not in criteria:
                continue
            val_curves.append(val)
            curves.append(evaluate.curve(model, reference, ds.test, name, scores=s, rates=rates, progress=True))
            console.print(f"  seed {seed} {name:<11} AUC val {val_curves[-1].auc:.4f}  test {curves[-1].auc:.4f}")
    console.print(
        report.curves_table(
            curves,
            chosen_by=val_curves,
            title=f"Accuracy vs pruning rate, no fine-tuning ({n_per_class} reference samples/class); chosen on "
            f"the val split ({len(ds.val)} images), reported on the test split ({len(ds.test)} images)",
        )
    )
    used = {name: scores_by[name].meta.get("normalize") for name in criteria}
    console.print(
        "per-layer normalisation before the global ranking (each criterion's default, see "
        "xprune.score): " + ", ".join(f"{n} {h or 'none'}" for n, h in used.items()),
        markup=False,
    )
    report.plot_curves(
        curves,
        out / "curves.png",
        baseline=base_acc,
        title=f"{arch} on {dataset}, test split: {n_per_class} ref. samples/class, no fine-tuning",
    )

    val_aucs = {name: sum(c.auc for c in val_curves if c.criterion == name) / len(seeds) for name in criteria}
    aucs = {name: sum(c.auc for c in curves if c.criterion == name) / len(seeds) for name in criteria}
    chosen = criterion or max(val_aucs, key=val_aucs.__getitem__)
    why = "asked for" if criterion else "best val AUC above"
    val_acc = evaluate.accuracy(model, ds.val)
    choice: dict[str, Any] = {"ratio": ratio}
    if ratio == "auto":
        val_curve = val_by[chosen]
        ratio = auto_ratio(val_curve, val_acc, tolerance)
        choice = {
            "ratio": "auto",
            "tolerance": tolerance,
            "split": "val",
            "val_accuracy": val_acc,
            "val_curve": val_curve.to_dict(),
            "chosen_rate": ratio,
        }
        within = (
            f"within {tolerance:.2f} of the unpruned {val_acc:.4f} on the val split ({len(ds.val)} images, "
            "not the test split)"
        )
        if ratio > 0:
            console.print(
                f"\nRate {100 * ratio:.0f}%: the largest rate at which {chosen} keeps the accuracy "
                f"{within} (--ratio auto; give --ratio to choose another)"
            )
        else:
            console.print(
                f"\nRate 0%: {chosen} keeps the accuracy {within} at no rate above 0, so nothing is "
                "removed (give --ratio, or a larger --tolerance)"
            )
    assert not isinstance(ratio, str)  # "auto" was resolved to a rate above
    plan = select(scores_by[chosen], ratio)
    pruned = apply(model, plan) if plan.n_removed else copy.deepcopy(model)
    plan.meta["normalization"] = ds.normalization
    before, after = measure(model, ds.test), measure(pruned, ds.test)
    console.print(
        f"\nPruning {100 * ratio:.0f}% of the channels with [bold]{chosen}[/] ({why}), "
        f"removed physically, no fine-tuning:"
    )
    console.print(report.comparison_table(before, after))
    checks.warn_if_chance(after["accuracy"], len(ds.classes), what="the pruned model", before=before["accuracy"])
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(pruned, buf)
    atomic_write(out / "pruned.pt", buf.getvalue())
    plan.save(out / "plan.json")
    results = {
        "arch": arch,
        "dataset": dataset,
        "n_per_class": n_per_class,
        "seeds": list(seeds),
        "normalization": ds.normalization,
        "base_accuracy": base_acc,
        "curves": [c.to_dict() for c in curves],
        "auc": aucs,
        "val_curves": [c.to_dict() for c in val_curves],
        "val_auc": val_aucs,
        "chosen": chosen,
        "chosen_on": "asked for" if criterion else "val",
        "normalize": {name: scores_by[name].meta.get("normalize") for name in names},
        "ratio": ratio,
        "ratio_choice": choice,
        "options": options,
        "before": before,
        "after": after,
        "seconds": time.perf_counter() - started,
        "provenance": provenance(),
    }
    report.save_json(results, out / "results.json")
    console.print(f"\nwrote {out}/ in {results['seconds']:.0f} s:")
    width = max(map(len, FILES))
    for name, how in FILES.items():
        console.print(f"  {name:<{width}}  {how}", markup=False)
    return results
