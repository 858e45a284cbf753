"""The commands of the ``xprune`` command line: demo, criteria, prune, curve, export, bench.

``tune`` is in :mod:`._tune`, ``correct`` and ``circuit`` in :mod:`._control`.

Each takes the parsed arguments and returns the exit code. Bad input raises
:class:`~xprune.errors.XpruneError` before any work where it can be checked
early (outputs that would be replaced, options no criterion takes, data
options that do not fit the data); :func:`xprune.cli.main` prints it as one line.
Results go to stdout, progress and warnings to stderr.
"""

from __future__ import annotations

import copy
import io
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import XpruneError
from ._load import Source, load_model, load_source, reference
from ._options import SCORE_OPTIONS, CriterionOptions, criterion_class, describe


def _console():
    """The console of the results: stdout, no wrapping of long lines, silent on ranks other than 0."""
    from rich.console import Console

    from ..distributed import is_main

    return Console(
        highlight=False, soft_wrap=True, quiet=not is_main(), width=None if sys.stdout.isatty() else 140
    )  # tables unclipped when piped


def _refuse_existing(paths: Sequence[Path], what: str = "") -> None:
    """Refuse to replace the user's files: name them and say how to go on."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        raise XpruneError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}{what}; "
            "pass --overwrite to replace, or choose another --out"
        )


def _out_file(spec: str, overwrite: bool, *companions: Path) -> Path:
    """The output file ``spec`` (and its companions), checked before any work is done."""
    out = Path(spec)
    if out.is_dir():
        raise XpruneError(f"--out {spec} is a folder; give a file name inside it, e.g. {out / 'pruned.pt'}")
    if not overwrite:
        _refuse_existing([out, *companions])
    return out


def _plan_path(out: Path) -> Path:
    return out.with_suffix(".plan.json")


def _listing(console, files: Sequence[tuple[Path, str]]) -> None:
    """``wrote A and B``, then one line per file saying how to open it."""
    names = [str(p) for p, _ in files]
    console.print(
        "wrote " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]), markup=False
    )
    width = max(len(n) for n in names)
    for name, (_, how) in zip(names, files, strict=True):
        console.print(f"  {name:<{width}}  {how}", markup=False)


def _warn_if_chance(
    accuracy: float, source: Source, *, before: float | None = None, what: str = "the pruned model"
) -> None:
    from .. import checks

    if source.num_classes:
        checks.warn_if_chance(accuracy, source.num_classes, what=what, before=before)


def _options(args, names: Sequence[str], **kwargs) -> CriterionOptions:
    opts = CriterionOptions(names, args.option, args.composite, **kwargs)
    opts.check()
    return opts


def _target(source: Source) -> dict[str, Any]:
    """``target=`` for scoring, when it is not the default (the label)."""
    return {} if source.target == "label" else {"target": source.target}


def _needs_accuracy(source: Source, command: str) -> None:
    if source.target == "embedding":
        raise XpruneError(
            f"{command} measures accuracy, which an embedding model (no classes) does not have; "
            "prune it with 'xprune prune' (it reports parameters, MACs and latency)"
        )


def _say_setup(console, source: Source, opts: CriterionOptions | None) -> None:
    console.print(f"data: {source.describe_normalization()}", markup=False)
    line = opts.summary() if opts is not None else None
    if line:
        console.print(line, markup=False)


# ----------------------------------------------------------------------------- demo, criteria


def demo(args) -> int:
    from .. import demo as _demo

    names = [c.strip() for c in args.criteria.split(",") if c.strip()] if args.criteria else _demo.default_criteria()
    chosen = [args.criterion] if args.criterion else []
    opts = _options(args, list(dict.fromkeys(names + chosen)))
    _demo.run(
        arch=args.arch,
        dataset=args.data,
        n_per_class=args.n_per_class,
        criteria=names,
        ratio=args.ratio,
        criterion=args.criterion,
        seeds=args.seeds,
        out=args.out,
        console=_console(),
        tolerance=args.tolerance,
        normalize=args.normalize,
        data_root=args.data_root,
        options={n: opts.for_criterion(n) for n in opts.criteria},
        overwrite=args.overwrite,
    )
    return 0


def criteria(args) -> int:
    from .. import criteria as _criteria

    names = _criteria.available()
    width = max(map(len, names))
    for name in names:
        cls = criterion_class(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<{width}}  {doc}")
        print(
            f"{'':<{width}}  options: {describe(cls)}; default per-layer normalisation: "
            f"{getattr(cls, 'default_normalize', None) or 'none'}"
        )
    print(
        f"\nPass options as --option KEY=VALUE (repeatable; e.g. --option aggregate=yeom); every criterion also "
        f"takes normalize={'|'.join(SCORE_OPTIONS['normalize'])} (per-layer normalisation of the scores). "
        "--composite NAME|FILE sets lrp's rules (a preset or a file written by 'xprune tune')."
    )
    return 0


# ----------------------------------------------------------------------------- prune


def _check_prune_flags(args) -> None:
    guaranteed = args.max_drop is not None
    if args.ratio is None and not guaranteed:
        raise XpruneError("give --ratio, or --max-drop (with --confidence) to choose the largest safe ratio")
    if args.ratio is not None and guaranteed:
        raise XpruneError("give either --ratio or --max-drop, not both: --max-drop chooses the ratio")
    if args.confidence is not None and not guaranteed:
        raise XpruneError("--confidence goes with --max-drop")
    if guaranteed and args.by != "units":
        raise XpruneError(f"--max-drop certifies a fraction of the units; it cannot be combined with --by {args.by}")


def _hf_out(spec: str, overwrite: bool) -> Path:
    out = Path(spec)
    if out.suffix in (".pt", ".pth", ".safetensors", ".bin") or (out.exists() and not out.is_dir()):
        raise XpruneError(
            f"--out {spec}: an hf: model is saved as a folder (save_pretrained); give a folder name, "
            f"e.g. {out.with_suffix('')}-pruned"
        )
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise XpruneError(f"{out} holds files that are not a saved model; choose a new or empty folder for --out")
        if not overwrite:
            raise XpruneError(
                f"{out} already holds a saved model; pass --overwrite to replace it, or choose another --out"
            )
    return out


def _save_hf(pruned, source: Source, plan, out: Path) -> None:
    """Write the pruned model's folder next to ``out``, then put it in place (never a half-written ``out``)."""
    from ..transformers import hub

    staging = out.with_name(f".{out.name}.xprune-tmp")
    old = out.with_name(f".{out.name}.xprune-old")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        hub.save(pruned, staging, tokenizer=source.hf.tokenizer)
        processor = Path(source.hf.path) / "preprocessor_config.json"
        if processor.is_file():  # the image processor's settings travel with the model
            shutil.copyfile(processor, staging / processor.name)
        plan.save(staging / "plan.json")
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        try:
            staging.rename(out)
        except BaseException:
            if old.exists():
                old.rename(out)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def prune(args) -> int:
    from .. import demo as _demo, distributed, report
    from .._io import atomic_write
    from ..pipeline import default_mode
    from ..scores import score
    from ..select import select
    from ..surgery import apply

    console = _console()
    _check_prune_flags(args)
    hf = args.model.startswith("hf:")
    out = _hf_out(args.out, args.overwrite) if hf else _out_file(args.out, args.overwrite, _plan_path(Path(args.out)))
    opts = _options(args, [args.criterion])
    source = load_source(args, seed=args.seed)
    model = source.model
    _say_setup(console, source, opts)
    ref = reference(source, args.n_per_class, args.seed)
    options = opts.for_criterion(args.criterion)
    if args.criterion == "random":
        options["seed"] = args.seed
    scores = score(
        model,
        ref,
        args.criterion,
        source.units,
        target=source.target,
        progress=True,
        device=args.device,
        precision=args.precision,
        **options,
    )
    ratio, choice = args.ratio, None
    if args.max_drop is not None:
        from ..guarantee import choose_rate

        if len(source.data.val) == 0:
            raise XpruneError("--max-drop calibrates on the dataset's val split, which is empty")
        with distributed.on_device(model, args.device):
            choice = choose_rate(
                model,
                ref,
                source.data.val,
                args.criterion,
                max_drop=args.max_drop,
                confidence=0.95 if args.confidence is None else args.confidence,
                scope=args.scope,
                scores=scores,
                min_keep=args.min_keep,
                round_to=args.round_to,
                progress=True,
            )
        console.print(choice.explain(), markup=False)
        ratio = choice.rate
    plan = select(
        scores,
        ratio,
        scope=args.scope,
        min_keep=args.min_keep,
        round_to=args.round_to,
        by=args.by,
        model=model if args.by != "units" else None,
    )
    if choice is not None:
        plan.meta["guarantee"] = {
            "max_drop": choice.max_drop,
            "confidence": choice.confidence,
            "method": choice.method,
            "n_calibration": choice.n_calibration,
            "calibration": "val split",
            "certified": choice.certified,
            "bound": choice.bound,
            "calibration_drop": choice.drop,
        }
    plan.meta["normalization"] = source.normalization
    plan.meta["criterion_options"] = {k: v for k, v in options.items() if k != "seed"}
    mode = args.mode or default_mode(plan)
    pruned = apply(model, plan, mode) if plan.n_removed else copy.deepcopy(model)
    console.print(str(plan), markup=False)
    classify = source.target != "embedding"  # an embedding model has no accuracy to measure
    before = _demo.measure(model, source.data.test, accuracy=classify)
    after = _demo.measure(pruned, source.data.test, accuracy=classify)
    console.print(report.comparison_table(before, after))
    if classify:
        _warn_if_chance(after["accuracy"], source, before=before["accuracy"])
        plan.meta["accuracy"] = {"before": before["accuracy"], "after": after["accuracy"], "split": "test"}
    if not distributed.is_main():
        return 0
    if hf:
        _save_hf(pruned, source, plan, out)
        _listing(
            console,
            [
                (out, "the pruned model (save_pretrained): xprune.transformers.load_pruned(path)"),
                (out / "plan.json", "the units removed: xprune.Plan.load(path)"),
            ],
        )
        return 0
    buf = io.BytesIO()
    torch.save(pruned, buf)
    atomic_write(out, buf.getvalue())
    plan.save(_plan_path(out))
    _listing(
        console,
        [
            (out, "the pruned model (whole module): torch.load(path, weights_only=False)"),
            (_plan_path(out), "the units removed: xprune.Plan.load(path)"),
        ],
    )
    return 0


# ----------------------------------------------------------------------------- curve


def curve(args) -> int:
    from .. import distributed, evaluate, report
    from .._io import atomic_write

    console = _console()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise XpruneError(f"--out {out} is a file; curve writes a folder (curves.json, .png, .md)")
    names = [c.strip() for c in args.criteria.split(",") if c.strip()]
    if not names:
        raise XpruneError("--criteria needs at least one criterion, e.g. --criteria lrp,taylor")
    if args.resume and args.overwrite:
        raise XpruneError("give --resume (continue the run in --out) or --overwrite (start afresh), not both")
    checkpoints = out / "checkpoints"
    started = sorted(checkpoints.glob("curve-*.json")) if checkpoints.is_dir() else []
    if not args.overwrite and not args.resume:
        _refuse_existing([out / n for n in ("curves.json", "curves.png", "curves.md")])
        if started:
            raise XpruneError(
                f"{out} holds an interrupted curve run ({len(started)} checkpoint(s) in "
                f"{checkpoints}); pass --resume to continue it, or --overwrite to start afresh"
            )
    opts = _options(args, names)
    if args.overwrite:
        for f in started:  # start afresh: only the checkpoints of earlier curve runs go
            f.unlink()
    source = load_source(args, seed=0)
    _needs_accuracy(source, "curve")
    model = source.model
    _say_setup(console, source, opts)
    curves = []
    for seed in args.seeds:
        ref = reference(source, args.n_per_class, seed)
        for name in names:
            options = opts.for_criterion(name)
            if name == "random":
                options["seed"] = seed
            checkpoint = checkpoints / f"curve-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-seed{seed}.json"
            curves.append(
                evaluate.curve(
                    model,
                    ref,
                    source.data.test,
                    name,
                    units=source.units,
                    scope=args.scope,
                    progress=True,
                    device=args.device,
                    precision=args.precision,
                    checkpoint=checkpoint,
                    resume=args.resume,
                    **_target(source),
                    **options,
                )
            )
    console.print(report.curves_table(curves))
    with distributed.on_device(model, args.device):
        baseline = evaluate.accuracy(model, source.data.test)  # a collective in a process group: every rank calls it
    if not distributed.is_main():
        return 0
    report.plot_curves(curves, out / "curves.png", baseline=baseline)
    report.save_json(
        {
            "curves": curves,
            "model": args.model,
            "data": args.data,
            "normalization": source.normalization,
            "baseline_accuracy": baseline,
            "options": {n: opts.for_criterion(n) for n in names},
        },
        out / "curves.json",
    )
    atomic_write(out / "curves.md", report.curves_markdown(curves) + "\n")
    _listing(
        console,
        [
            (out / "curves.png", "accuracy vs pruning rate (an image)"),
            (out / "curves.json", "the curves: json.load(open(path))['curves']"),
            (out / "curves.md", "the table above, as markdown"),
        ],
    )
    return 0


# ----------------------------------------------------------------------------- export


class _Logits(torch.nn.Module):
    """A Hugging Face model seen as ``input -> logits`` (what ONNX exports and onnxruntime compares)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        from .. import _inputs

        return _inputs.logits(self.model(x))


def _hf_export_model(spec: str):
    """An hf: folder (written by 'xprune prune' or save_pretrained) and whether it takes token ids."""
    folder = Path(spec[3:])
    try:
        from ..transformers import load_pruned

        model = load_pruned(folder)
    except XpruneError:
        from ..transformers import hub

        model = hub.load(spec[3:]).model
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)  # None without a config
    return _Logits(model.eval()).eval(), (int(vocab) if vocab and not getattr(config, "num_channels", None) else None)


def export(args) -> int:
    from ..io import export_onnx

    _out_file(args.out, args.overwrite)
    vocab = None
    if args.model.startswith("hf:"):
        if args.weights:
            raise XpruneError("--weights does not apply to hf: models: they load the weights saved in their folder")
        model, vocab = _hf_export_model(args.model)
    else:
        model = load_model(args.model, weights=args.weights)
    shape = args.input_shape
    g = torch.Generator().manual_seed(0)
    example = torch.randint(0, vocab, shape, generator=g) if vocab else torch.randn(*shape, generator=g)
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:  # noqa: BLE001  (whatever the model raises on a wrong shape)
        first = str(e).splitlines()[0] if str(e) else ""
        what = "token ids" if vocab else "a float tensor"
        raise XpruneError(
            f"--input-shape {','.join(map(str, shape))} does not fit the model ({type(e).__name__}: "
            f"{first}); give the shape of one batch of its inputs ({what}), batch first, e.g. "
            f"{'1,16' if vocab else '1,3,32,32 for RGB 32x32 images or 1,20 for 20 features'}"
        ) from None
    res = export_onnx(model, args.out, example, atol=args.atol)
    print(f"wrote {res['path']}; onnxruntime vs torch max |diff| = {res['max_abs_diff']:.2e}")
    print(f"  {res['path']}  open with onnxruntime.InferenceSession(path); its input is named 'input'")
    return 0


# ----------------------------------------------------------------------------- bench


def bench(args) -> int:
    from .. import bench as _bench

    if args.page_only:
        ignored = [f for f, v in (("scenarios", args.scenario), ("--quick", args.quick), ("--seeds", args.seeds)) if v]
        if ignored:
            raise XpruneError(
                f"--page-only runs nothing, so {' and '.join(ignored)} would be ignored; drop "
                f"{'them' if len(ignored) > 1 else 'it'}, or drop --page-only"
            )
        print(f"wrote {_bench.results_page(args.out, args.page or 'docs/results.md')}")
        return 0
    _bench.run(args.scenario or None, out=args.out, quick=args.quick, seeds=args.seeds, page=args.page)
    print(f"wrote {args.out}" + (f" and {args.page}" if args.page else ""))
    return 0
