"""The ``tune`` command of the ``xprune`` command line (:func:`xprune.tune`).

It takes the parsed arguments and returns the exit code, as the commands of :mod:`._commands`.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import torch

from ..errors import XpruneError
from ._commands import _console, _listing, _needs_accuracy, _target
from ._load import load_source, reference
from ._options import CriterionOptions


def _next_command(args, composite: Path) -> str:
    """The ``xprune prune`` command that uses the tuned composite on the same model and data."""
    parts = ["xprune", "prune", "--model", args.model]
    if args.weights:
        parts += ["--weights", args.weights]
    parts += ["--data", args.data]
    for flag, value, default in (
        ("--data-root", args.data_root, None),
        ("--normalize", args.normalize, "auto"),
        ("--max-length", args.max_length, None),
        ("--units", args.units, None),
        ("--scope", args.scope, "global"),
        ("--n-per-class", args.n_per_class, 10),
        ("--precision", args.precision, None),
        ("--device", args.device, None),
    ):
        if value is not None and value != default:
            parts += [flag, str(value)]
    if args.image_size is not None:
        size = args.image_size
        parts += ["--image-size", f"{size[0]}x{size[1]}" if isinstance(size, tuple) else str(size)]
    if args.grayscale:
        parts.append("--grayscale")
    for key, value in args.option:
        parts += ["--option", f"{key}={value}"]
    parts += [
        "--composite",
        str(composite),
        "--ratio",
        "0.3",
        "--out",
        "pruned" if args.model.startswith("hf:") else "pruned.pt",
    ]
    return " ".join(shlex.quote(p) for p in parts)


def tune(args) -> int:
    import json

    from .. import distributed
    from .._io import atomic_write
    from ..tune import tune as run_tune

    out = Path(args.out)

    def check_out():  # on rank 0 only in a process group: it alone owns the study and writes
        if out.exists() and not out.is_dir():
            raise XpruneError(f"--out {out} is a file; tune writes a folder (study.db, best_composite.json, ...)")
        held = [out / n for n in ("study.db", "best_composite.json", "summary.json")]
        if args.overwrite:
            if args.storage is None:  # a new study: the old one in OUT/study.db goes
                (out / "study.db").unlink(missing_ok=True)
        elif not args.resume and any(p.exists() for p in held):
            raise XpruneError(
                f"{out} already holds a tuning study or its results; pass --resume to continue the "
                "study (up to --trials finished trials) or --overwrite to start a new one"
            )

    if args.resume and args.overwrite:
        raise XpruneError("give --resume (continue the study) or --overwrite (start a new one), not both")
    fixed = ("aggregate", "normalize")
    opts = CriterionOptions(["lrp"], args.option, None, fixed=fixed)
    baseline = CriterionOptions(["lrp"], [], args.composite) if args.composite else None
    opts.check()
    distributed.run_on_main(check_out, "checking --out")
    source = load_source(args, seed=0)
    _needs_accuracy(source, "tune")
    model = source.model
    say = print if distributed.is_main() else (lambda *a, **k: None)  # in a process group only rank 0 prints
    say(f"data: {source.describe_normalization()}")
    if opts.summary():
        say(opts.summary())
    ref = reference(source, args.n_per_class, args.seed)
    val = source.data.val
    if len(val) == 0:
        raise XpruneError(f"dataset {args.data!r} has no val split to tune on")
    if args.val_size and args.val_size < len(val):
        g = torch.Generator().manual_seed(args.seed)
        val = val.subset(torch.randperm(len(val), generator=g)[: args.val_size])
    space = {}
    if args.rules:
        space["rules"] = args.rules
    if args.aggregate:
        space["aggregate"] = args.aggregate
    if args.score_normalize:
        space["normalize"] = [None if n == "none" else n for n in args.score_normalize]
    result = run_tune(
        model,
        ref,
        val,
        units=source.units,
        space=space or None,
        trials=args.trials,
        sampler=args.sampler,
        storage=args.storage,
        study_name=args.study_name,
        out=args.out,
        seed=args.seed,
        classes=args.classes,
        timeout=args.timeout,
        pruner=None if args.no_pruning else "bound",
        progress=distributed.is_main(),
        scope=args.scope,
        device=args.device,
        precision=args.precision,
        options={**opts.for_criterion("lrp"), **_target(source)},
    )
    say(result)
    extra: dict[str, Any] = {"normalization": source.normalization, "data": args.data, "model": args.model}
    from .. import evaluate

    common = dict(
        units=source.units,
        scope=args.scope,
        classes=args.classes,
        device=args.device,
        precision=args.precision,
        rates=result.curve.rates,
        **_target(source),
    )
    if baseline is not None:
        b = evaluate.curve(
            model, ref, val, "lrp", **{**common, **opts.for_criterion("lrp"), **baseline.for_criterion("lrp")}
        )
        say(
            f"baseline --composite {args.composite}: validation AUC {b.auc:.4f} "
            f"(tuned: {result.best_value:.4f}, {result.best_value - b.auc:+.4f})"
        )
        extra["baseline"] = {"composite": args.composite, "validation_auc": b.auc, "curve": b.to_dict()}
    if args.test:
        c = evaluate.curve(model, ref, source.data.test, "lrp", **{**common, **result.options})
        say(f"test AUC of the tuned composite: {c.auc:.4f}")
        extra["test_auc"] = c.auc
    if not distributed.is_main():
        return 0
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        summary.update(extra)
        atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    how = {
        "composite": "the tuned LRP composite: --composite PATH (prune, curve), or "
        "xprune.score(..., 'lrp', composite=PATH)",
        "summary": "every trial and the settings: json.load(open(path))",
        "history": "validation AUC per trial (an image)",
        "importances": "what mattered (an image)",
    }
    files = [(Path(path), how.get(name, "")) for name, path in result.files.items()]
    if args.storage is None and (out / "study.db").exists():
        files.append((out / "study.db", "the optuna study (SQLite): --resume continues it"))
    _listing(_console(), files)
    say(f"use it: {_next_command(args, result.composite)}")
    return 0
