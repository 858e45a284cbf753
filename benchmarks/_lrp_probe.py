"""Quick probe of LRP scoring cost (issue 17, item 6): ratios to one training step in the same process.

Random-init transformers ResNet-50 / ViT-B/16 at 224x224, batch 8. Each figure is the median of
``--repeats`` runs divided by the median time of one plain training step (forward, cross-entropy,
backward with parameter gradients) on the same batch; peak memory is the largest rise of the
process's resident memory over its level before the call (sampled every 2 ms by a thread), as a
ratio to a training step's.
Not the official benchmark (benchmarks/cost.py); a probe for the LRP engine's own work.

Run: ``.venv/bin/python benchmarks/_lrp_probe.py [--model resnet50|vit] [--threads 2] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import threading
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch


def build(name: str, batch: int):
    import transformers as T

    torch.manual_seed(0)
    if name == "resnet50":
        model = T.ResNetForImageClassification(T.ResNetConfig()).eval()
    else:
        model = T.ViTForImageClassification(T.ViTConfig()).eval()  # ViT-B/16, 224
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, model.config.num_labels, (batch,))
    return model, x, y


def train_step(model, x, y):
    out = model(pixel_values=x).logits
    torch.nn.functional.cross_entropy(out, y).backward()
    model.zero_grad(set_to_none=True)


def jobs(model, x, y, name):
    import xprune
    from xprune import criteria

    kinds = ["channels"] if name == "resnet50" else ["heads", "neurons"]
    out = {"train": lambda: train_step(model, x, y)}
    for kind in kinds:
        units = xprune.discover(model, {"pixel_values": x[:1]}, kind)
        comps = ["epsilon-plus", "epsilon-alpha2-beta1"] if kind == "channels" else [None]
        for comp in comps:
            crit = criteria.get("lrp") if comp is None else criteria.get("lrp", composite=comp)
            out[f"lrp {kind} {comp or 'attnlrp'}"] = (lambda c=crit, u=units: c.compute(model, u, [({"pixel_values": x}, y)]))
        crit = criteria.get("taylor")
        out[f"taylor {kind}"] = (lambda c=crit, u=units: c.compute(model, u, [({"pixel_values": x}, y)]))
    return out


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Peak:
    """Largest rise of the resident set (MiB) while the block runs."""

    def __enter__(self):
        self.start = self.top = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.002):
            self.top = max(self.top, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.top = max(self.top, _rss())
        self.rise = self.top - self.start


def main():
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # large blocks via mmap: RSS follows live memory
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet50", choices=["resnet50", "vit"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", default=None, help="comma-separated job name prefixes (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = build(args.model, args.batch)
    fns = jobs(model, x, y, args.model)
    if args.only:
        keep = args.only.split(",")
        fns = {k: f for k, f in fns.items() if k == "train" or any(k.startswith(p) for p in keep)}
    for f in fns.values():
        f()  # warm-up
    ts = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    mem: dict[str, float] = {}
    for _ in range(args.repeats):  # round-robin, so that load drifts hit all alike
        for k, f in fns.items():
            with Peak() as peak:
                t0, c0 = time.perf_counter(), time.process_time()
                f()
                ts[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
            mem[k] = max(mem.get(k, 0.0), peak.rise)
    med = {k: statistics.median(v) for k, v in ts.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(f"{args.model} batch {args.batch}, {args.threads} threads; train step {med['train']:.2f} s wall, "
          f"{mcpu['train']:.2f} s CPU, peak RSS rise {mem['train']:.0f} MiB")
    for k in fns:
        print(f"  {k:34s} wall {med[k] / med['train']:.2f}x   CPU {mcpu[k] / mcpu['train']:.2f}x   "
              f"memory {mem[k] / mem['train']:.2f}x")


if __name__ == "__main__":
    main()
