"""The argument parser of the ``xprune`` command line: commands, options and their types.

Every option value is checked when it is parsed; a bad one ends the command
with one line ``xprune: error: argument --OPTION: what is wrong; what to give``
and exit code 2 (see :class:`Parser`).
"""

from __future__ import annotations

import argparse
from typing import NoReturn

from ._types import (
    budget,
    classes,
    composite,
    csv,
    demo_ratio,
    device,
    image_size,
    ints,
    level,
    min_keep,
    non_negative_int,
    normalize,
    option,
    positive,
    positive_int,
    ratio,
    shape,
)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line naming the option and where to read more."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f"run 'xprune {command} --help'" if command else "run 'xprune --help'"
        self.exit(2, f"xprune: error: {message}; {hint} for the options\n")


# ----------------------------------------------------------------------------- argument groups


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--traceback",
        action="store_true",
        help="on an unexpected error, show Python's full traceback instead of one line",
    )


def _model(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a saved module (torch.save(model)), module:factory (a callable building the model; the "
        "current folder is importable, as with python -m), builtin:ARCH (a reference model trained "
        "on --data), or hf:PATH (a Hugging Face model folder saved with save_pretrained, or a "
        "model id in the local Hugging Face cache)",
    )
    p.add_argument("--weights", help="state dict (.safetensors or .pt) loaded into the model (not with hf:)")


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        required=True,
        help="built-in dataset name, a .npz/.pt file with X and y, an image folder (one sub-folder per "
        "class), or for hf: language models a .txt file (texts separated by blank lines) or a "
        ".jsonl file (one {'text': ..., 'label': ...} per line)",
    )
    p.add_argument("--data-root", help="folder of a built-in dataset's files (e.g. Fashion-MNIST IDX files)")
    p.add_argument(
        "--normalize",
        type=normalize,
        default="auto",
        help="what is done to the inputs: auto (default: what the model was trained with when xprune "
        "knows it: built-in datasets and models mean-std, hf: vision models their image processor's "
        "mean/std, your files and folders none), mean-std (the train split's), none (as stored), or "
        'a .json file {"mean": [...], "std": [...]}; the command prints what it applied',
    )
    p.add_argument(
        "--image-size",
        type=image_size,
        help="image folders: resize every image to N x N or HxW (default: the hf: model's processor "
        "size, else the images' own size)",
    )
    p.add_argument("--grayscale", action="store_true", help="image folders: read the images as one channel")
    p.add_argument(
        "--max-length",
        type=positive_int,
        help=".txt/.jsonl text data of hf: models: tokens kept per text (default 128)",
    )


def _scoring(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n-per-class",
        type=positive_int,
        default=10,
        help="reference samples per class drawn from the training split (default 10)",
    )
    p.add_argument(
        "--units",
        choices=["channels", "weights", "heads", "neurons"],
        help="unit kind: channels (CNNs), weights, heads or neurons (transformers); default heads for "
        "hf: transformers, channels otherwise",
    )
    p.add_argument(
        "--scope",
        default="global",
        choices=["global", "local"],
        help="ranking scope: global (across layers, default) or local (the same fraction per layer)",
    )
    p.add_argument(
        "--device",
        type=device,
        help="score and measure the accuracy curves on this device, e.g. cuda or cuda:1 (default cpu; "
        "latency is always measured on CPU); under torchrun, cuda selects NCCL and the GPU of "
        "LOCAL_RANK",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="bf16: score under bf16 autocast where the criterion's rule allows it (default fp32)",
    )


def _criterion_options(p: argparse.ArgumentParser, *, tune: bool = False) -> None:
    if tune:
        p.add_argument(
            "--composite",
            type=composite,
            help="also measure this LRP composite (a preset name or a composite file) on the same "
            "validation curve, as the baseline the tuned one is compared with",
        )
        p.add_argument(
            "--option",
            type=option,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a fixed option of the lrp criterion, e.g. start=logit (repeatable; the composite, "
            "aggregate and normalize are what tuning searches)",
        )
        return
    p.add_argument(
        "--composite",
        type=composite,
        help="lrp's rules: a preset name (e.g. epsilon-plus, alpha2-beta1) or a composite file written "
        "by 'xprune tune' (OUT/best_composite.json, whose aggregate and normalize come with it)",
    )
    p.add_argument(
        "--option",
        type=option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the criterion, typed from its signature (repeatable; 'xprune criteria' lists "
        "them; normalize=none|l1|l2|max sets the per-layer normalisation of the scores)",
    )


def _control(p: argparse.ArgumentParser, *, general: bool) -> None:
    """The options of correct and circuit: the model, the behaviour (and general) data, the units and criterion."""
    _model(p)
    p.add_argument(
        "--behaviour",
        required=True,
        help="samples of the behaviour, labelled with the answer it gives (the unwanted class; for hf: "
        "language models a .txt/.jsonl file whose every token is the text to stop producing, or .jsonl "
        'lines {"prompt": ..., "continuation": ...} where only the continuation is): a '
        ".npz/.pt file with X and y, an image folder, a built-in dataset or text; its train split is "
        "scored, its test split measured",
    )
    if general:
        p.add_argument(
            "--general",
            required=True,
            help="samples of the task to keep (same forms as --behaviour; train split scored, test split measured)",
        )
    p.add_argument("--data-root", help="folder of a built-in dataset's files")
    p.add_argument("--normalize", type=normalize, default="auto", help="as for 'xprune prune --normalize'")
    p.add_argument("--image-size", type=image_size, help="image folders: resize to N x N or HxW")
    p.add_argument("--grayscale", action="store_true", help="image folders: read the images as one channel")
    p.add_argument("--max-length", type=positive_int, help=".txt/.jsonl text of hf: models: tokens per text")
    p.add_argument(
        "--units",
        choices=["channels", "weights", "heads", "neurons"],
        help=f"unit kind (default {'neurons' if general else 'heads'} for hf: transformers, channels otherwise)",
    )
    p.add_argument("--criterion", default="lrp", help="criterion name (see 'xprune criteria'; default lrp)")
    _criterion_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the data splits (default 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    _common(p)


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``xprune`` parser with its commands (each has a complete ``--help``)."""
    from . import _commands as cmd, _control as control_cmd, _tune as tune_cmd

    parser = Parser(
        prog="xprune",
        description="Prune neural networks by what their explanations say does not matter.",
        epilog="Run 'xprune COMMAND --help' for the options of each command. Exit codes: 0 done, 2 bad input "
        "(one line 'xprune: error: ...' saying what to change), 1 an unexpected failure (one line; "
        "--traceback shows where), 130 interrupted. Warnings print as 'warning: ...' on stderr, progress "
        "goes to stderr, results to stdout.",
    )
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"xprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser(
        "demo",
        help="compare criteria on built-in data, then prune (the main job)",
        description="Load (or train once, cached) a built-in reference model, compare the criteria "
        "on the accuracy-vs-pruning-rate curve with few reference samples per class, "
        "prune with the best one and report accuracy/parameters/MACs/latency. With "
        "--ratio auto (default) the rate is the largest whose accuracy on the val split "
        "is within --tolerance of the unpruned model's.",
    )
    p.add_argument(
        "--arch", default="vgg", choices=["mlp", "vgg", "resnet", "vit"], help="reference architecture (default vgg)"
    )
    p.add_argument("--data", default="digits", help="built-in dataset: digits, mnist, fashion-mnist (default digits)")
    p.add_argument("--data-root", help="folder of a built-in dataset's files (e.g. Fashion-MNIST IDX files)")
    p.add_argument(
        "--normalize",
        type=normalize,
        default="auto",
        help="auto (default: mean-std, what the built-in models were trained with), mean-std, none, or "
        "a .json file of per-channel mean and std",
    )
    p.add_argument("--n-per-class", type=positive_int, default=10, help="reference samples per class (default 10)")
    p.add_argument("--criteria", help="comma-separated criteria to compare (default: all built-in)")
    p.add_argument("--criterion", help="criterion used for the final pruning (default: best AUC)")
    _criterion_options(p)
    p.add_argument(
        "--ratio",
        type=demo_ratio,
        default="auto",
        help="fraction of channels removed at the end, or auto (default): the largest rate at which "
        "the chosen criterion's curve on the val split is within --tolerance of the unpruned "
        "accuracy",
    )
    p.add_argument(
        "--tolerance",
        type=level,
        default=0.02,
        help="accuracy the val split may lose with --ratio auto (default 0.02, two points)",
    )
    p.add_argument(
        "--seeds", type=ints, default=[0, 1, 2], help="comma-separated seeds for the reference samples (default 0,1,2)"
    )
    p.add_argument("--out", default="xprune-demo", help="output folder (default ./xprune-demo)")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier demo in --out")
    _common(p)
    p.set_defaults(func=cmd.demo)

    p = sub.add_parser(
        "criteria",
        help="list the available criteria and their options",
        description="List the criteria with their options (pass them as --option KEY=VALUE).",
    )
    _common(p)
    p.set_defaults(func=cmd.criteria)

    p = sub.add_parser(
        "prune",
        help="prune a model and save it",
        description="Score the units of a model on reference samples, remove the least important, "
        "report the cost and the savings, and save the pruned model and its plan. "
        "With --max-drop the ratio is the largest one whose accuracy drop is certified "
        "on the dataset's val split.",
    )
    _model(p)
    _data(p)
    _scoring(p)
    p.add_argument("--criterion", default="lrp", help="criterion name (see 'xprune criteria'; default lrp)")
    _criterion_options(p)
    p.add_argument("--ratio", type=ratio, help="fraction of units to remove, in [0, 1) (or use --max-drop)")
    p.add_argument(
        "--max-drop",
        type=level,
        help="instead of --ratio: prune the largest rate whose accuracy drop is at most this "
        "(e.g. 0.01), with probability --confidence, calibrated on the val split "
        "(Learn-then-Test; see xprune.guarantee)",
    )
    p.add_argument("--confidence", type=level, help="confidence of --max-drop's guarantee (default 0.95)")
    p.add_argument(
        "--by",
        default="units",
        choices=["units", "macs", "params"],
        help="what --ratio is a fraction of: the units (default), or the whole model's MACs or "
        "parameters (exact cost model; channels only)",
    )
    p.add_argument("--mode", choices=["remove", "mask"], help="remove physically (channels default) or mask")
    p.add_argument("--min-keep", type=min_keep, default=1, help="units each layer keeps (count, or fraction < 1)")
    p.add_argument("--round-to", type=positive_int, help="round kept channels per layer to a multiple of this")
    p.add_argument("--seed", type=int, default=0, help="seed for data split and reference samples (default 0)")
    p.add_argument(
        "--out",
        required=True,
        help="where to write the pruned model: a .pt file (whole module), or a folder for hf: models "
        "(save_pretrained, reloaded with xprune.transformers.load_pruned)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its plan) if they exist")
    _common(p)
    p.set_defaults(func=cmd.prune)

    p = sub.add_parser(
        "curve",
        help="accuracy vs pruning rate for several criteria",
        description="Compute relevance once per criterion and seed, evaluate nested prunings at "
        "rates 0..0.95 without fine-tuning, and write a table, a plot and JSON.",
    )
    _model(p)
    _data(p)
    _scoring(p)
    p.add_argument("--criteria", default="lrp,taylor,weight,random", help="comma-separated criteria")
    _criterion_options(p)
    p.add_argument("--seeds", type=ints, default=[0], help="comma-separated seeds for the reference samples")
    p.add_argument("--out", default="xprune-curves", help="output folder")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from OUT/checkpoints (rates already measured are skipped)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace the results (and checkpoints) in --out")
    _common(p)
    p.set_defaults(func=cmd.curve)

    p = sub.add_parser(
        "tune",
        help="tune the LRP composite for pruning (PXP, Bayesian optimisation)",
        description="Search the LRP rules per layer group (and aggregation, score normalisation) "
        "that maximise the area under the accuracy-vs-pruning-rate curve on the "
        "dataset's val split (optuna study, resumable; see xprune.tune). Writes the best "
        "composite as JSON (use it with 'xprune prune --composite OUT/best_composite.json'), "
        "history and importance plots.",
    )
    _model(p)
    _data(p)
    _scoring(p)
    _criterion_options(p, tune=True)
    p.add_argument("--trials", type=positive_int, default=30, help="finished trials the study should hold (default 30)")
    p.add_argument(
        "--sampler",
        default="random",
        choices=["gp", "tpe", "random"],
        help="random search (default: GP did not beat it, docs/tune.md 'Samplers'); "
        "gp: Gaussian-process Bayesian optimisation (PXP's); tpe",
    )
    p.add_argument("--storage", help="SQLAlchemy URL of a shared study database (default: OUT/study.db)")
    p.add_argument("--study-name", help="study name (default pxp-UNITS); an existing study is resumed")
    p.add_argument(
        "--val-size", type=non_negative_int, default=1000, help="validation samples used (default 1000; 0: all)"
    )
    p.add_argument(
        "--rules", type=csv, help="comma-separated rules searched per group (default epsilon,zplus,alpha-beta,gamma)"
    )
    p.add_argument("--aggregate", type=csv, help="comma-separated aggregations searched (default pxp,yeom)")
    p.add_argument(
        "--score-normalize",
        type=csv,
        help="comma-separated per-layer score normalisations searched (default none,l1; among none, l1, l2, max)",
    )
    p.add_argument("--classes", type=classes, help="domain restriction: comma-separated class indices")
    p.add_argument("--timeout", type=positive, help="stop starting trials after this many seconds")
    p.add_argument("--no-pruning", action="store_true", help="run every trial to the end (no early stopping)")
    p.add_argument("--test", action="store_true", help="also report the tuned composite's AUC on the test split")
    p.add_argument("--seed", type=int, default=0, help="seed for reference samples, validation subset and sampler")
    p.add_argument("--out", default="xprune-tune", help="output folder (default ./xprune-tune)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out (or --storage)")
    p.add_argument(
        "--overwrite", action="store_true", help="start a new study, replacing OUT/study.db and the results in --out"
    )
    _common(p)
    p.set_defaults(func=tune_cmd.tune)

    p = sub.add_parser(
        "export",
        help="export a (pruned) model to ONNX, checked in onnxruntime",
        description="Export a model to ONNX with a dynamic batch size and check onnxruntime's "
        "outputs against torch's on a random input.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="a saved module (.pt), module:factory, or hf:FOLDER (a folder written by 'xprune prune')",
    )
    p.add_argument("--weights", help="state dict (.safetensors or .pt) loaded into the model (not with hf:)")
    p.add_argument(
        "--input-shape",
        type=shape,
        required=True,
        help="example input shape, batch first, e.g. 1,1,28,28 (hf: text models: 1,SEQUENCE_LENGTH of token ids)",
    )
    p.add_argument("--atol", type=positive, default=1e-4, help="largest accepted |onnxruntime - torch| (default 1e-4)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _common(p)
    p.set_defaults(func=cmd.export)

    p = sub.add_parser(
        "correct",
        help="remove the units that carry an unwanted behaviour (targeted correction)",
        description="Score the units on a behaviour set and a general set, remove the units of "
        "highest contrast (relevance on the behaviour over relevance on the general "
        "task), as few as bring the behaviour metric down by --suppression while the "
        "general metric stays within --max-general-change; write correction.json, "
        "correction.png and the corrected model (see xprune.control.correct).",
    )
    _control(p, general=True)
    p.add_argument(
        "--combine",
        default="difference",
        choices=["difference", "ratio"],
        help="contrast of the per-layer-normalised scores: difference (default) or ratio",
    )
    p.add_argument("--budget", type=budget, help="units removed at most: a count or a fraction (default 1%%)")
    p.add_argument(
        "--suppression", type=level, default=0.5, help="fraction of the behaviour metric to remove (default 0.5)"
    )
    p.add_argument(
        "--max-general-change",
        type=ratio,
        default=0.02,
        help="largest relative worsening of the general metric (default 0.02)",
    )
    p.set_defaults(func=control_cmd.correct)

    p = sub.add_parser(
        "circuit",
        help="find the smallest set of units that carries a behaviour",
        description="Rank the units by relevance on the behaviour set, keep the top k and remove "
        "the rest for k on a grid, and report the smallest k whose faithfulness reaches "
        "--faithfulness; write circuit.json and circuit.png (see xprune.control.circuit).",
    )
    _control(p, general=False)
    p.add_argument(
        "--faithfulness",
        type=level,
        default=0.9,
        help="share of the behaviour the circuit keeps, in (0, 1) (default 0.9)",
    )
    p.set_defaults(func=control_cmd.circuit)

    p = sub.add_parser(
        "bench",
        help="run the benchmark suite (criteria compared on named scenarios)",
        description="Run named benchmark scenarios; each writes NAME.json, NAME.md and plots "
        "into --out. Scenarios: toy, transfer, resnet, vit, minilm, perf, heatmaps "
        "(default: all; with --quick: toy, transfer, perf, heatmaps).",
    )
    p.add_argument("scenario", nargs="*", help="scenarios to run (default: all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes and one seed: a smoke test (about a minute)")
    p.add_argument("--seeds", type=ints, help="comma-separated seeds (default 0 with --quick, else 0,1,2)")
    p.add_argument("--out", default="docs/bench", help="output folder (default docs/bench)")
    p.add_argument("--page", help="also write the results page here (e.g. docs/results.md)")
    p.add_argument(
        "--page-only",
        action="store_true",
        help="run nothing: only regenerate --page (default docs/results.md) from the outputs in --out",
    )
    _common(p)
    p.set_defaults(func=cmd.bench)
    return parser
