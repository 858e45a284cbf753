"""Scenario ``perf``: criterion cost vs forward+backward, vs zennit and Torch-Pruning; speed-up vs MACs; memory."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import evaluate
from ._common import ROOT, Context, Spec, _specs


def _fwd_bwd(model: nn.Module, batches) -> None:
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.gather(1, y[:, None]).sum().backward()
    model.zero_grad(set_to_none=True)


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        ts.append(time.process_time() - t0)
    return statistics.median(ts)


def _tp_taylor(model: nn.Module, batches, example: torch.Tensor) -> dict[str, torch.Tensor]:
    """Torch-Pruning's GroupTaylorImportance of every conv/linear out-channel group (output layer excluded)."""
    import torch_pruning as tp

    from ..models.heads import output_layer

    head = output_layer(model)[2]
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    imp = tp.importance.GroupTaylorImportance()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
    names = {m: n for n, m in model.named_modules()}
    out = {}
    for group in dg.get_all_groups(ignored_layers=[head], root_module_types=(nn.Conv2d, nn.Linear)):
        out[names[group[0].dep.target.module]] = imp(group).detach()
    model.zero_grad(set_to_none=True)
    return out


def _zennit_cost(model, batches, layers, repeats) -> dict | None:
    tests = ROOT / "tests"
    if not (tests / "_zennit_oracle.py").exists():
        return None
    sys.path.insert(0, str(tests))
    try:
        import _zennit_oracle as zo  # installs the torchvision stub zennit needs
    except Exception:  # noqa: BLE001 - zennit (test-only) may be missing; pytest.skip raises a BaseException too
        return None
    except BaseException as e:  # pytest's Skipped (a BaseException) when zennit is not installed
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return None
    finally:
        sys.path.remove(str(tests))
    from .. import lrp

    twin = zo.zennit_model(model)
    comp = lrp.composite("epsilon-plus")

    def ours():
        for x, y in batches:
            lrp.relevance(model, x, y, comp, layers)

    def theirs():
        for x, y in batches:
            zo.zennit_relevance_twin(twin, x, y, zo.preset("epsilon-plus"), layers)

    t_ours, t_z = _median_time(ours, repeats), _median_time(theirs, repeats)
    return {"composite": "epsilon-plus", "xprune_s": t_ours, "zennit_s": t_z, "zennit_over_xprune": t_z / t_ours}


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def perf(ctx: Context) -> dict:
    """Criterion cost vs forward+backward, vs zennit and Torch-Pruning; speed-up vs MACs; memory."""
    import xprune

    from ..data import reference_samples
    from ..models import build, pretrained

    if ctx.quick:  # timings need no trained weights: skip training the reference model on a clean machine
        from ..data import load

        ds = load("digits", seed=ctx.seeds[0])
        torch.manual_seed(ctx.seeds[0])
        model = build("vgg", input_shape=ds.input_shape, num_classes=ds.num_classes)
    else:
        model, ds = pretrained("vgg", "digits", progress=False)
    model.eval()
    ref = reference_samples(ds.train, 2 if ctx.quick else 13, seed=ctx.seeds[0])  # 20 / 130 samples
    batches = list(ref.batches(64))
    repeats = 1 if ctx.quick else 5
    base = _median_time(lambda: _fwd_bwd(model, batches), repeats)
    costs = {}
    for spec in [*_specs(ctx.quick), Spec("torch-pruning GroupTaylor", "tp-taylor")]:
        if spec.name == "tp-taylor":
            t = _median_time(lambda: _tp_taylor(model, batches, ref.X[:1]), repeats)
        else:

            def scoring(spec: Spec = spec) -> None:
                xprune.score(model, ref, spec.name, **spec.kwargs(0))

            t = _median_time(scoring, repeats)
        costs[spec.label] = {"seconds": t, "relative": t / base}
    ctx.advance(1)
    # agreement of xprune's taylor with torch-pruning's on the same model and data
    ours = xprune.score(model, ref, "taylor", normalize=None, objective="loss")
    theirs = _tp_taylor(model, batches, ref.X[:1])
    agreement = {
        k: _spearman(ours[k].float(), theirs[k].float())
        for k in ours
        if k in theirs and ours[k].numel() == theirs[k].numel()
    }
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    zennit = _zennit_cost(model, batches, layers, repeats)
    ctx.advance(1)
    # realised speed-up vs MAC reduction
    speed = []
    size, widths = (16, (8, 16, 32)) if ctx.quick else (28, (32, 64, 128))
    for arch in ("vgg", "resnet"):
        net = build(arch, input_shape=(1, size, size), num_classes=10, widths=widths).eval()
        x1 = torch.randn(1, 1, size, size)
        sc = xprune.score(net, None, "l2", example_inputs=x1)
        macs0 = evaluate.count(net, x1)["macs"]
        for rate in (0.5,) if ctx.quick else (0.25, 0.5, 0.75):
            small = xprune.apply(net, xprune.select(sc, rate, scope="local"))
            macs1 = evaluate.count(small, x1)["macs"]
            for batch in (1,) if ctx.quick else (1, 64):
                x = torch.randn(batch, 1, size, size)
                r = 5 if ctx.quick else 30
                t0 = sorted(evaluate.latency(net, x, repeats=r)["ms"] for _ in range(3))[1]
                t1 = sorted(evaluate.latency(small, x, repeats=r)["ms"] for _ in range(3))[1]
                speed.append(
                    {
                        "model": arch,
                        "rate": rate,
                        "batch": batch,
                        "mac_reduction": macs0 / macs1,
                        "speedup": t0 / t1,
                        "ratio": (t0 / t1) / (macs0 / macs1),
                    }
                )
    ctx.advance(1)
    scale = ROOT / "benchmarks" / "results" / "scale.json"
    memory = json.loads(scale.read_text()).get("memory") if scale.exists() else None
    payload = {
        "settings": {
            "model": "vgg (digits reference)",
            "samples": len(ref),
            "repeats": repeats,
            "clock": "process CPU time",
            "threads": torch.get_num_threads(),
        },
        "forward_backward_s": base,
        "costs": costs,
        "taylor_agreement_spearman": agreement,
        "zennit": zennit,
        "speedup": speed,
        "memory": memory,
    }
    md = [
        f"Cost of scoring {len(ref)} samples with the VGG reference model on digits, relative to one forward + "
        f"backward pass over the same samples ({base * 1000:.1f} ms CPU time, median of {repeats}, "
        f"{torch.get_num_threads()} threads).\n",
        "| criterion | CPU s | x fwd+bwd |",
        "|---|---|---|",
    ]
    for label, c in sorted(costs.items(), key=lambda kv: kv[1]["relative"]):
        md.append(f"| {label} | {c['seconds']:.4f} | {c['relative']:.2f} |")
    if agreement:
        vals = list(agreement.values())
        md.append(
            f"\nxprune `taylor` vs Torch-Pruning `GroupTaylorImportance`, Spearman rank correlation per layer: "
            f"min {min(vals):.3f}, mean {statistics.fmean(vals):.3f} over {len(vals)} layers."
        )
    if zennit:
        md.append(
            f"\nLRP epsilon-plus relevance at every conv/linear output: xprune {zennit['xprune_s']:.4f} s, "
            f"zennit 0.5.1 {zennit['zennit_s']:.4f} s (zennit / xprune = {zennit['zennit_over_xprune']:.2f})."
        )
    else:
        md.append("\n(zennit not installed: no zennit comparison in this run.)")
    md += [
        "\nRealised CPU speed-up of physically removed channels (uniform per layer, random weights) vs MAC "
        f"reduction, {size}x{size} inputs, widths {widths}:\n",
        "| model | removed | batch | MAC reduction | speed-up | speed-up / MAC reduction |",
        "|---|---|---|---|---|---|",
    ]
    for row in speed:
        md.append(
            f"| {row['model']} | {row['rate']:.0%} | {row['batch']} | {row['mac_reduction']:.2f}x | "
            f"{row['speedup']:.2f}x | {row['ratio']:.2f} |"
        )
    if memory:
        md += [
            "\nPeak memory of scoring (from `benchmarks/scale.py`, resident set size of a fresh process, "
            "streamed batches):\n",
            "| samples | base MB | peak MB | seconds |",
            "|---|---|---|---|",
        ]
        for r in memory.get("rows", []):
            md.append(f"| {r['n']} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    ctx.write("perf", payload, "\n".join(md))
    return payload
