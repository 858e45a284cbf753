"""Cost at the size users bring: ResNet-50 and ViT-B/16 (transformers, random init), 224x224, batch 8.

Every figure is a ratio to one plain training step measured in the same run:
forward, cross-entropy loss, backward with parameter gradients (then
``zero_grad(set_to_none=True)``) on the same batch, the model in eval mode
like the scoring. Timed figures run round-robin with that step (step, then
each measured call; ``--repeats`` rounds, ``--vit-repeats`` for ViT-B
scoring) and each figure is the median of the per-round ratios, so load from
other processes hits both sides alike. Wall-clock seconds
(``time.perf_counter``); the process CPU-time ratios and the ratio of the
fastest times are recorded beside them, and the load average before and after.

1. **Scoring** (``xprune.score`` with units found beforehand): ``taylor``,
   ``gradient``, ``activation`` (target <= 1.15x), ``lrp`` with an epsilon
   composite (``epsilon-plus`` on ResNet-50 channels, the default
   ``attnlrp`` on ViT heads/neurons; <= 1.5x) and ``epsilon-alpha2-beta1``
   (<= 2.5x), on ResNet-50 channels and ViT-B/16 heads and neurons.
2. **Pipeline** on ResNet-50: ``xprune.discover`` + ``xprune.select(0.3,
   by="macs")`` + ``xprune.apply`` (target <= 0.5x together), and
   Torch-Pruning's own magnitude pipeline (``MagnitudeImportance`` +
   ``MetaPruner``, deep copy, graph and step) for comparison.
3. **Memory**: the peak resident-set increase of scoring over that of one
   training step at the same batch (target <= 1.3x). Each figure comes from
   a fresh Python process that sets up (imports, model, batch, units, one
   no-grad forward of one sample), resets its peak RSS to the current RSS
   (``/proc/self/clear_refs``), runs the work once and reads the peak
   (``VmHWM``): the increase is what the work needed on top of the setup. Every
   process runs twice: with glibc's default malloc (what users get; its
   dynamic mmap threshold keeps freed blocks up to 32 MiB in the heap, so
   the RSS also counts fragmentation) and with ``MALLOC_MMAP_THRESHOLD_=131072``
   (every block >= 128 KiB is mmapped and returned when freed: the RSS then
   follows the live tensors). The target is checked on the larger ratio.
4. **Speed-up**: 30% of ResNet-50's channels removed (``l2`` scores,
   ``round_to=8``, ``scope`` local and global; local with ``round_to=16``;
   Torch-Pruning's ``MetaPruner`` at ratio 0.3 for comparison): MAC reduction
   (Torch-Pruning's counter), latency of the pruned and the unpruned model
   (eval, ``no_grad``, interleaved, median of per-round ratios) at batch 8
   and 1, and speed-up / MAC reduction (target >= 0.8 at batch 8). With it,
   the evidence for the floor: time per operator type and per conv
   (``torch.profiler``), one 3x3 conv per stage timed at the original width,
   at 70% rounded to a multiple of 8 that is not one of 16 and rounded to
   a multiple of 16, and the models in ``channels_last``.

Run: ``.venv/bin/python benchmarks/cost.py`` (about 10 minutes on 2 idle
cores; writes ``benchmarks/results/cost.json``) or ``--quick`` (tiny configs,
under a minute, a smoke run that writes nothing unless ``--json``).
``--sections scoring,pipeline,memory,speedup``, ``--models`` and
``--criteria`` pick parts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"taylor": 1.15, "gradient": 1.15, "activation": 1.15, "lrp-epsilon": 1.5, "lrp-alpha-beta": 2.5}
SECTIONS = ("scoring", "pipeline", "memory", "speedup")
MMAP_THRESHOLD = 128 * 1024  # bytes: MALLOC_MMAP_THRESHOLD_ of the memory section's second allocator setting


# ----------------------------------------------------------------------------- models and work


def build(name: str, quick: bool) -> nn.Module:
    """A random-init transformers model from its default config (tiny configs with ``quick``)."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if name == "resnet50":
        cfg = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]) if quick \
            else ResNetConfig()
        return ResNetForImageClassification(cfg).eval()
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    image_size=32, patch_size=8) if quick else ViTConfig()
    return ViTForImageClassification(cfg).eval()


def batch(model: nn.Module, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    size = cfg.image_size if cfg.model_type == "vit" else 64 if cfg.embedding_size == 16 else 224
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, cfg.num_labels, (n,), generator=g)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """The reference unit: forward, cross-entropy, backward with parameter gradients."""
    out = model(x).logits
    nn.functional.cross_entropy(out, y).backward()
    model.zero_grad(set_to_none=True)


def scorers(model_name: str, only: str | None = None) -> dict[str, tuple[str, dict]]:
    eps = {"composite": "epsilon-plus"} if model_name == "resnet50" else {}  # ViT: the default, attnlrp
    out = {"taylor": ("taylor", {}), "gradient": ("gradient", {}), "activation": ("activation", {}),
           "lrp-epsilon": ("lrp", eps), "lrp-alpha-beta": ("lrp", {"composite": "epsilon-alpha2-beta1"})}
    return {k: v for k, v in out.items() if not only or k in only.split(",")}


def round_robin(fns: dict, repeats: int, ref: str = "train step", warm: int | None = None) -> dict:
    """Median seconds of each function and median of its per-round ratio to ``fns[ref]`` (wall and CPU).

    The first ``warm`` functions (default: all) run once before the rounds (kernels, allocator, caches).
    """
    for fn in list(fns.values())[:warm]:
        fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    out = {}
    for k in fns:
        out[k] = {"seconds": statistics.median(wall[k]),
                  "ratio": statistics.median(w / r for w, r in zip(wall[k], wall[ref])),
                  "ratio_cpu": statistics.median(c / r for c, r in zip(cpu[k], cpu[ref])),
                  "ratio_of_minima": min(wall[k]) / min(wall[ref]),
                  "ratios": [round(w / r, 3) for w, r in zip(wall[k], wall[ref])],
                  "ratios_cpu": [round(c / r, 3) for c, r in zip(cpu[k], cpu[ref])]}
    return out


# ----------------------------------------------------------------------------- 1. scoring


def scoring(args) -> dict:
    import xprune

    rows = {}
    for model_name, kinds in (("resnet50", ("channels",)), ("vit-b16", ("heads", "neurons"))):
        if model_name not in args.models.split(","):
            continue
        model = build(model_name, args.quick)
        x, y = batch(model, args.batch)
        fns = {"train step": lambda: train_step(model, x, y)}
        for kind in kinds:
            units = xprune.discover(model, x[:1], kind)
            for label, (crit, opts) in scorers(model_name, args.criteria).items():
                fns[f"{kind}/{label}"] = (lambda units=units, crit=crit, opts=opts:
                                          xprune.score(model, (x, y), crit, units=units, **opts))
        if model_name == "resnet50":
            res = round_robin(fns, args.repeats)
        else:  # ViT-B: about a minute a round; the step and one scoring call warm the kernels
            res = round_robin(fns, args.vit_repeats, warm=2)
        for key, r in res.items():
            if key != "train step":
                r["target"] = TARGETS[key.split("/")[1]]
                r["met"] = r["ratio"] <= r["target"]
        rows[model_name] = res
        print(f"\n{model_name}: one training step {res['train step']['seconds']:.3f} s")
        for key, r in res.items():
            if key != "train step":
                print(f"  {key:28s} {r['ratio']:5.2f}x (cpu {r['ratio_cpu']:5.2f}x)  target <= {r['target']}  "
                      f"{'ok' if r['met'] else 'MISSED'}")
    return rows


# ----------------------------------------------------------------------------- 2. pipeline


def pipeline(args) -> dict:
    import torch_pruning as tp

    import xprune

    model = build("resnet50", args.quick)
    x, y = batch(model, args.batch)
    x1 = x[:1]
    scores = xprune.score(model, None, "l2", example_inputs=x1)
    plan = xprune.select(scores, 0.3, by="macs", model=model)

    def torch_pruning():
        m = copy.deepcopy(model)
        pruner = tp.pruner.MetaPruner(m, x1, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                                      ignored_layers=[m.classifier[-1]], round_to=8)
        pruner.step()

    res = round_robin({"train step": lambda: train_step(model, x, y),
                       "discover": lambda: xprune.discover(model, x1),
                       "select(by=macs)": lambda: xprune.select(scores, 0.3, by="macs", model=model),
                       "apply": lambda: xprune.apply(model, plan),
                       "torch-pruning magnitude": torch_pruning}, args.repeats)
    ours = sum(res[k]["ratio"] for k in ("discover", "select(by=macs)", "apply"))
    out = {"figures": res, "xprune_total_ratio": ours, "target": 0.5, "met": ours <= 0.5,
           "macs_reduction_planned": plan.meta["macs_reduction"]}
    print(f"\npipeline (ResNet-50): discover {res['discover']['ratio']:.3f}x + select(by=macs) "
          f"{res['select(by=macs)']['ratio']:.3f}x + apply {res['apply']['ratio']:.3f}x = {ours:.3f}x "
          f"(target <= 0.5); Torch-Pruning magnitude {res['torch-pruning magnitude']['ratio']:.3f}x")
    return out


# ----------------------------------------------------------------------------- 3. memory (fresh processes)


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in MB (None where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Reset the peak RSS to the current RSS (Linux >= 4.0, ``/proc/self/clear_refs``); the base in MB.

    ``getrusage``'s ``ru_maxrss`` cannot be reset, counts the setup's own peak (building a model
    allocates more than it keeps) and, after fork and exec, may even carry the parent's peak.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_mb("VmRSS")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(args) -> dict:
    import gc

    import xprune

    torch.set_num_threads(args.threads)
    model = build(args.model, args.quick)
    x, y = batch(model, args.batch)
    units = xprune.discover(model, x[:1], args.kind)
    with torch.no_grad():
        model(x[:1])
    gc.collect()
    base = _reset_peak()
    if args.what == "train step":
        train_step(model, x, y)
    else:
        crit, opts = scorers(args.model)[args.what]
        xprune.score(model, (x, y), crit, units=units, **opts)
    peak = _peak()
    return {"base_mb": base, "peak_mb": peak, "increase_mb": peak - base}


def memory(args) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    # ResNet-50: every criterion; ViT: those whose kept signals differ (gradient keeps what taylor keeps,
    # activation runs without a backward pass)
    cases = {("resnet50", "channels"): ["train step", *scorers("resnet50", args.criteria)]}
    vit = [w for w in ("taylor", "lrp-epsilon", "lrp-alpha-beta") if w in scorers("vit-b16", args.criteria)]
    cases.update({("vit-b16", "heads"): ["train step", *vit], ("vit-b16", "neurons"): vit})
    jobs = [(m, k, w) for (m, k), whats in cases.items() if m in args.models.split(",") for w in whats]
    if args.quick:
        jobs = [j for j in jobs if j[0] == "resnet50" and j[2] in ("train step", "taylor")]

    def child(job):
        model_name, kind, what = job[:3]
        argv = ["--child", "--model", model_name, "--kind", kind, "--what", what, "--threads", str(args.threads),
                "--batch", str(args.batch)] + (["--quick"] if args.quick else [])
        env = dict(os.environ, **({"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)} if job[3:] else {}))
        done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True, env=env)
        return json.loads(done.stdout.strip().splitlines()[-1])

    # two processes at a time (memory does not depend on speed); each once with glibc's default malloc and
    # once with every block >= 128 KiB mmapped (freed pages go back at once: the RSS then follows live tensors)
    allocators = (("default", ()),) if args.quick else (("default", ()), ("mmap", ("mmap",)))
    runs = [j + extra for j in jobs for _, extra in allocators]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(runs, pool.map(child, runs)))
    out = {}
    for model_name, kind in {(m, k) for m, k, _ in jobs}:
        rows = {}
        for allocator, extra in allocators:
            ref = results[(model_name, "heads" if model_name == "vit-b16" else kind, "train step") + extra]
            base = max(ref["increase_mb"], 1e-9)  # (tiny --quick models may need no new pages)
            for m, k, what in jobs:
                if (m, k) == (model_name, kind) and what != "train step":
                    r = rows.setdefault(what, {})
                    r[allocator] = dict(results[(m, k, what) + extra], ratio=results[(m, k, what) + extra][
                        "increase_mb"] / base, train_step_mb=ref["increase_mb"])
        for r in rows.values():
            r["ratio"] = max(r[a]["ratio"] for a, _ in allocators)
            r["target"], r["met"] = 1.3, r["ratio"] <= 1.3
        out[f"{model_name}/{kind}"] = rows
        print(f"\nmemory {model_name}/{kind} (peak RSS increase / a training step's; "
              f"{', '.join(a for a, _ in allocators)} malloc): " + ", ".join(
                  f"{w} " + ", ".join(f"{r[a]['ratio']:.2f}x" for a, _ in allocators) for w, r in rows.items()))
    return out


# ----------------------------------------------------------------------------- 4. speed-up


def _latency(models: dict, x: torch.Tensor, repeats: int) -> dict:
    """Median wall seconds of each model's forward (no_grad, eval), round-robin, and the median per-round
    ratio of the first model's time to each other's (``speedup``)."""
    ts = {k: [] for k in models}
    with torch.no_grad():
        for m in models.values():
            m(x)
            m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                ts[k].append(time.perf_counter() - t0)
    first = next(iter(models))
    return {k: {"s": statistics.median(v), "speedup": statistics.median(a / b for a, b in zip(ts[first], v))}
            for k, v in ts.items()}


def _layer_times(model: nn.Module, x: torch.Tensor) -> tuple[dict, dict]:
    """Self CPU ms per operator type, and ms per conv module (in call order), of one no-grad forward."""
    from torch.profiler import ProfilerActivity, profile, record_function

    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    mods = dict(model.named_modules())
    handles = []
    for n in names:
        ctx = {}
        handles.append(mods[n].register_forward_pre_hook(
            lambda m, a, n=n, ctx=ctx: ctx.__setitem__("r", record_function(f"conv:{n}").__enter__())))
        handles.append(mods[n].register_forward_hook(lambda m, a, o, ctx=ctx: ctx["r"].__exit__(None, None, None)))
    try:
        with torch.no_grad():
            model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(x)
    finally:
        for h in handles:
            h.remove()
    ops, convs = {}, {}
    for e in prof.key_averages():
        if e.key.startswith("conv:"):
            convs[e.key[5:]] = e.cpu_time_total / 1000
        elif e.key.startswith("aten::") and e.self_cpu_time_total > 0:
            ops[e.key] = e.self_cpu_time_total / 1000
    return ops, convs


def _conv_macs(model: nn.Module, x: torch.Tensor) -> float:
    """MACs of the model's 2-D convolutions on ``x``."""
    total = []
    hooks = [m.register_forward_hook(lambda m, a, o: total.append(
        o.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]))
        for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return float(sum(total))


def _conv_widths(repeats: int, quick: bool) -> list[dict]:
    """A 3x3 conv of each ResNet-50 stage (batch 8, its resolution) at the original width, at 70% of it rounded
    to a multiple of 8 that is not one of 16 and rounded to a multiple of 16, in NCHW and in channels_last:
    GMAC/s per width and speed-up over the original width in the same format."""
    rows = []
    for c0, hw in ((64, 56), (128, 28), (256, 14), (512, 7))[: 2 if quick else 4]:
        r16 = int(round(0.7 * c0 / 16)) * 16
        widths = [c0, r16 + 8 if abs(r16 + 8 - 0.7 * c0) <= abs(r16 - 8 - 0.7 * c0) else r16 - 8, r16]
        for fmt_name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            convs = {c: nn.Conv2d(c, c, 3, padding=1, bias=False).eval().to(memory_format=fmt) for c in widths}
            inputs = {c: torch.randn(8, c, hw, hw).contiguous(memory_format=fmt) for c in widths}
            ts = {c: [] for c in widths}
            with torch.no_grad():
                for _ in range(repeats + 2):
                    for c in widths:
                        t0 = time.perf_counter()
                        convs[c](inputs[c])
                        ts[c].append(time.perf_counter() - t0)
            for c in widths:
                t = statistics.median(ts[c][2:])
                macs = 8 * c * c * 9 * hw * hw
                rows.append({"format": fmt_name, "stage_width": c0, "channels": c, "hw": hw, "ms": 1000 * t,
                             "gmac_per_s": macs / 1e9 / t, "mac_reduction": c0 * c0 / (c * c),
                             "speedup": statistics.median(a / b for a, b in zip(ts[c0][2:], ts[c][2:]))})
    return rows


def speedup(args) -> dict:
    import torch_pruning as tp

    import xprune
    from xprune import measure

    model = build("resnet50", args.quick)
    x8, _ = batch(model, 8)
    x1 = x8[:1]
    scores = xprune.score(model, None, "l2", example_inputs=x1)
    macs0 = measure.count(model, x1)["macs"]
    pruned = {"local, round_to=8": xprune.apply(model, xprune.select(scores, 0.3, scope="local", round_to=8)),
              "global, round_to=8": xprune.apply(model, xprune.select(scores, 0.3, round_to=8)),
              "local, round_to=16": xprune.apply(model, xprune.select(scores, 0.3, scope="local", round_to=16))}
    tp_model = copy.deepcopy(model)
    tp.pruner.MetaPruner(tp_model, x1, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.3,
                         ignored_layers=[tp_model.classifier[-1]], round_to=8).step()
    pruned["torch-pruning magnitude, round_to=8"] = tp_model
    out = {"macs_before": macs0, "settings": {}}
    reps = {8: args.repeats * 2, 1: args.repeats * 6}
    for label, pm in pruned.items():
        macs = measure.count(pm, x1)["macs"]
        row = {"macs_after": macs, "mac_reduction": macs0 / macs,
               "channels_kept": sum(c.out_channels for c in pm.modules() if isinstance(c, nn.Conv2d))
               / sum(c.out_channels for c in model.modules() if isinstance(c, nn.Conv2d))}
        for b in (8, 1):
            t = _latency({"before": model, "after": pm}, x8[:b], reps[b])
            row[f"batch{b}"] = {"ms_before": 1000 * t["before"]["s"], "ms_after": 1000 * t["after"]["s"],
                                "speedup": t["after"]["speedup"], "ratio": t["after"]["speedup"] / row["mac_reduction"]}
        row["met"] = row["batch8"]["ratio"] >= 0.8
        out["settings"][label] = row
        print(f"\nspeed-up {label}: MACs / {row['mac_reduction']:.2f}; batch 8 {row['batch8']['speedup']:.2f}x "
              f"(ratio {row['batch8']['ratio']:.2f}), batch 1 {row['batch1']['speedup']:.2f}x "
              f"(ratio {row['batch1']['ratio']:.2f}); target >= 0.8 at batch 8")
    # --- where the time goes: per operator and per conv, before and after (local, round_to=8)
    head = pruned["local, round_to=8"]
    ops0, conv0 = _layer_times(model, x8)
    ops1, conv1 = _layer_times(head, x8)
    mods0, mods1 = dict(model.named_modules()), dict(head.named_modules())
    per_conv = []
    for n in conv0:
        a, b = mods0[n], mods1[n]
        per_conv.append({"conv": n, "in": [a.in_channels, b.in_channels], "out": [a.out_channels, b.out_channels],
                         "k": a.kernel_size[0], "ms": [conv0[n], conv1.get(n, float("nan"))],
                         "mac_reduction": (a.in_channels * a.out_channels) / (b.in_channels * b.out_channels)})
    conv_ms = [sum(c["ms"][i] for c in per_conv) for i in (0, 1)]
    other = [sum(v for k, v in ops.items() if "conv" not in k) for ops in (ops0, ops1)]
    out["profile_batch8"] = {
        "ops_ms_before": ops0, "ops_ms_after": ops1, "convs": per_conv, "conv_ms": conv_ms, "other_ms": other,
        "conv_mac_reduction": _conv_macs(model, x1) / _conv_macs(head, x1)}
    # if every conv ran as fast per MAC as before, the others taking what they take now
    prof = out["profile_batch8"]
    prof["ceiling_speedup"] = (conv_ms[0] + other[0]) / (conv_ms[0] / prof["conv_mac_reduction"] + other[1])
    prof["ceiling_ratio"] = prof["ceiling_speedup"] / out["settings"]["local, round_to=8"]["mac_reduction"]
    prof["conv_efficiency"] = conv_ms[0] / conv_ms[1] / prof["conv_mac_reduction"]
    out["conv_widths"] = _conv_widths(args.repeats * 3, args.quick)
    # --- what would reach it: the same models in channels_last
    cl = {k: copy.deepcopy(m).to(memory_format=torch.channels_last) for k, m in
          (("before", model), ("after", head), ("after16", pruned["local, round_to=16"]))}
    t = _latency(cl, x8.contiguous(memory_format=torch.channels_last), reps[8])
    out["channels_last_batch8"] = {}
    for k, label in (("after", "local, round_to=8"), ("after16", "local, round_to=16")):
        red = out["settings"][label]["mac_reduction"]
        out["channels_last_batch8"][label] = {"ms_before": 1000 * t["before"]["s"], "ms_after": 1000 * t[k]["s"],
                                              "speedup": t[k]["speedup"], "ratio": t[k]["speedup"] / red}
        print(f"channels_last ({label}): batch 8 speed-up {t[k]['speedup']:.2f}x, ratio {t[k]['speedup'] / red:.2f}")
    print(f"profile (batch 8, local round_to=8): convs {conv_ms[0]:.0f} -> {conv_ms[1]:.0f} ms for conv MACs / "
          f"{prof['conv_mac_reduction']:.2f} (efficiency {prof['conv_efficiency']:.2f}), other operators "
          f"{other[0]:.0f} -> {other[1]:.0f} ms; ceiling with convs at full efficiency: ratio "
          f"{prof['ceiling_ratio']:.2f}")
    for r in out["conv_widths"]:
        print(f"  3x3 conv {r['channels']:4d} ch at {r['hw']:2d}x{r['hw']:<2d} {r['format']:13s}: {r['ms']:7.2f} ms, "
              f"{r['gmac_per_s']:6.1f} GMAC/s, speed-up {r['speedup']:.2f} for MACs / {r['mac_reduction']:.2f}")
    return out


# ----------------------------------------------------------------------------- main


def _commit() -> str | None:
    from xprune.bench._common import _commit as commit

    return commit()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny configs and few repeats: a smoke run (< 1 minute)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per timed figure (default 7, quick 2)")
    ap.add_argument("--vit-repeats", type=int, default=None, help="rounds of the ViT-B scoring (default 3, quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--criteria", default=None, help="comma-separated subset of " + ",".join(TARGETS))
    ap.add_argument("--models", default="resnet50,vit-b16", help="models of the scoring section")
    ap.add_argument("--json", default=None, help="default benchmarks/results/cost.json (quick: not written)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--what", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child_memory(args)))
        return
    args.repeats = args.repeats or (2 if args.quick else 7)
    args.vit_repeats = args.vit_repeats or (2 if args.quick else 3)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    import transformers

    if args.quick:
        print("--quick: tiny configs, where fixed per-call overheads dominate; the targets are for the full run")
    t0 = time.perf_counter()
    record = {"command": "python benchmarks/cost.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "commit": _commit(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "cpu": platform.processor() or platform.machine(), "quick": args.quick, "batch": args.batch,
              "repeats": args.repeats, "vit_repeats": args.vit_repeats, "targets": TARGETS,
              "load_average_before": os.getloadavg()}
    for s in sections:
        record[s] = globals()[s](args)
    record["seconds"] = time.perf_counter() - t0
    record["load_average_after"] = os.getloadavg()  # other processes on the machine, for judging the noise
    print(f"\ntotal {record['seconds']:.0f} s")
    path = args.json or (None if args.quick else str(ROOT / "benchmarks" / "results" / "cost.json"))
    if path:
        Path(path).write_text(json.dumps(record, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
