"""Remove a planted shortcut from a CNN trained on Fashion-MNIST (issue 21, demonstration 2).

Setting
-------
- Data: Fashion-MNIST (``xprune.data.load("fashion-mnist")``, the Debian package ``dataset-fashion-mnist``;
  the script stops with a message when it is missing), standardised as ``load`` does; the first ``--n-train``
  training images (stratified order of ``load``).
- Shortcut: a bright ``PATCH`` x ``PATCH`` square (the largest input value) in the top-left corner, pasted on
  ``--plant`` (default 50%) of the training images of class ``--shortcut`` (default 6, *Shirt*) and on no other
  training image.
- Model: :class:`xprune.models.VGG` (widths 16/32/64, hidden 128, batch norm), ``--epochs`` epochs of
  :func:`xprune.models.train`; cached under the xprune cache folder keyed by every setting.
- Behaviour set (what should go): validation images of the *other* classes with the patch, labelled with the
  shortcut class (the units that push them there); general set: clean validation images with their labels
  (``--n-ref`` each, drawn with the run's seed). Choosing the removal uses ``--n-select`` other ones of each.
- Correction: :func:`xprune.correct` with ``units="channels"`` (conv channels and hidden neurons), contrast
  ``behaviour - general`` of per-layer-normalised scores, removal counts on a grid up to ``--budget`` of the
  channels; target: the rate at which patched other-class images go to the shortcut class cut by
  ``--suppression`` (default 50%) while clean accuracy stays within ``--max-general-change`` (default 2%, relative).
- Report, on ``--n-test`` test images: accuracy on patched images of the other classes (true labels), the
  rate at which they are classified as the shortcut class, and clean accuracy, before and after.
- Methods: ``lrp`` (the channels kind's default composite, epsilon-plus, BatchNorm merged); baselines:
  ``activation`` and ``taylor`` contrasts, ``weight``, ``random``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control_shortcut.py`` (training the first time, about 4
minutes, then about 1.5 minutes on one core); ``--quick`` for a one-minute smoke run. Writes
``benchmarks/results/control_shortcut.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _control_common as common  # noqa: E402
from _control_common import data_free_contrast  # noqa: E402
from render import _source_line  # noqa: E402
import _meta

import xprune
from xprune.errors import XpruneError
from xprune.models import VGG, cache_dir
from xprune.models import train as train_model

PATCH = 4
WIDTHS = (16, 32, 64)
HIDDEN = 128
METHODS = [
    ("lrp", "lrp", {}),
    ("activation diff.", "activation", {}),
    ("taylor diff.", "taylor", {}),
    ("weight", "weight", {}),
    ("random", "random", {}),
]


def patched(X: torch.Tensor, value: float) -> torch.Tensor:
    X = X.clone()
    X[:, :, 1:1 + PATCH, 1:1 + PATCH] = value
    return X


def train(ds, n_train: int, shortcut: int, plant: float, epochs: int, seed: int = 0):
    key = hashlib.sha256(json.dumps([n_train, shortcut, plant, epochs, seed, PATCH, WIDTHS, HIDDEN],
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / "control" / f"shortcut-vgg-{key}.pt"
    model = VGG(in_channels=1, num_classes=10, widths=WIDTHS, image_size=28, hidden=HIDDEN)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), path, 0.0
    X, y = ds.train.X[:n_train].clone(), ds.train.y[:n_train]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.nonzero(y == shortcut).flatten()
    chosen = idx[torch.rand(len(idx), generator=gen) < plant]
    X[chosen] = patched(X[chosen], float(ds.train.X.max()))
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train_model(model, (X, y), epochs=epochs, lr=3e-3, batch_size=128, seed=seed, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), path, time.perf_counter() - t0


@torch.no_grad()
def predict(model, X: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(X[i:i + 512]).argmax(-1) for i in range(0, len(X), 512)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the stored .json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--shortcut", type=int, default=6)
    ap.add_argument("--plant", type=float, default=0.5)
    ap.add_argument("--n-ref", type=int, default=256)
    ap.add_argument("--n-select", type=int, default=1000, help="validation images of each set for choosing n")
    ap.add_argument("--n-test", type=int, default=3000)
    ap.add_argument("--budget", type=float, default=0.1, help="largest fraction of channels removed")
    ap.add_argument("--suppression", type=float, default=0.5)
    ap.add_argument("--max-general-change", type=float, default=0.02)
    ap.add_argument("--methods", default=",".join(m[0] for m in METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "control_shortcut"))
    args = ap.parse_args(argv)
    if args.render_only:
        write_outputs(Path(args.out))
        return 0
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in METHODS if m[0] in args.methods.split(",")]
    if args.quick:
        seeds, args.n_ref, args.n_select, args.n_test = seeds[:1], 64, 256, 1000
        methods = [m for m in methods if m[1] in ("lrp", "random")]
        if not args.out.endswith("_quick"):
            args.out += "_quick"
    try:
        ds = xprune.data.load("fashion-mnist")
    except XpruneError as e:
        print(f"skipped: Fashion-MNIST is not available here ({e})")
        return 0
    t_start = time.perf_counter()
    model, path, train_s = train(ds, args.n_train, args.shortcut, args.plant, args.epochs)
    hi = float(ds.train.X.max())
    k = args.shortcut
    test = ds.test[: args.n_test]
    other = test.y != k
    Xp, yp = patched(test.X[other], hi), test.y[other]

    def measure(m):
        pp = predict(m, Xp)
        return {"patched_accuracy": float((pp == yp).float().mean()),
                "shortcut_rate": float((pp == k).float().mean()),
                "clean_accuracy": float((predict(m, test.X) == test.y).float().mean())}

    base = measure(model)
    print(f"model {path} (trained in {train_s:.0f} s): " + ", ".join(f"{a} {b:.4f}" for a, b in base.items()),
          flush=True)
    from xprune.control import Metric

    val = ds.val
    rows = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(val), generator=gen)
        vo = perm[val.y[perm] != k]
        b_ix, s_ix = vo[: args.n_ref], vo[args.n_ref: args.n_ref + args.n_select]
        g_ix, h_ix = perm[: args.n_ref], perm[args.n_ref: args.n_ref + args.n_select]
        behaviour = (patched(val.X[b_ix], hi), torch.full((len(b_ix),), k))
        general = (val.X[g_ix], val.y[g_ix])
        sel_b, sel_g = patched(val.X[s_ix], hi), (val.X[h_ix], val.y[h_ix])
        for label, crit, opts in methods:
            t0 = time.perf_counter()
            opts = dict(opts, seed=seed) if crit == "random" else dict(opts)
            if crit in ("weight", "random"):
                opts = {"contrast": data_free_contrast(model, val.X[:1], crit, "channels", **opts)}
            corr = xprune.correct(
                model, behaviour, general, units="channels", criterion=crit, budget=args.budget,
                behaviour_metric=Metric(lambda m, x=sel_b: float((predict(m, x) == k).float().mean()), True,
                                        "shortcut rate (selection images)"),
                general_metric=Metric(lambda m, x=sel_g[0], y=sel_g[1]: float((predict(m, x) == y).float().mean()),
                                      False,
                                      "clean accuracy (selection images)"),
                suppression=args.suppression, max_general_change=args.max_general_change, **opts)
            after = measure(corr.model)
            row = {"seed": seed, "method": label, "removed": int(corr.n), "met": bool(corr.met),
                   "reason": getattr(corr, "reason", None), "before": base, "after": after, "curve": corr.curve,
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"  seed {seed} {label:17s} removed {row['removed']:3d} met {row['met']!s:5s} " +
                  ", ".join(f"{a} {base[a]:.3f} -> {after[a]:.3f}" for a in base) + f" ({row['seconds']:.0f} s)",
                  flush=True)
    elapsed = time.perf_counter() - t_start
    n_channels = sum(WIDTHS) + HIDDEN
    payload = {"model": {"arch": "vgg", "widths": list(WIDTHS), "hidden": HIDDEN, "channels": n_channels},
               "train": {"n_train": args.n_train, "epochs": args.epochs, "seconds": train_s},
               "shortcut_class": k, "class_name": ds.classes[k] if ds.classes else str(k), "plant": args.plant,
               "patch": PATCH, "n_ref": args.n_ref, "n_select": args.n_select, "n_test": len(test),
               "n_patched_test": len(yp), "budget": args.budget, "suppression": args.suppression,
               "max_general_change": args.max_general_change, "seeds": seeds, "quick": args.quick,
               "unpruned": base, "rows": rows, "seconds": elapsed}
    out = Path(args.out)
    _meta.write_json(out.with_suffix(".json"), payload)
    write_outputs(out)
    print(f"\ntotal {elapsed:.0f} s")
    return 0


def write_outputs(out: Path) -> None:
    """``out``.md (the tables) and ``out``.png (the curves) from the stored ``out``.json."""
    common.write_outputs(out, render, units="channels", behaviour="shortcut rate", general="clean accuracy")


def render(d: dict) -> str:
    """Markdown tables of a control_shortcut JSON: per method and seed, then the mean over seeds."""
    u = d["unpruned"]
    out = [(f"VGG ({d['model']['channels']} channels) on Fashion-MNIST with a {d['patch']}x{d['patch']} patch on "
           f"{d['plant']:.0%} of the training images of class {d['shortcut_class']} ({d['class_name']}). Unpruned, "
           f"on {d['n_test']} test images: clean accuracy {u['clean_accuracy']:.4f}; patched images of the other "
           f"classes ({d['n_patched_test']}): accuracy {u['patched_accuracy']:.4f}, sent to the shortcut class "
           f"{u['shortcut_rate']:.4f}. Budget {d['budget']:.0%} of the channels; target: shortcut rate cut by "
           f"{d['suppression']:.0%} (on selection images) with clean accuracy within {d['max_general_change']:.0%}."),
           "", "| method | seed | removed | patched acc. after | shortcut rate after | clean acc. after | met |",
           "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        a = r["after"]
        out.append(f"| {r['method']} | {r['seed']} | {r['removed']} | {a['patched_accuracy']:.4f} | "
                   f"{a['shortcut_rate']:.4f} | {a['clean_accuracy']:.4f} | {'yes' if r['met'] else 'no'} |")
    out += ["", "Mean over seeds:", "", "| method | met | removed | patched acc. | shortcut rate | clean acc. |",
            "|---|---|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in d["rows"]):
        rs = [r for r in d["rows"] if r["method"] == m]
        mean = {key: statistics.fmean(r["after"][key] for r in rs) for key in u}
        out.append(f"| {m} | {sum(r['met'] for r in rs)}/{len(rs)} | {statistics.fmean(r['removed'] for r in rs):.1f}"
                   f" | {mean['patched_accuracy']:.4f} | {mean['shortcut_rate']:.4f} | {mean['clean_accuracy']:.4f} |")
    counts = sorted({c["removed"] for r in d["rows"] for c in r["curve"]})
    out += ["", ("Shortcut rate / clean accuracy on the selection images after removing the top-n channels (mean over "
            "seeds; the curve `correct` chose from):"), "",
            "| method | " + " | ".join(f"n={n}" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for m in dict.fromkeys(r["method"] for r in d["rows"]):
        rs = [r for r in d["rows"] if r["method"] == m]
        cells = []
        for n in counts:
            pts = [c for r in rs for c in r["curve"] if c["removed"] == n]
            cells.append("—" if not pts else f"{statistics.fmean(p['behaviour'] for p in pts):.3f} / "
                                             f"{statistics.fmean(p['general'] for p in pts):.3f}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", _source_line(d, script="control_shortcut.py")]  # the provenance line of every rendered table
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
