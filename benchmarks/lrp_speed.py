"""How fast is LRP scoring? xprune.lrp vs a plain gradient and vs zennit 0.5.1.

For N reference samples (in batches) the time of one LRP pass that reads the
relevance at the output of every conv/linear layer (what the ``"lrp"``
criterion needs) and at the input is divided by

- the time of a plain forward + backward on the same samples (gradient of the
  target logit with respect to the input and every conv/linear output:
  the "cost of a gradient"), and
- zennit's time for the same composite (its rules, SequentialMergeBatchNorm,
  relevance read at the same layer outputs).

Targets: <= 1.5x fwd+bwd for epsilon/z+ composites, <= 2.5x for alpha-beta,
and faster than zennit.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lrp_speed.py [--n 256] [--batch 64] [--threads 1]
[--repeats 5] [--wall] [--json benchmarks/results/lrp_speed.json]`` (zennit is needed for the zennit column:
``pip install --no-deps zennit==0.5.1``). The figures and the run's provenance (``benchmarks/_meta.py``)
go to the JSON file (default ``benchmarks/results/lrp_speed.json``; ``--json ''`` to skip).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from xprune import lrp
from xprune.models import VGG, ResNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import meta, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def dense(model):
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def plain(model, batches, layers):
    mods = dict(model.named_modules())
    for x, y in batches:
        store = []
        hs = [mods[n].register_forward_hook(lambda m, a, o: store.append(o)) for n in layers]
        x = x.clone().requires_grad_(True)
        out = model(x)
        for h in hs:
            h.remove()
        seed = torch.zeros_like(out)
        seed[torch.arange(len(y)), y] = 1.0
        grads = torch.autograd.grad(out, [x, *store], seed)
        [(t * g).sum() for t, g in zip([x, *store], grads)]


def ours(model, batches, layers, composite):
    for x, y in batches:
        lrp.relevance(model, x, y, composite, layers)


def theirs(twin, batches, layers, composite_factory):
    from _zennit_oracle import zennit_relevance_twin

    for x, y in batches:
        zennit_relevance_twin(twin, x, y, composite_factory(), layers)


def timeit_all(fns: dict, repeats: int, clock=time.process_time) -> dict:
    """Median time of each function; the functions run round-robin so that load drifts hit all alike.

    The default clock is the process CPU time: on a shared machine it is far
    less sensitive to other processes than wall time (use ``--threads 1``).
    """
    for fn in fns.values():
        fn()  # warm-up
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            ts[k].append(clock() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256, help="reference samples")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--wall", action="store_true", help="wall-clock time instead of process CPU time")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "lrp_speed.json"),
                   help="write the figures here ('' to skip)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import _zennit_oracle as zo
    except Exception as e:  # noqa: BLE001 - zennit is optional here
        print(f"(zennit unavailable: {e}; skipping the zennit column)")
        zo = None

    models = {
        "VGG (6 conv, 32x32)": VGG(in_channels=3, num_classes=10, widths=(32, 64, 128), image_size=32, convs_per_stage=2),
        "ResNet (2x3 blocks, 32x32)": ResNet(in_channels=3, num_classes=10, widths=(32, 64, 128), blocks_per_stage=2),
    }
    composites = ["epsilon-plus", "epsilon-alpha2-beta1"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, N={args.n}, batch={args.batch}, "
          f"median of {args.repeats}, {'wall' if args.wall else 'CPU'} seconds")  # fmt: skip
    print(f"{'model':28s} {'composite':22s} {'fwd+bwd':>9s} {'xprune':>9s} {'zennit':>9s} "
          f"{'x/fwd+bwd':>10s} {'zennit/x':>9s}")  # fmt: skip
    rows = []
    for mname, model in models.items():
        for m in model.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        model.eval()
        x = torch.rand(args.n, 3, 32, 32)
        y = torch.randint(0, 10, (args.n,))
        batches = [(x[i : i + args.batch], y[i : i + args.batch]) for i in range(0, args.n, args.batch)]
        layers = dense(model)
        fns = {"plain": lambda: plain(model, batches, layers)}
        twin = zo.zennit_model(model) if zo is not None else None  # our Add -> zennit's Sum, built once
        for cname in composites:
            comp = lrp.composite(cname)
            fns[("ours", cname)] = lambda comp=comp: ours(model, batches, layers, comp)
            if twin is not None:
                fns[("zennit", cname)] = lambda c=cname: theirs(twin, batches, layers, lambda: zo.preset(c))
        t = timeit_all(fns, args.repeats, time.perf_counter if args.wall else time.process_time)
        for cname in composites:
            t_plain, t_ours, t_z = t["plain"], t[("ours", cname)], t.get(("zennit", cname), float("nan"))
            rows.append({"model": mname, "composite": cname, "fwd_bwd_s": t_plain, "xprune_s": t_ours,
                         "zennit_s": None if t_z != t_z else t_z, "xprune_over_fwd_bwd": t_ours / t_plain,
                         "zennit_over_xprune": None if t_z != t_z else t_z / t_ours})
            print(f"{mname:28s} {cname:22s} {t_plain:9.3f} {t_ours:9.3f} {t_z:9.3f} "
                  f"{t_ours / t_plain:10.2f} {t_z / t_ours:9.2f}")  # fmt: skip
    if args.json:
        settings = {"n": args.n, "batch": args.batch, "repeats": args.repeats, "clock": "wall" if args.wall else "cpu",
                    "zennit": zo is not None}
        write_json(args.json, {"settings": settings, "rows": rows},
                   record=meta(["benchmarks/lrp_speed.py", *(sys.argv[1:] if argv is None else argv)]))
    return rows


if __name__ == "__main__":
    main()
