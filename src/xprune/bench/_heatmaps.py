"""Scenario ``heatmaps``: LRP heatmaps of a few inputs before and after pruning 50% of the channels."""

from __future__ import annotations

from typing import Any

import torch

from .. import evaluate
from ._common import Context


def _enlarge(image: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Nearest-neighbour upscaling of ``[C, H, W]`` so that tiny (8x8) inputs are visible on the page."""
    k = max(1, size // image.shape[-1])
    return image.repeat_interleave(k, -1).repeat_interleave(k, -2)


def heatmaps(ctx: Context) -> dict:
    """LRP heatmaps of a few test digits for the reference VGG before and after pruning 50% with lrp."""
    import xprune

    from ..data import reference_samples
    from ..lrp import save_heatmap
    from ..models import pretrained

    model, ds = pretrained("vgg", "digits", progress=False)
    ref = reference_samples(ds.train, 10, seed=ctx.seeds[0])
    small = xprune.prune(model, ref, "lrp", 0.5)
    acc = {"before": evaluate.accuracy(model, ds.test), "after": evaluate.accuracy(small, ds.test)}
    folder = ctx.out / "heatmaps"
    folder.mkdir(parents=True, exist_ok=True)
    picks = [int((ds.test.y == c).nonzero()[0]) for c in (0, 3, 5, 8)]
    x, y = ds.test.X[picks], ds.test.y[picks]
    rows = []
    for i, (xi, yi) in enumerate(zip(x, y, strict=True)):
        entry: dict[str, Any] = {"label": int(yi)}
        for tag, m in (("before", model), ("after", small)):
            r = xprune.explain(m, xi[None], int(yi))
            save_heatmap(_enlarge(r[0]), folder / f"{i}-{tag}.png")
            entry[tag] = r[0]
            entry[f"pred_{tag}"] = int(m.eval()(xi[None]).argmax())
        a, b = entry.pop("before").flatten(), entry.pop("after").flatten()
        entry["pearson"] = round(float(torch.corrcoef(torch.stack([a, b]))[0, 1]), 4)
        save_heatmap(_enlarge(xi), folder / f"{i}-input.png", cmap="gray")
        rows.append(entry)
    ctx.advance(1)
    md = [
        f"VGG reference on digits, 50% of the channels removed with `lrp` (10 samples per class), no fine-tuning; "
        f"test accuracy {acc['before']:.3f} -> {acc['after']:.3f}.\n",
        "| input | label | before (pred) | after (pred) | Pearson |",
        "|---|---|---|---|---|",
    ]
    for i, e in enumerate(rows):
        md.append(
            f"| ![](heatmaps/{i}-input.png) | {e['label']} | ![](heatmaps/{i}-before.png) ({e['pred_before']}) | "
            f"![](heatmaps/{i}-after.png) ({e['pred_after']}) | {e['pearson']:.4f} |"
        )
    payload = {"accuracy": acc, "inputs": rows}
    ctx.write("heatmaps", payload, "\n".join(md))
    return payload
