"""The ``xprune`` command line.

Examples::

    xprune demo                                   # the main job on built-in data
    xprune criteria                               # list the criteria
    xprune prune --model builtin:resnet --data mnist --criterion lrp --ratio 0.5 --out pruned.pt
    xprune prune --model builtin:resnet --data mnist --criterion lrp --max-drop 0.01 --confidence 0.95 \\
                 --out pruned.pt           # the largest rate losing <= 1 point with 95% confidence
    xprune prune --model mypkg.nets:make_net --weights net.safetensors --data ./images \\
                 --criterion taylor --ratio 0.3 --n-per-class 10 --out small.pt
    xprune curve --model builtin:vgg --data digits --criteria lrp,taylor,weight --seeds 0,1,2 --out curves/
    xprune export --model pruned.pt --input-shape 1,1,28,28 --out pruned.onnx
    xprune tune --model builtin:vgg --data digits --trials 20 --out tuned/   # PXP composite search
"""

from __future__ import annotations

import argparse
import copy
import importlib
import re
import sys
from pathlib import Path
from typing import Sequence

import torch

from .errors import XpruneError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in _csv(text)]


def _ratio(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {value}")
    return value


def _device(text: str) -> str:
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; use cpu, cuda or cuda:N")
    return text


def _level(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def _refuse_existing(paths: Sequence[Path], what: str = "") -> None:
    """Refuse to replace the user's files: name them and say how to go on."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing:
        raise XpruneError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}{what}; "
                          "pass --overwrite to replace, or choose another --out")


def _out_file(spec: str, overwrite: bool, *extra_suffixes: str) -> Path:
    """The output file ``spec`` (and its companions), checked before any work is done."""
    out = Path(spec)
    if out.is_dir():
        raise XpruneError(f"--out {spec} is a folder; give a file name inside it, e.g. {out / 'pruned.pt'}")
    if not overwrite:
        _refuse_existing([out] + [out.with_suffix(s) for s in extra_suffixes])
    return out


def load_data(spec: str, *, seed: int = 0, root: str | None = None):
    """A built-in dataset name, a ``.npz``/``.pt`` file or an image folder (one sub-folder per class)."""
    from . import data as xdata

    path = Path(spec)
    if path.is_dir():
        return xdata.load("folder", root=str(path), seed=seed)
    if path.suffix in (".npz", ".pt", ".pth"):
        return xdata.load(str(path), seed=seed)
    kwargs = {"root": root} if root else {}
    return xdata.load(spec, seed=seed, **kwargs)


def _read(path: Path, reader, what: str):
    """Run ``reader()``; a file that is not what it should be gives a clear error, not a traceback."""
    if path.is_dir():
        raise XpruneError(f"{path} is a folder, not {what} file")
    try:
        return reader()
    except XpruneError:
        raise
    except Exception as e:  # zip, pickle and safetensors errors of a damaged or foreign file
        raise XpruneError(f"{path} cannot be read as {what} (truncated, corrupt or another format?): "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def load_model(spec: str, *, weights: str | None = None, dataset: str | None = None, seed: int = 0):
    """A model from ``builtin:ARCH`` (trained on ``dataset``, cached), a saved module file, or ``module:factory``."""
    if spec.startswith("builtin:"):
        from .models import pretrained

        if dataset is None:
            raise XpruneError("builtin models need --data naming a built-in dataset")
        model, _ = pretrained(spec.split(":", 1)[1], dataset, seed=seed)
        return model
    path = Path(spec)
    if path.exists():
        model = _read(path, lambda: torch.load(path, map_location="cpu", weights_only=False), "a saved module")
        if isinstance(model, dict):
            raise XpruneError(f"{path} holds a state dict, not a module: pass --model module:factory --weights {path}")
    elif ":" in spec:
        module_name, _, factory = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise XpruneError(f"cannot import {module_name!r} for --model {spec}: {e}") from e
        if not hasattr(module, factory):
            raise XpruneError(f"module {module_name!r} has no attribute {factory!r}")
        model = getattr(module, factory)()
    else:
        raise XpruneError(f"--model {spec!r}: no such file; use a saved module (.pt), module:factory or builtin:ARCH")
    if weights:
        wpath = Path(weights)
        if not wpath.exists():
            raise XpruneError(f"--weights {weights}: no such file")
        if wpath.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = _read(wpath, lambda: load_file(str(wpath)), "a state dict")
        else:
            state = _read(wpath, lambda: torch.load(wpath, map_location="cpu", weights_only=True), "a state dict")
        if not isinstance(state, dict):
            raise XpruneError(f"--weights {weights} holds a {type(state).__name__}, not a state dict")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise XpruneError(f"--weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if not isinstance(model, torch.nn.Module):
        raise XpruneError(f"--model {spec} did not give a torch.nn.Module (got {type(model).__name__})")
    return model.eval()


def _reference(ds, n_per_class: int | None, seed: int):
    from . import data as xdata

    if n_per_class is None:
        return ds.train
    return xdata.reference_samples(ds.train, n_per_class, seed=seed)


def cmd_demo(args) -> int:
    from . import demo

    demo.run(arch=args.arch, dataset=args.data, n_per_class=args.n_per_class,
             criteria=_csv(args.criteria) if args.criteria else None, ratio=args.ratio,
             criterion=args.criterion, seeds=_ints(args.seeds), out=args.out)
    return 0


def cmd_criteria(args) -> int:
    from . import criteria

    for name in criteria.available():
        cls = type(criteria.get(name))
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:<22} {doc}")
    return 0


def cmd_prune(args) -> int:
    from rich.console import Console

    from . import demo, report
    from .distributed import is_main
    from .scores import score
    from .select import select
    from .surgery import apply
    from .pipeline import default_mode

    console = Console(quiet=not is_main())  # in a process group only rank 0 prints and writes
    guaranteed = args.max_drop is not None
    if args.ratio is None and not guaranteed:
        raise XpruneError("give --ratio, or --max-drop (with --confidence) to choose the largest safe ratio")
    if args.ratio is not None and guaranteed:
        raise XpruneError("give either --ratio or --max-drop, not both: --max-drop chooses the ratio")
    if args.confidence is not None and not guaranteed:
        raise XpruneError("--confidence goes with --max-drop")
    if guaranteed and args.by != "units":
        raise XpruneError(f"--max-drop certifies a fraction of the units; it cannot be combined with --by {args.by}")
    out = _out_file(args.out, args.overwrite, ".plan.json")
    ds = load_data(args.data, seed=args.seed, root=args.data_root)
    model = load_model(args.model, weights=args.weights, dataset=args.data, seed=args.seed)
    reference = _reference(ds, args.n_per_class, args.seed)
    options = {"seed": args.seed} if args.criterion == "random" else {}
    scores = score(model, reference, args.criterion, args.units, progress=True, device=args.device,
                   precision=args.precision, **options)
    ratio, choice = args.ratio, None
    if guaranteed:
        from .guarantee import choose_rate

        if len(ds.val) == 0:
            raise XpruneError("--max-drop calibrates on the dataset's val split, which is empty")
        choice = choose_rate(model, reference, ds.val, args.criterion, max_drop=args.max_drop,
                             confidence=0.95 if args.confidence is None else args.confidence,
                             scope=args.scope, scores=scores, min_keep=args.min_keep, round_to=args.round_to,
                             progress=True)
        console.print(choice.explain())
        ratio = choice.rate
    plan = select(scores, ratio, scope=args.scope, min_keep=args.min_keep, round_to=args.round_to, by=args.by,
                  model=model if args.by != "units" else None)
    if choice is not None:
        plan.meta["guarantee"] = {"max_drop": choice.max_drop, "confidence": choice.confidence,
                                  "method": choice.method, "n_calibration": choice.n_calibration,
                                  "calibration": "val split", "certified": choice.certified,
                                  "bound": choice.bound, "calibration_drop": choice.drop}
    mode = args.mode or default_mode(plan)
    pruned = apply(model, plan, mode) if plan.n_removed else copy.deepcopy(model)
    console.print(str(plan))
    example = ds.test.X[:64]
    console.print(report.comparison_table(demo.measure(model, ds.test, example),
                                          demo.measure(pruned, ds.test, example)))
    if not is_main():
        return 0
    import io

    from ._io import atomic_write

    buf = io.BytesIO()
    torch.save(pruned, buf)
    atomic_write(out, buf.getvalue())
    plan.save(out.with_suffix(".plan.json"))
    console.print(f"wrote {out} (whole module, torch.load(..., weights_only=False)) and {out.with_suffix('.plan.json')}")
    return 0


def cmd_curve(args) -> int:
    from rich.console import Console

    from . import evaluate, report
    from .distributed import is_main

    console = Console(quiet=not is_main())  # in a process group only rank 0 prints and writes
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise XpruneError(f"--out {out} is a file; curve writes a folder (curves.json, .png, .md)")
    seeds, names = _ints(args.seeds), _csv(args.criteria)
    if not seeds or not names:
        raise XpruneError("--seeds and --criteria need at least one value each, e.g. --seeds 0 --criteria lrp")
    checkpoints = out / "checkpoints"
    started = sorted(checkpoints.glob("curve-*.json")) if checkpoints.is_dir() else []
    if args.overwrite:
        for f in started:  # start afresh: only the checkpoints of earlier curve runs go
            f.unlink()
    elif not args.resume:
        _refuse_existing([out / n for n in ("curves.json", "curves.png", "curves.md")])
        if started:
            raise XpruneError(f"{out} holds an interrupted curve run ({len(started)} checkpoint(s) in "
                              f"{checkpoints}); pass --resume to continue it, or --overwrite to start afresh")
    ds = load_data(args.data, seed=0, root=args.data_root)
    model = load_model(args.model, weights=args.weights, dataset=args.data)
    curves = []
    for seed in seeds:
        reference = _reference(ds, args.n_per_class, seed)
        for name in names:
            options = {"seed": seed} if name == "random" else {}
            checkpoint = checkpoints / f"curve-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}-seed{seed}.json"
            curves.append(evaluate.curve(model, reference, ds.test, name, units=args.units, scope=args.scope,
                                         progress=True, device=args.device, precision=args.precision,
                                         checkpoint=checkpoint, resume=args.resume, **options))
    console.print(report.curves_table(curves))
    baseline = evaluate.accuracy(model, ds.test)  # a collective in a process group: every rank calls it
    if not is_main():
        return 0
    report.plot_curves(curves, out / "curves.png", baseline=baseline)
    report.save_json({"curves": curves}, out / "curves.json")
    from ._io import atomic_write

    atomic_write(out / "curves.md", report.curves_markdown(curves) + "\n")
    console.print(f"wrote {out / 'curves.png'}, {out / 'curves.json'}, {out / 'curves.md'}")
    return 0


def cmd_export(args) -> int:
    from .io import export_onnx

    _out_file(args.out, args.overwrite)
    model = load_model(args.model, weights=args.weights)
    shape = _ints(args.input_shape)
    if len(shape) < 2:
        raise XpruneError("--input-shape needs the batch dimension first, e.g. 1,1,28,28")
    res = export_onnx(model, args.out, torch.randn(*shape), atol=args.atol)
    print(f"wrote {res['path']}; onnxruntime vs torch max |diff| = {res['max_abs_diff']:.2e}")
    return 0


def cmd_tune(args) -> int:
    from .distributed import is_main, run_on_main
    from .tune import tune

    out = Path(args.out)

    def check_out():  # on rank 0 only in a process group: it alone owns the study and writes
        if out.exists() and not out.is_dir():
            raise XpruneError(f"--out {out} is a file; tune writes a folder (study.db, best_composite.json, ...)")
        held = [out / n for n in ("study.db", "best_composite.json", "summary.json")]
        if args.overwrite:
            if args.storage is None:  # a new study: the old one in OUT/study.db goes
                (out / "study.db").unlink(missing_ok=True)
        elif not args.resume and any(p.exists() for p in held):
            raise XpruneError(f"{out} already holds a tuning study or its results; pass --resume to continue the "
                              "study (up to --trials finished trials) or --overwrite to start a new one")

    run_on_main(check_out, "checking --out")
    ds = load_data(args.data, seed=0, root=args.data_root)
    model = load_model(args.model, weights=args.weights, dataset=args.data)
    reference = _reference(ds, args.n_per_class, args.seed)
    val = ds.val
    if len(val) == 0:
        raise XpruneError(f"dataset {args.data!r} has no val split to tune on")
    if args.val_size and args.val_size < len(val):
        g = torch.Generator().manual_seed(args.seed)
        val = val.subset(torch.randperm(len(val), generator=g)[: args.val_size])
    space = None
    if args.rules or args.aggregate or args.normalize:
        space = {}
        if args.rules:
            space["rules"] = _csv(args.rules)
        if args.aggregate:
            space["aggregate"] = _csv(args.aggregate)
        if args.normalize:
            space["normalize"] = [None if n == "none" else n for n in _csv(args.normalize)]
    classes = _ints(args.classes) if args.classes else None
    result = tune(model, reference, val, units=args.units, space=space, trials=args.trials, sampler=args.sampler,
                  storage=args.storage, study_name=args.study_name, out=args.out, seed=args.seed,
                  classes=classes, timeout=args.timeout, pruner=None if args.no_pruning else "bound",
                  progress=is_main())
    say = print if is_main() else (lambda *a, **k: None)  # in a process group only rank 0 prints
    say(result)
    if args.test:
        from .evaluate import curve

        c = curve(model, reference, ds.test, "lrp", units=args.units, classes=classes, **result.options)
        say(f"test AUC of the tuned composite: {c.auc:.4f}")
    say(f"use it: xprune.score(model, data, 'lrp', composite={str(result.composite)!r}, "
          f"aggregate={result.options['aggregate']!r}, normalize={result.options['normalize']!r})")
    return 0


def cmd_bench(args) -> int:
    from . import bench

    seeds = _ints(args.seeds) if args.seeds else None
    if args.page_only:
        print(f"wrote {bench.results_page(args.out, args.page or 'docs/results.md')}")
        return 0
    bench.run(args.scenario or None, out=args.out, quick=args.quick, seeds=seeds, page=args.page)
    print(f"wrote {args.out}" + (f" and {args.page}" if args.page else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xprune",
        description="Prune neural networks by what their explanations say does not matter.",
        epilog="Run 'xprune COMMAND --help' for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="compare criteria on built-in data, then prune (the main job)",
                       description="Train (once, cached) or load a reference model, compare every criterion on "
                                   "the accuracy-vs-pruning-rate curve with few reference samples per class, "
                                   "prune at --ratio and report accuracy/parameters/MACs/latency.")
    p.add_argument("--arch", default="vgg", help="reference architecture: mlp, vgg, resnet, vit (default vgg)")
    p.add_argument("--data", default="digits", help="built-in dataset: digits, mnist, fashion-mnist (default digits)")
    p.add_argument("--n-per-class", type=int, default=10, help="reference samples per class (default 10)")
    p.add_argument("--criteria", help="comma-separated criteria to compare (default: all built-in)")
    p.add_argument("--criterion", help="criterion used for the final pruning (default: best AUC)")
    p.add_argument("--ratio", type=_ratio, default=0.5, help="fraction of channels removed at the end (default 0.5)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds for the reference samples (default 0,1,2)")
    p.add_argument("--out", default="xprune-demo", help="output folder (default ./xprune-demo)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("criteria", help="list the available criteria")
    p.set_defaults(func=cmd_criteria)

    def model_args(p):
        p.add_argument("--model", required=True,
                       help="a saved module (torch.save(model)), module:factory (a callable building the model), "
                            "or builtin:ARCH (a reference model trained on --data)")
        p.add_argument("--weights", help="state dict (.safetensors or .pt) loaded into the model")
        p.add_argument("--data", required=True,
                       help="built-in dataset name, a .npz/.pt file with X and y, or an image folder "
                            "(one sub-folder per class)")
        p.add_argument("--data-root", help="folder of a built-in dataset's files (e.g. Fashion-MNIST IDX files)")
        p.add_argument("--n-per-class", type=int, default=10,
                       help="reference samples per class drawn from the training split (default 10)")
        p.add_argument("--units", default="channels", help="unit kind: channels or weights (default channels)")
        p.add_argument("--scope", default="global", choices=["global", "local"], help="ranking scope (default global)")
        p.add_argument("--device", type=_device, help="score and evaluate on this device, e.g. cuda or cuda:1 (default cpu); "
                                        "under torchrun, cuda selects NCCL and the GPU of LOCAL_RANK")
        p.add_argument("--precision", choices=["fp32", "bf16"],
                       help="bf16: score under bf16 autocast where the criterion's rule allows it (default fp32)")

    p = sub.add_parser("prune", help="prune a model and save it",
                       description="Score the units of a model on reference samples, remove the least important, "
                                   "report the cost and the savings, and save the pruned model and its plan. "
                                   "With --max-drop the ratio is the largest one whose accuracy drop is certified "
                                   "on the dataset's val split.")
    model_args(p)
    p.add_argument("--criterion", default="lrp", help="criterion name (see 'xprune criteria'; default lrp)")
    p.add_argument("--ratio", type=_ratio, help="fraction of units to remove, in [0, 1) (or use --max-drop)")
    p.add_argument("--max-drop", type=_level,
                   help="instead of --ratio: prune the largest rate whose accuracy drop is at most this "
                        "(e.g. 0.01), with probability --confidence, calibrated on the val split "
                        "(Learn-then-Test; see xprune.guarantee)")
    p.add_argument("--confidence", type=_level, help="confidence of --max-drop's guarantee (default 0.95)")
    p.add_argument("--by", default="units", choices=["units", "macs", "params"],
                   help="what --ratio is a fraction of: the units (default), or the whole model's MACs or "
                        "parameters (exact cost model; channels only)")
    p.add_argument("--mode", choices=["remove", "mask"], help="remove physically (channels default) or mask")
    p.add_argument("--min-keep", type=float, default=1, help="units each layer keeps (count, or fraction < 1)")
    p.add_argument("--round-to", type=int, help="round kept channels per layer to a multiple of this")
    p.add_argument("--seed", type=int, default=0, help="seed for data split and reference samples (default 0)")
    p.add_argument("--out", required=True, help="where to write the pruned model (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its .plan.json) if they exist")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("curve", help="accuracy vs pruning rate for several criteria",
                       description="Compute relevance once per criterion and seed, evaluate nested prunings at "
                                   "rates 0..0.95 without fine-tuning, and write a table, a plot and JSON.")
    model_args(p)
    p.add_argument("--criteria", default="lrp,taylor,weight,random", help="comma-separated criteria")
    p.add_argument("--seeds", default="0", help="comma-separated seeds for the reference samples")
    p.add_argument("--out", default="xprune-curves", help="output folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT/checkpoints (rates already measured are skipped)")
    p.add_argument("--overwrite", action="store_true", help="replace the results (and checkpoints) in --out")
    p.set_defaults(func=cmd_curve)

    p = sub.add_parser("tune", help="tune the LRP composite for pruning (PXP, Bayesian optimisation)",
                       description="Search the LRP rules per layer group (and aggregation, normalisation) that "
                                   "maximise the area under the accuracy-vs-pruning-rate curve on the dataset's "
                                   "val split (optuna study, resumable; see xprune.tune). Writes the best "
                                   "composite as JSON (composite=PATH), history and importance plots.")
    model_args(p)
    p.add_argument("--trials", type=int, default=30, help="finished trials the study should hold (default 30)")
    p.add_argument("--sampler", default="gp", choices=["gp", "tpe", "random"],
                   help="gp: Gaussian-process Bayesian optimisation (default); tpe; random")
    p.add_argument("--storage", help="SQLAlchemy URL of a shared study database (default: OUT/study.db)")
    p.add_argument("--study-name", help="study name (default pxp-UNITS); an existing study is resumed")
    p.add_argument("--val-size", type=int, default=1000, help="validation samples used (default 1000; 0: all)")
    p.add_argument("--rules", help="comma-separated rules searched per group (default epsilon,zplus,alpha-beta,gamma)")
    p.add_argument("--aggregate", help="comma-separated aggregations searched (default pxp,yeom)")
    p.add_argument("--normalize", help="comma-separated normalisations searched (default none,l1)")
    p.add_argument("--classes", help="domain restriction: comma-separated class indices")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--no-pruning", action="store_true", help="run every trial to the end (no early stopping)")
    p.add_argument("--test", action="store_true", help="also report the tuned composite's AUC on the test split")
    p.add_argument("--seed", type=int, default=0, help="seed for reference samples, validation subset and sampler")
    p.add_argument("--out", default="xprune-tune", help="output folder (default ./xprune-tune)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out (or --storage)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new study, replacing OUT/study.db and the results in --out")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("export", help="export a (pruned) model to ONNX, checked in onnxruntime",
                       description="Export a model to ONNX with a dynamic batch size and check onnxruntime's "
                                   "outputs against torch's on a random input.")
    p.add_argument("--model", required=True, help="a saved module (.pt) or module:factory")
    p.add_argument("--weights", help="state dict (.safetensors or .pt) loaded into the model")
    p.add_argument("--input-shape", required=True, help="example input shape, batch first, e.g. 1,1,28,28")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnxruntime - torch| (default 1e-4)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="run the benchmark suite (criteria compared on named scenarios)",
                       description="Run named benchmark scenarios; each writes NAME.json, NAME.md and plots "
                                   "into --out. Scenarios: toy, transfer, resnet, vit, minilm, perf, heatmaps "
                                   "(default: all; with --quick: toy, transfer, perf, heatmaps).")
    p.add_argument("scenario", nargs="*", help="scenarios to run (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one seed: a smoke test (about a minute)")
    p.add_argument("--seeds", help="comma-separated seeds (default 0 with --quick, else 0,1,2)")
    p.add_argument("--out", default="docs/bench", help="output folder (default docs/bench)")
    p.add_argument("--page", help="also write the results page here (e.g. docs/results.md)")
    p.add_argument("--page-only", action="store_true", help="only regenerate --page from the outputs in --out")
    p.set_defaults(func=cmd_bench)
    return parser


#: Optional packages and the extra of xprune that installs each (pyproject.toml).
EXTRAS = {"sklearn": "data", "mlxtend": "data", "PIL": "data", "matplotlib": "plots", "rich": "cli",
          "optuna": "tune", "transformers": "hf", "onnx": "export", "onnxruntime": "export"}


def _missing_extra(e: BaseException) -> str | None:
    """For an optional package that is not installed, the line saying which extra to install."""
    name = getattr(e, "name", None) or ""
    extra = EXTRAS.get(name.split(".")[0])
    if not isinstance(e, ModuleNotFoundError) or extra is None:
        return None
    return f"this needs the optional package {name.split('.')[0]!r}: pip install 'xprune[{extra}]' (or 'xprune[all]')"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "min_keep", None) is not None and args.min_keep >= 1:
        args.min_keep = int(args.min_keep)
    from . import distributed

    started = False
    try:
        # under torchrun (WORLD_SIZE > 1): join the process group; scoring and evaluation split across ranks
        started = distributed.init_from_env(device=getattr(args, "device", None))
        return args.func(args)
    except (XpruneError, ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        prefix = f"xprune: error (rank {distributed.rank()}): " if distributed.world_size() > 1 else "xprune: error: "
        print(f"{prefix}{_missing_extra(e) or e}", file=sys.stderr)
        return 2
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
