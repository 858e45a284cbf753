"""Scale benchmark: distributed scoring throughput and scoring memory.

Prints

1. scoring throughput (samples/s) with 1 process and with 2 gloo processes
   (one torch thread each) on the same reference samples, and their ratio;
2. peak memory while scoring 1k, 4k and 16k reference samples streamed batch
   by batch (it should not grow with the number of samples);
3. that peak relative to one training step (forward, cross-entropy,
   backward, SGD-with-momentum step) at the same batch size.

Memory method: every measurement runs in a fresh Python process and reads
the process's high-water resident set size (``resource.getrusage(...).ru_maxrss``)
once after the setup (imports, model built, one forward of a single sample
without gradients) and once after the measured work. The *increment* is the
memory the work needed on top of the setup; the absolute peak includes
torch itself (~hundreds of MB). RSS counts pages the allocator touched, so
it is an upper bound on the tensors' memory; torch has no allocator
statistics on the CPU. The reference samples are generated batch by batch
(never held in memory), so what is measured is scoring, not the data.

Usage::

    .venv/bin/python benchmarks/scale.py                       # vgg, lrp, batch 64
    .venv/bin/python benchmarks/scale.py --criterion taylor --sizes 1000,4000

The figures go to ``--out`` (default ``benchmarks/results/scale.json``; ``--out ''`` to skip) with the
run's provenance (``benchmarks/_meta.py``), the machine's load average and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _meta import ROOT, meta, write_json  # noqa: E402

SHAPE = (1, 28, 28)
CLASSES = 10


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _model(arch: str):
    from xprune.models import build

    torch.manual_seed(0)
    return build(arch, input_shape=SHAPE, num_classes=CLASSES).eval()


class SyntheticBatches:
    """``n`` random samples as ``(x, y)`` batches, generated on the fly (nothing kept)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for start in range(0, self.n, self.batch_size):
            b = min(self.batch_size, self.n - start)
            yield torch.randn(b, *SHAPE, generator=g), torch.randint(0, CLASSES, (b,), generator=g)


# ----------------------------------------------------------------------------- children (fresh processes)


def child_memory(what: str, n: int, args) -> dict:
    import xprune

    torch.set_num_threads(1)
    model = _model(args.arch)
    with torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    base = _maxrss_mb()
    t0 = time.perf_counter()
    if what == "score":
        xprune.score(model, SyntheticBatches(n, args.batch_size), args.criterion, batch_size=args.batch_size)
    else:  # one training step at the same batch size
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x, y = next(iter(SyntheticBatches(args.batch_size, args.batch_size)))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return {"what": what, "n": n, "base_mb": base, "peak_mb": _maxrss_mb(), "seconds": time.perf_counter() - t0}


def child_throughput(rank: int, world: int, init: str, args) -> dict | None:
    import torch.distributed as dist

    import xprune

    torch.set_num_threads(1)
    if world > 1:
        import datetime

        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    model = _model(args.arch)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.throughput_samples, *SHAPE, generator=g)
    y = torch.randint(0, CLASSES, (args.throughput_samples,), generator=g)
    xprune.score(model, (X[:2], y[:2]), args.criterion)  # warm-up (and tracing) outside the timing
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    xprune.score(model, (X, y), args.criterion, batch_size=args.batch_size)
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the run ends when its slowest rank does
        dist.destroy_process_group()
    return {"world": world, "seconds": float(elapsed), "samples": args.throughput_samples} if rank == 0 else None


# ----------------------------------------------------------------------------- driver


def _run_children(argv_list: list[list[str]]) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, env=env)
             for argv in argv_list]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"child {p.args} failed with code {p.returncode}")
        line = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if line:
            out.append(json.loads(line[-1]))
    return out


def _common(args) -> list[str]:
    return ["--arch", args.arch, "--criterion", args.criterion, "--batch-size", str(args.batch_size),
            "--throughput-samples", str(args.throughput_samples)]


def throughput(args) -> dict:
    one = _run_children([["--child", "throughput", "0", "1", "-", *_common(args)]])[0]
    with tempfile.TemporaryDirectory() as tmp:
        init = str(Path(tmp) / "init")
        two = _run_children([["--child", "throughput", str(r), "2", init, *_common(args)] for r in range(2)])[0]
    r1, r2 = one["samples"] / one["seconds"], two["samples"] / two["seconds"]
    print(f"throughput ({args.criterion}, {args.arch}, batch {args.batch_size}, {args.throughput_samples} samples, "
          f"1 torch thread per process):")
    print(f"  1 process : {r1:8.1f} samples/s ({one['seconds']:.2f} s)")
    print(f"  2 processes (gloo): {r2:8.1f} samples/s ({two['seconds']:.2f} s)")
    print(f"  ratio 2/1 : {r2 / r1:.2f}x  (machine: {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end)")
    return {"one": one, "two": two, "ratio": r2 / r1}


def memory(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:  # one at a time: fresh processes, not competing with each other
        rows += _run_children([["--child", "memory", "score", str(n), *_common(args)]])
    train = _run_children([["--child", "memory", "train", "0", *_common(args)]])[0]
    t_inc = train["peak_mb"] - train["base_mb"]
    print(f"peak memory (max RSS, fresh process each; {args.criterion} on {args.arch}, batch {args.batch_size}):")
    print(f"  {'samples':>8} {'peak MB':>9} {'+ over setup MB':>16} {'x train step (+)':>17} {'x train step (peak)':>20} {'s':>7}")
    for r in rows:
        inc = r["peak_mb"] - r["base_mb"]
        print(f"  {r['n']:>8} {r['peak_mb']:>9.1f} {inc:>16.1f} {inc / t_inc:>17.2f} "
              f"{r['peak_mb'] / train['peak_mb']:>20.2f} {r['seconds']:>7.1f}")
    print(f"  training step: peak {train['peak_mb']:.1f} MB, + {t_inc:.1f} MB over setup "
          f"(setup {train['base_mb']:.1f} MB)")
    incs = [r["peak_mb"] - r["base_mb"] for r in rows]
    print(f"  growth of the increment from {sizes[0]} to {sizes[-1]} samples: {incs[-1] - incs[0]:+.1f} MB")
    return {"rows": rows, "train": train}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="vgg")
    p.add_argument("--criterion", default="lrp")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sizes", default="1000,4000,16000")
    p.add_argument("--throughput-samples", type=int, default=8192)
    p.add_argument("--part", choices=["all", "throughput", "memory"], default="all")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"),
                   help="write the figures as JSON here ('' to skip)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "memory":
            res = child_memory(rest[0], int(rest[1]), args)
        else:
            res = child_throughput(int(rest[0]), int(rest[1]), rest[2], args)
        if res is not None:
            print(json.dumps(res))
        return 0
    results = {"settings": {"arch": args.arch, "criterion": args.criterion, "batch_size": args.batch_size,
                            "sizes": args.sizes, "throughput_samples": args.throughput_samples,
                            "threads_per_process": 1}}
    record = meta(threads=1)  # before the run: the load average shows whether the cores were idle
    if args.part in ("all", "throughput"):
        results["throughput"] = throughput(args)
    if args.part in ("all", "memory"):
        results["memory"] = memory(args)
    if args.out:
        write_json(args.out, results, record=record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
