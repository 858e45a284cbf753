"""What does ``"singe"`` cost? Time of K-step SInGE relative to one forward+backward.

On the reference ResNet (``xprune.models.pretrained("resnet", "mnist")``) and
N reference samples, the time of ``SInGE(...).compute`` is divided by the time
of one plain forward + backward on the same batches (gradient of the target
logit with respect to every producer output: what ``"taylor"`` needs). The
ratio is compared with the number of forward+backward passes the mode makes:

- fast, scope="network": K passes (target: ratio <= 1.1 x K);
- fast, scope="layer":   1 + (K-1) L passes (L unit groups);
- exact:                 1 + (K-1) U passes (U units; not run here by default).

Each ratio is the median over ``--repeats`` paired runs (plain, then SInGE,
back to back, so load drift cancels), with ``--threads`` torch threads
(default 1: the machine is shared).

Run: ``.venv/bin/python benchmarks/singe_cost.py [--n 128] [--batch 128] [--ks 1 5 10 20] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import xprune
from xprune import _inputs
from xprune.criteria.singe import SInGE, objective_value
from xprune.data import reference_samples
from xprune.models import pretrained


def plain(model, units, batches):
    """One forward + backward per batch: gradient of the target logits at every producer output."""
    mods = dict(model.named_modules())
    producers = [p for g in units for p in g.producers]
    for x, y in batches:
        store = []
        hs = [mods[p].register_forward_hook(lambda m, a, o: store.append(o)) for p in producers]
        try:
            with torch.enable_grad():
                out = _inputs.logits(model(x))
                torch.autograd.grad(objective_value(out, y), store)
        finally:
            for h in hs:
                h.remove()


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128, help="reference samples")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, data = pretrained("resnet", "mnist", progress=False)
    model.eval()
    ref = reference_samples(data.train, max(1, args.n // data.num_classes), seed=0)
    batches = list(ref.batches(args.batch))
    units = xprune.discover(model, batches[0][0][:1])
    L, U = len(units), units.total
    rows = []
    plain(model, units, batches)  # warm-up
    bases = []
    for K in args.ks:
        for scope in ("network", "layer"):
            crit = SInGE(n_steps=K, scope=scope)
            pairs = []
            for _ in range(args.repeats):  # paired, interleaved: the machine's load drifts
                tb = timed(lambda: plain(model, units, batches), 1)
                ts = timed(lambda: crit.compute(model, units, batches), 1)
                pairs.append((tb, ts))
            bases += [tb for tb, _ in pairs]
            passes = crit.passes // len(batches)
            rows.append({"K": K, "scope": scope, "passes_per_batch": passes,
                         "seconds": statistics.median(ts for _, ts in pairs),
                         "ratio": statistics.median(ts / tb for tb, ts in pairs)})
    base = statistics.median(bases)
    for r in rows:
        r["ratio_per_pass"] = r["ratio"] / r["passes_per_batch"]
        r["target"] = f"<= {1.1 * r['passes_per_batch']:.1f}"
        r["met"] = r["ratio"] <= 1.1 * r["passes_per_batch"]
    print(f"ResNet (MNIST), {len(ref)} samples in batches of {args.batch}, {L} unit groups, {U} units, "
          f"{args.threads} thread(s); one forward+backward: {1000 * base:.1f} ms\n")
    print("| K | scope | fwd+bwd passes / batch | time (ms) | x fwd+bwd | x per pass | target | met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['K']} | {r['scope']} | {r['passes_per_batch']} | {1000 * r['seconds']:.1f} | "
              f"{r['ratio']:.2f} | {r['ratio_per_pass']:.3f} | {r['target']} | {'yes' if r['met'] else 'no'} |")
    if args.json:
        from xprune._io import atomic_write

        atomic_write(args.json, json.dumps({"meta": __import__("_meta").meta(), "base_seconds": base, "groups": L, "units": U, "n": len(ref),
                                            "threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
