"""What does SInGE cost? Its time in forward+backward-pass equivalents, exact (batched) and fast.

The unit of cost is one plain forward + backward on the same batch (gradient of
the objective at every producer output: what ``"taylor"`` needs). Ratios are
"time of the scoring / time of one plain forward+backward".

(a) The reference ResNet (``xprune.models.pretrained("resnet", "mnist")``),
    N = ``--n`` reference samples in one batch, K = ``--k``:

    - ``"singe"`` (exact, batched): 1 + ceil((K-1) U / R) passes, U units,
      R = ``unit_batch`` copies of the batch per pass (default 256 // N), each
      pass R times the samples of a plain one: the sample work of (K-1) U
      plain passes, less what larger batches save;
    - ``"singe-fast"``, scope "layer": 1 + (K-1) L passes (L unit groups);
      scope "network": K passes. Measured with ``--repeats`` paired runs.

(b) A random-init Hugging Face ``ResNetForImageClassification(ResNetConfig())``
    (ResNet-50 defaults) at 224x224, batch ``--r50-n``: the whole exact scoring
    (tens of thousands of units) is NOT run. One batched exact pass (R =
    ``--r50-r`` copies, one group) and one fast-mode pass (one group, shared
    gates folded into BatchNorm) are timed, and the totals are extrapolated
    from the pass counts; the output says so. The fast mode's total is
    extrapolated too when ``--r50-fast-total`` is not given (1 + (K-1) L passes
    of ResNet-50 take over an hour on one CPU thread).

One torch thread by default (the machine is shared); set OMP_NUM_THREADS=1 too.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/singe_cost.py [--n 64] [--k 10] [--skip-r50]``
Writes ``benchmarks/results/singe_cost.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

import xprune
from xprune import _inputs
from xprune.criteria.singe import SInGE, SInGEFast, _Gates, _repeat, _repeat_objective, objective_value
from xprune.data import reference_samples
from xprune.models import pretrained

import _meta

OUT = Path(__file__).resolve().parent / "results" / "singe_cost.json"


def plain(model, units, batches):
    """One forward + backward per batch: gradient of the target logits at every producer output."""
    mods = dict(model.named_modules())
    producers = [p for g in units for p in g.producers]
    for x, y in batches:
        store = []
        hs = [mods[p].register_forward_hook(lambda m, a, o: store.append(o)) for p in producers]
        try:
            with torch.enable_grad():
                out = _inputs.logits(_inputs.call(model, x))
                torch.autograd.grad(objective_value(out, y), store)
        finally:
            for h in hs:
                h.remove()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def reference_resnet(args):
    model, data = pretrained("resnet", "mnist", progress=False)
    model.eval()
    ref = reference_samples(data.train, -(-args.n // data.num_classes), seed=0)  # then the first n
    batches = [(ref.X[: args.n], ref.y[: args.n])]
    n = len(batches[0][1])
    units = xprune.discover(model, batches[0][0][:1])
    L, U = len(units), units.total
    plain(model, units, batches)  # warm-up
    rows = []
    for name, crit, repeats in (("singe-fast (network)", SInGEFast(n_steps=args.k, scope="network"), args.repeats),
                                ("singe-fast (layer)", SInGEFast(n_steps=args.k), args.repeats),
                                ("singe (exact, batched)", SInGE(n_steps=args.k), 1)):
        pairs = []
        for _ in range(repeats):  # paired: plain, then the scoring, back to back (the machine's load drifts)
            tb = timed(lambda: plain(model, units, batches))
            ts = timed(lambda: crit.compute(model, units, batches))
            pairs.append((tb, ts))
        rows.append({"criterion": name, "K": args.k, "passes": crit.passes,
                     "unit_batch": crit.unit_batch or max(1, 256 // n) if crit.mode == "exact" else None,
                     "seconds": statistics.median(ts for _, ts in pairs),
                     "plain_seconds": statistics.median(tb for tb, _ in pairs),
                     "ratio": statistics.median(ts / tb for tb, ts in pairs)})
        print(f"  {name}: {rows[-1]['passes']} passes, {rows[-1]['seconds']:.2f} s, "
              f"{rows[-1]['ratio']:.1f} x plain fwd+bwd", flush=True)
    return {"model": "xprune resnet (mnist)", "n": n, "groups": L, "units": U, "rows": rows}


def resnet50(args):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig()).eval()
    n, r, K = args.r50_n, args.r50_r, args.k
    x = torch.randn(n, 3, 224, 224)
    y = torch.randint(0, model.config.num_labels, (n,))
    units = xprune.discover(model, x[:1])
    L, U = len(units), units.total
    group = units.groups[len(units.groups) // 2]
    crit = SInGE(n_steps=K, unit_batch=r)
    names = [g.name for g in units]
    a1 = crit.points[1]
    t_plain = statistics.median(timed(lambda: plain(model, units, [(x, y)])) for _ in range(2))
    gates = _Gates(model, units, "after-norm", fold=False)
    try:
        ones = {g.name: torch.ones(n, g.size) for g in units}
        t0 = time.perf_counter()
        _, obj = crit._pass(model, gates, ones, names, x, None, y, "label")  # a_0 = 1, shared by all units
        t_first = time.perf_counter() - t0
        gates.values.update({k: None for k in names})
        rep = _repeat(x, r)
        robj = _repeat_objective(obj, r, rep)
        v = torch.ones(r, n, group.size)
        v[torch.arange(r), :, torch.arange(r)] = a1
        values = dict({k: None for k in names}, **{group.name: v.reshape(r * n, -1)})
        t_exact_pass = timed(lambda: crit._pass(model, gates, values, [group.name], rep, robj))
    finally:
        gates.remove()
    fast = SInGEFast(n_steps=K)
    folded = _Gates(model, units, "after-norm", fold=True)
    try:
        fvalues = dict({k: None for k in names}, **{group.name: torch.full((group.size,), a1)})
        t_fast_pass = timed(lambda: fast._pass(model, folded, fvalues, [group.name], x, obj))
    finally:
        folded.remove()
    exact_passes = 1 + math.ceil((K - 1) * U / r)
    exact_total = t_first + (exact_passes - 1) * t_exact_pass
    fast_passes = 1 + (K - 1) * L
    out = {"model": "transformers ResNetForImageClassification(ResNetConfig()) random init, 224x224",
           "n": n, "unit_batch": r, "K": K, "groups": L, "units": U, "group_timed": group.name,
           "plain_seconds": t_plain, "first_pass_seconds": t_first,
           "exact_pass_seconds": t_exact_pass, "exact_pass_ratio": t_exact_pass / t_plain,
           "exact_passes": exact_passes, "exact_total_seconds_extrapolated": exact_total,
           "exact_total_ratio_extrapolated": exact_total / t_plain,
           "fast_pass_seconds": t_fast_pass, "fast_passes": fast_passes,
           "fast_total_seconds_extrapolated": t_plain + (fast_passes - 1) * t_fast_pass,
           "fast_total_ratio_extrapolated": (t_plain + (fast_passes - 1) * t_fast_pass) / t_plain,
           "note": "exact and fast totals extrapolated from one timed pass each and the pass counts; not run whole"}
    if args.r50_fast_total:
        t = timed(lambda: fast.compute(model, units, [(x, y)]))
        out.update(fast_total_seconds_measured=t, fast_total_ratio_measured=t / t_plain)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="reference samples (one batch) on the reference ResNet")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="paired runs of the fast modes (the exact one: 1)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--r50-n", type=int, default=8)
    ap.add_argument("--r50-r", type=int, default=4, help="copies per exact pass on ResNet-50 (memory bound)")
    ap.add_argument("--r50-fast-total", action="store_true", help="also run the whole fast scoring on ResNet-50")
    ap.add_argument("--skip-r50", action="store_true")
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    payload = {"threads": args.threads}
    if not args.skip_r50:
        print("(b) ResNet-50 (random init, 224x224)", flush=True)
        payload["resnet50"] = r50 = resnet50(args)
        print(f"  plain fwd+bwd {r50['plain_seconds']:.1f} s; one exact pass ({r50['unit_batch']} copies of "
              f"{r50['n']}) {r50['exact_pass_seconds']:.1f} s = {r50['exact_pass_ratio']:.2f} x plain; "
              f"{r50['exact_passes']} passes -> extrapolated {r50['exact_total_seconds_extrapolated'] / 3600:.1f} h "
              f"= {r50['exact_total_ratio_extrapolated']:.0f} x plain; fast: {r50['fast_passes']} passes, one "
              f"{r50['fast_pass_seconds']:.1f} s -> extrapolated {r50['fast_total_seconds_extrapolated'] / 60:.1f} min "
              f"= {r50['fast_total_ratio_extrapolated']:.0f} x plain", flush=True)
        _meta.write_json(args.json, payload)  # written now too: (a) below takes minutes
    print("(a) reference ResNet", flush=True)
    payload["reference_resnet"] = reference_resnet(args)
    _meta.write_json(args.json, payload)


if __name__ == "__main__":
    main()
