"""Realised CPU speed-up of physically removed channels against the MAC reduction.

For the ResNet-style and the VGG-style reference models, remove 25/50/75% of
the channels (uniformly per layer, so every layer shrinks) and measure, in one
run, MACs (1 multiply-add = 1 MAC) and median CPU latency at batch sizes 1 and
64. Prints, per setting, the MAC reduction (MACs before / after), the speed-up
(latency before / after) and their ratio, speed-up / MAC reduction (target:
>= 0.8). Weights are random: latency does not depend on their values.

Usage: python benchmarks/speedup.py [--size 28] [--threads N] [--repeats 30] [--json PATH]
(default JSON: benchmarks/results/speedup.json with --size 28, speedup-SIZE.json otherwise; the file
carries the run's provenance from benchmarks/_meta.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import xprune
from xprune import evaluate
from xprune.models import build

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import ROOT, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=28, help="input height/width (default 28, MNIST-sized)")
    ap.add_argument("--widths", default="32,64,128", help="channel widths of the three stages")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", help="write the figures to this JSON file (default benchmarks/results/speedup.json, "
                    "speedup-SIZE.json for another --size; '' to skip)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    widths = tuple(int(w) for w in args.widths.split(","))
    rows = []
    print(f"torch threads: {torch.get_num_threads()}, input 1x{args.size}x{args.size}, widths {widths}")
    print(f"{'model':<7} {'rate':>5} {'batch':>5} {'MACs red.':>9} {'speed-up':>9} {'ratio':>6}  ms before -> after")
    for arch in ("resnet", "vgg"):
        model = build(arch, input_shape=(1, args.size, args.size), num_classes=10, widths=widths).eval()
        x1 = torch.randn(1, 1, args.size, args.size)
        scores = xprune.score(model, None, "l2", example_inputs=x1)
        base = evaluate.count(model, x1)["macs"]
        for rate in (0.25, 0.5, 0.75):
            pruned = xprune.apply(model, xprune.select(scores, rate, scope="local"))
            macs = evaluate.count(pruned, x1)["macs"]
            for batch in (1, 64):
                x = torch.randn(batch, 1, args.size, args.size)
                # interleave the two measurements so drifts of the machine hit both alike
                t0, t1 = [], []
                for _ in range(3):
                    t0.append(evaluate.latency(model, x, repeats=args.repeats)["ms"])
                    t1.append(evaluate.latency(pruned, x, repeats=args.repeats)["ms"])
                before, after = sorted(t0)[1], sorted(t1)[1]
                red, speed = base / macs, before / after
                rows.append({"model": arch, "rate": rate, "batch": batch, "mac_reduction": red,
                             "speedup": speed, "ratio": speed / red, "ms_before": before, "ms_after": after})
                print(f"{arch:<7} {rate:>5.2f} {batch:>5} {red:>8.2f}x {speed:>8.2f}x {speed / red:>6.2f}"
                      f"  {before:.3f} -> {after:.3f}")
    worst = min(r["ratio"] for r in rows)
    print(f"min speed-up / MAC-reduction over all settings: {worst:.2f} (target >= 0.8)")
    path = args.json if args.json is not None else str(
        ROOT / "benchmarks" / "results" / ("speedup.json" if args.size == 28 else f"speedup-{args.size}.json"))
    if path:
        settings = {"size": args.size, "widths": list(widths), "repeats": args.repeats, "weights": "random",
                    "removal": "uniform per layer (l2, scope local)", "latency": "median of 3 interleaved medians"}
        write_json(path, {"settings": settings, "rows": rows})


if __name__ == "__main__":
    main()
