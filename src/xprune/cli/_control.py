"""The ``correct`` and ``circuit`` commands of the ``xprune`` command line (:mod:`xprune.control`).

Each takes the parsed arguments and returns the exit code, as the commands of :mod:`._commands`.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from ..errors import XpruneError
from ._commands import _console, _listing, _needs_accuracy, _options, _plan_path, _refuse_existing, _save_hf
from ._load import load_source


def _control_source(args, what: str):
    """The model with the train (scored) and test (measured) splits of --behaviour and --general."""
    import argparse

    from ._load import TEXT_SUFFIXES, _data

    outs = [Path(args.out) / f for f in (f"{what}.json", f"{what}.png")]
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise XpruneError(f"--out {args.out} is a file; {what} writes a folder ({what}.json, {what}.png)")
    if not args.overwrite:
        _refuse_existing(
            outs + ([Path(args.out) / "model.pt", Path(args.out) / "model"] if what == "correction" else [])
        )
    opts = _options(args, [args.criterion])
    first = getattr(args, "general", None) or args.behaviour
    source = load_source(argparse.Namespace(**{**vars(args), "data": first}), seed=args.seed)
    _needs_accuracy(source, what)
    if not args.units:
        source.units = "neurons" if what == "correction" and source.units == "heads" else source.units
    sides = [first] if first == args.behaviour else [args.behaviour, first]
    sets = {}
    for spec in sides:
        if spec == first:
            data = source.data
        elif source.hf is not None and Path(spec).suffix.lower() in TEXT_SUFFIXES:
            from ..transformers import hub

            data = hub.text_data(
                spec,
                source.hf.tokenizer,
                task=source.hf.task,
                seed=args.seed,
                **({} if args.max_length is None else {"max_length": args.max_length}),
            )
        else:
            norm = source.hf.normalization if source.hf is not None and args.normalize == "auto" else None
            data = _data(
                argparse.Namespace(**{**vars(args), "data": spec}),
                args.seed,
                normalize=norm,
                image_size=getattr(source.hf, "image_size", None),
            )
        test = data.test if len(data.test) else data.train
        sets[spec] = (data.train, test)
    return source, sets, opts


def correct(args) -> int:
    from ..control import correct as run

    source, sets, opts = _control_source(args, "correction")
    console = _console()
    (bt, bx), (gt, gx) = sets[args.behaviour], sets[args.general]
    res = run(
        source.model,
        bt,
        gt,
        units=source.units,
        criterion=args.criterion,
        combine=args.combine,
        budget=args.budget,
        suppression=args.suppression,
        max_general_change=args.max_general_change,
        behaviour_test=bx,
        general_test=gx,
        **opts.for_criterion(args.criterion),
    )
    console.print(str(res), markup=False)
    out = Path(args.out)
    files = [
        (res.to_json(out / "correction.json"), "the curve and the units removed: json.load(open(path))"),
        (res.plot(out / "correction.png"), "behaviour and general metric vs units removed (an image)"),
    ]
    if source.hf is not None:
        _save_hf(res.model, source, res.plan, out / "model")
        files.append((out / "model", "the corrected model (save_pretrained): xprune.transformers.load_pruned(path)"))
    else:
        from .._io import atomic_write

        buf = io.BytesIO()
        torch.save(res.model, buf)
        atomic_write(out / "model.pt", buf.getvalue())
        res.plan.save(_plan_path(out / "model.pt"))
        files.append((out / "model.pt", "the corrected model (whole module): torch.load(path, weights_only=False)"))
    _listing(console, files)
    return 0


def circuit(args) -> int:
    from ..control import circuit as run

    source, sets, opts = _control_source(args, "circuit")
    train, test = sets[args.behaviour]
    res = run(
        source.model,
        train,
        units=source.units,
        criterion=args.criterion,
        faithfulness=args.faithfulness,
        behaviour_test=test,
        **opts.for_criterion(args.criterion),
    )
    console = _console()
    console.print(str(res), markup=False)
    out = Path(args.out)
    _listing(
        console,
        [
            (res.to_json(out / "circuit.json"), "the circuit's units: json.load(open(path))['units']"),
            (res.plot(out / "circuit.png"), "layer x unit map of the relevance (an image)"),
        ],
    )
    return 0
