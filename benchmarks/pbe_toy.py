"""The toy study of Pruning by Explaining (Yeom et al., Pattern Recognition 115, 2021, arXiv:1912.08881), with
their protocol.

Per dataset and seed: an MLP 2-1000-1000-1000-K (ReLU) is trained on 2-D data, ``--n`` reference samples per
class are drawn afresh from the same generator, every criterion scores the 3000 hidden neurons on them, its
scores are normalised per layer as the paper does for that criterion, and the 1000 lowest-ranked neurons of
one global ranking are removed at once, without fine-tuning. Reported: accuracy of the pruned model on the
training data (the quantity of their table, their ``scenario='train'``) and on a held-out test set drawn from
the generator (not used for anything else).

Data (as in their code, github.com/seulkiyeom/LRP_Pruning_toy_example, ``main.py``):

- ``circle``: ``sklearn.datasets.make_circles(noise=0.1, factor=0.3)``;
- ``moon``: ``sklearn.datasets.make_moons(noise=0.1)``;
- ``mult``: their 4-class spiral, ``N`` points per class with radius ``linspace(0, 1, N)`` and angle
  ``linspace(4j, 4(j + 1), N) + 0.2 * randn(N)``, the point ``(r sin t, r cos t)``.

Their reference samples come from the generator with ``random_state=seed`` and ``n * K`` samples in all; here
too (training and test sets use other random states). Their trained models are not public in a form we can
load, so each seed trains its own (Adam, full batch; the settings are in the JSON).

Criteria and normalisations (their ``FilterPruner.normalize_ranks_per_layer``):

- ``pbe``: xprune's ``"pbe"`` criterion as it comes (z+ on every linear layer, biases left out, relevance 1
  at the true class's logit, signed sum over the samples, ``R / sum |R|`` per layer);
- ``pbe logit-start``: the same started from the true class's logit value, as their toy code does
  (``output * T``): their setting, compared with their LRP row;
- ``pbe eps-linear``: epsilon 1e-6 on the linear layers instead of z+ (``composite=("pbe", {"linear":
  "epsilon"})``), to show why it is not the default;
- ``weight``: sum of |w| of the neuron's input weights, L1-normalised per layer;
- ``taylor``: xprune's ``"taylor"`` on the cross-entropy loss, L2-normalised per layer (Molchanov et al.'s
  per-sample |a * dC/da| averaged over samples, once issue 19's change to it is in);
- ``taylor-mean`` (where registered): |mean over samples of a * dC/da|, L2 per layer: the Taylor baseline as
  Yeom et al.'s code computes it (the row to compare with their Taylor figures);
- ``gradient``: xprune's ``"gradient"`` on the loss, L2-normalised per layer;
- ``random``: a uniformly random third.

Run: ``OMP_NUM_THREADS=1 python benchmarks/pbe_toy.py --seeds 3`` (writes ``benchmarks/results/pbe_toy.json``
and ``.md``).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import xprune
from xprune.models.mlp import MLP
from xprune.pipeline import default_mode
from xprune.select import select
from xprune.surgery import apply

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

#: The paper's post-pruning accuracies (%) with n = 10 reference samples per class (as quoted in issue 19).
#: Their LRP row is their toy code's setting, "pbe logit-start" here; their Taylor is "taylor-mean".
PAPER = {
    "circle": {"pbe logit-start": 99.99, "weight": 97.10, "taylor-mean": 90.47, "gradient": 83.89},
    "moon": {"pbe logit-start": 99.85, "weight": 99.60, "taylor-mean": 91.33, "gradient": 91.27},
    "mult": {"pbe logit-start": 91.93, "weight": 91.00, "taylor-mean": 81.58, "gradient": 75.16},
}
CLASSES = {"circle": 2, "moon": 2, "mult": 4}


def generate(name: str, n_total: int, random_state: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_total`` samples of a toy dataset, drawn as in Yeom et al.'s toy code with ``random_state``."""
    from sklearn.datasets import make_circles, make_moons

    if name == "circle":
        x, y = make_circles(n_samples=n_total, noise=0.1, factor=0.3, random_state=random_state)
    elif name == "moon":
        x, y = make_moons(n_samples=n_total, noise=0.1, random_state=random_state)
    elif name == "mult":
        rng = np.random.RandomState(random_state)
        k = CLASSES["mult"]
        per = n_total // k
        xs, ys = [], []
        for j in range(k):
            r = np.linspace(0.0, 1.0, per)
            t = np.linspace(j * 4, (j + 1) * 4, per) + rng.randn(per) * 0.2
            xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
            ys.append(np.full(per, j))
        x, y = np.concatenate(xs), np.concatenate(ys)
    else:
        raise ValueError(f"unknown toy dataset {name!r}; use circle, moon or mult")
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def their_net(k: int) -> torch.nn.Module:
    """The network their toy code builds (``Net`` in their ``main.py``), quirks included.

    ``nn.Sequential(OrderedDict([...]))`` with the key ``'nonlin2'`` given twice: the second ReLU replaces
    the first in place, so the layers are linear1, ReLU, Dropout(0.5), linear2, ReLU, linear3, output, with
    *no* ReLU between linear3 and the output layer.
    """
    from collections import OrderedDict

    nn = torch.nn
    return nn.Sequential(OrderedDict([
        ("linear1", nn.Linear(2, 1000)), ("nonlin1", nn.ReLU()), ("do1", nn.Dropout()),
        ("linear2", nn.Linear(1000, 1000)), ("nonlin2", nn.ReLU()),
        ("linear3", nn.Linear(1000, 1000)), ("output", nn.Linear(1000, k)),
    ]))  # fmt: skip


def train(model: MLP, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


@torch.no_grad()
def accuracy(model, x, y) -> float:
    return 100.0 * float((model(x).argmax(1) == y).float().mean())


def _takes(name: str, option: str) -> bool:
    cls = xprune.criteria.base._load(name)
    return option in inspect.signature(cls.__init__).parameters


def criteria() -> dict[str, dict]:
    """Label -> keyword arguments of :func:`xprune.score` (criterion, normalisation, options)."""
    loss = {"objective": "loss"} if _takes("taylor", "objective") else {}
    gloss = {"objective": "loss"} if _takes("gradient", "objective") else {}
    return {
        "pbe": {"criterion": "pbe", "normalize": "l1"},
        "pbe logit-start": {"criterion": "pbe", "start": "logit", "normalize": "l1"},
        "pbe eps-linear": {"criterion": "pbe", "composite": ("pbe", {"linear": "epsilon"}), "normalize": "l1"},
        "weight": {"criterion": "weight", "normalize": "l1"},
        "taylor": {"criterion": "taylor", "normalize": "l2", **loss},
        **({"taylor-mean": {"criterion": "taylor-mean", "normalize": "l2", "objective": "loss"}}
           if "taylor-mean" in xprune.criteria.available() else {}),
        "gradient": {"criterion": "gradient", "normalize": "l2", **gloss},
        "random": {"criterion": "random", "normalize": None},
    }


def prune_third(model, ref, spec: dict, seed: int):
    """The model with the 1000 globally lowest-ranked of its 3000 hidden neurons removed, and per-layer counts."""
    kw = dict(spec)
    name = kw.pop("criterion")
    if name == "random":
        kw["seed"] = seed
    scores = xprune.score(model, ref, name, **kw)
    plan = select(scores, 1 / 3, scope="global", warn=False)
    pruned = apply(model, plan, default_mode(plan))
    return pruned.eval(), {k: len(v) for k, v in plan.remove.items()}, plan.n_removed


def run(args) -> dict:
    specs = criteria()
    rows = []
    for ds in args.datasets:
        k = CLASSES[ds]
        for seed in range(args.seeds):
            x_tr, y_tr = generate(ds, args.train, 1000 + seed)
            x_te, y_te = generate(ds, args.test, 2000 + seed)
            ref = generate(ds, args.n * k, seed)  # their choice: random_state = seed, n per class
            torch.manual_seed(seed)
            model = MLP(2, (1000, 1000, 1000), k) if args.arch == "mlp" else their_net(k)
            t0 = time.perf_counter()
            train(model, x_tr, y_tr, args.epochs, args.lr)
            row = {"dataset": ds, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 1),
                   "before": {"train": accuracy(model, x_tr, y_tr), "test": accuracy(model, x_te, y_te)},
                   "after": {}}
            for label, spec in specs.items():
                t0 = time.perf_counter()
                pruned, per_layer, removed = prune_third(model, ref, spec, seed)
                row["after"][label] = {"train": accuracy(pruned, x_tr, y_tr), "test": accuracy(pruned, x_te, y_te),
                                       "removed": removed, "removed_per_layer": per_layer,
                                       "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            print(ds, seed, row["before"], {lab: round(v["train"], 2) for lab, v in row["after"].items()}, flush=True)
    described = {}
    for lab, spec in specs.items():
        kw = {k: v for k, v in spec.items() if k not in ("criterion", "normalize")}
        crit = xprune.criteria.get(spec["criterion"], **kw)
        described[lab] = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()},
                          "repr": repr(crit), "doc": (type(crit).__doc__ or "").strip().splitlines()[0]}
    return {"rows": rows, "criteria": described}


def summarise(rows: list[dict], labels: list[str], datasets: list[str]) -> dict:
    out = {}
    for ds in datasets:
        rs = [r for r in rows if r["dataset"] == ds]
        out[ds] = {"before": {s: statistics.mean(r["before"][s] for r in rs) for s in ("train", "test")}}
        for lab in labels:
            cell = {}
            for split in ("train", "test"):
                v = [r["after"][lab][split] for r in rs]
                cell[split] = {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
                               "min": min(v), "max": max(v)}
            out[ds][lab] = cell
    return out


def _shown(path) -> str:
    """``path`` relative to the repository when inside it."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(HERE.parent))
    except ValueError:
        return str(p)


def markdown(summary: dict, meta: dict, args) -> str:
    labels = list(next(iter(summary.values())).keys())[1:]
    lines = [
        "# Pruning by Explaining, toy study (generated by benchmarks/pbe_toy.py; do not edit)",
        "",
        f"Command: `{meta.get('command', '')}`; commit {meta.get('commit')} (dirty: {meta.get('dirty')}); "
        f"threads {meta.get('threads')}; {meta.get('date')}. Source: `{_shown(args.out)}`.",
        "",
        f"{'MLP 2-1000-1000-1000-K (ReLU)' if args.arch == 'mlp' else 'their toy code Net (2-1000-1000-1000-K, dropout after the first layer, no ReLU after the third)'}, {args.seeds} seeds (a model trained per seed, fresh reference samples), "
        f"n = {args.n} reference samples per class, 1000 of the 3000 hidden neurons removed at once by one "
        "global ranking, no fine-tuning. Accuracy (%) mean ± std over seeds; paper = Yeom et al.'s table (n = 10).",
        "",
    ]
    for split, title in (("train", "on the training data (the paper's quantity)"), ("test", "on a held-out test set")):
        lines += [f"## Post-pruning accuracy {title}", "",
                  "| dataset | unpruned | " + " | ".join(labels) + " |",
                  "|---" * (len(labels) + 2) + "|"]
        for ds, cell in summary.items():
            vals = [f"{cell[lab][split]['mean']:.2f} ± {cell[lab][split]['std']:.2f}" for lab in labels]
            lines.append(f"| {ds} | {cell['before'][split]:.2f} | " + " | ".join(vals) + " |")
            if split == "train":
                paper = [f"{PAPER[ds][lab]:.2f}" if lab in PAPER[ds] else "-" for lab in labels]
                lines.append(f"| {ds} (paper) | - | " + " | ".join(paper) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["circle", "moon", "mult"], choices=sorted(CLASSES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--n", type=int, default=10, help="reference samples per class")
    p.add_argument("--train", type=int, default=1000, help="training samples (all classes)")
    p.add_argument("--test", type=int, default=2000, help="held-out test samples (all classes)")
    p.add_argument("--epochs", type=int, default=300, help="full-batch Adam steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arch", choices=["mlp", "their-code"], default="mlp",
                   help="mlp: ReLU after every hidden layer (the paper); their-code: their Net (see their_net)")
    p.add_argument("--out", default=str(HERE / "results" / "pbe_toy.json"))
    args = p.parse_args(argv)
    try:
        from _meta import meta as provenance, write_json
    except ImportError:  # pragma: no cover - the shared provenance helper
        provenance = write_json = None
    t0 = time.perf_counter()
    result = run(args)
    labels = list(result["criteria"])
    result["summary"] = summarise(result["rows"], labels, args.datasets)
    result["paper"] = PAPER
    result["settings"] = {k: getattr(args, k) for k in ("datasets", "seeds", "n", "train", "test", "epochs", "lr",
                                                          "arch")}
    result["settings"].update({"model": "MLP(2, (1000, 1000, 1000), K), ReLU after every hidden layer"
                               if args.arch == "mlp" else "their toy code's Net: dropout after linear1, no ReLU "
                               "after linear3",
                               "optimizer": "Adam, full batch", "removed": "1000 of 3000, global ranking",
                               "reference": "n * K samples from the generator with random_state = seed",
                               "train_set": "random_state = 1000 + seed", "test_set": "random_state = 2000 + seed"})
    result["seconds"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    if write_json is not None:
        record = provenance()
        write_json(out, result, record=record)
    else:
        import json
        import subprocess

        record = {"command": " ".join(["python", *sys.argv]), "threads": torch.get_num_threads(),
                  "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
                  "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
        out.write_text(json.dumps({"meta": record, **result}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result["summary"], record, args) + "\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
