"""Render the figure tables of README.md ("## Results") and docs/results.md from the stored benchmark JSON.

A figure block in a markdown file is delimited by two HTML comments::

    <!-- figures: RENDERER path/to/a.json [path/to/b.json ...] -->
    ...
    <!-- /figures -->

Paths are relative to the repository root. ``RENDERER`` names a function of :data:`RENDERERS` that turns
the loaded JSON files into the block's markdown; ``render`` rewrites the block with it. The renderer
``quoted`` keeps the block's text (prose) as written: its decimal figures are checked (by ``--check`` and
``tests/test_figures.py``) to occur in the named files, as a value, a mean, standard deviation, minimum,
maximum or sum of a stored list, or 100 times one (:func:`untraced`). A rendered block is checked by
rendering it again: it must equal the fresh render.

Usage::

    python benchmarks/render.py            # rewrite the blocks of README.md and docs/results.md
    python benchmarks/render.py --check    # exit 1 if a block is stale or quotes a number its files lack

docs/results.md as a whole is written by ``xprune bench --page-only --out docs/bench``
(``xprune.bench.results_page``), which renders its blocks with this module. After a benchmark writes new
JSON, run one of the two (README.md: this script), or ``tests/test_figures.py`` fails. A new table: add a
function ``name(*loaded_json) -> markdown`` to :data:`RENDERERS` and a block ``<!-- figures: name FILES -->``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("README.md", "docs/results.md", "docs/benchmarks.md", "docs/control.md")
BLOCK = re.compile(r"<!-- figures: (?P<spec>[^>]*?) -->\n(?P<body>.*?)<!-- /figures -->", re.S)


def _ms(values, digits: int = 3) -> str:
    values = [float(v) for v in values]
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _source_line(*datas, script: str = "") -> str:
    """'Run: `command` (commit abc1234+, N thread(s), date)' for every file; '+' marks uncommitted changes."""
    parts = []
    for d in datas:
        m = d.get("meta") if isinstance(d, dict) else None
        if m:
            commit = (m.get("commit") or "?")[:7] + ("+" if m.get("dirty") else "")
            env = f"OMP_NUM_THREADS={m['omp_num_threads']} " if m.get("omp_num_threads") else ""
            parts.append(f"`{env}{m['command']}` (commit {commit}, {m.get('threads')} thread(s), {m.get('date')})")
        else:
            parts.append(f"made by `benchmarks/{script}` before runs recorded their provenance (its command line, "
                         "commit, threads and date are not in the file)")
    return "Run: " + "; ".join(dict.fromkeys(parts)) + "."


# ----------------------------------------------------------------------------- renderers


def speedup(d: dict) -> str:
    """Realised speed-up of physically removed channels against the MAC reduction (benchmarks/speedup.py)."""
    rows = d["rows"] if isinstance(d, dict) else d
    s = d.get("settings", {}) if isinstance(d, dict) else {}
    head = (f"Input {s['size']}x{s['size']}, widths {'/'.join(map(str, s['widths']))}, "
            f"{d['meta']['threads']} thread(s). " if s else "")
    out = [head + "Speed-up / MAC reduction in **bold** where it meets the 0.8 target.", "",
           "| model | removed | MAC reduction | batch 1: speed-up | ratio | batch 64: speed-up | ratio |",
           "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["model"], r["rate"]) for r in rows}, key=lambda k: (k[0] != "resnet", k[0], k[1]))
    for model, rate in keys:
        cells = [f"{model}", f"{rate:.0%}"]
        by = {r["batch"]: r for r in rows if r["model"] == model and r["rate"] == rate}
        cells.append(f"{next(iter(by.values()))['mac_reduction']:.2f}x")
        for b in (1, 64):
            r = by.get(b)
            if r is None:
                cells += ["—", "—"]
                continue
            ratio = f"{r['ratio']:.2f}"
            cells += [f"{r['speedup']:.2f}x", f"**{ratio}**" if r["ratio"] >= 0.8 else ratio]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out + ["", _source_line(d, script="speedup.py")])


def scale(d: dict) -> str:
    """Distributed scoring throughput and peak memory (benchmarks/scale.py)."""
    out = []
    t = d.get("throughput")
    if t:
        r1 = t["one"]["samples"] / t["one"]["seconds"]
        r2 = t["two"]["samples"] / t["two"]["seconds"]
        out += [f"Throughput, {t['one']['samples']} samples, 1 torch thread per process: 1 process "
                f"{r1:.0f} samples/s, 2 gloo processes {r2:.0f} samples/s, ratio **{t['ratio']:.2f}x** (one run).", ""]
    m = d.get("memory")
    if m:
        tr = m["train"]
        t_inc = tr["peak_mb"] - tr["base_mb"]
        out += ["| reference samples | peak MB | + over setup MB | increment / training step's |", "|---|---|---|---|"]
        for r in m["rows"]:
            inc = r["peak_mb"] - r["base_mb"]
            out.append(f"| {r['n']} | {r['peak_mb']:.0f} | {inc:.0f} | {inc / t_inc:.2f} |")
        out += ["", f"One training step at the same batch size: peak {tr['peak_mb']:.0f} MB, "
                f"+ {t_inc:.0f} MB over setup."]
    return "\n".join(out + ["", _source_line(d, script="scale.py")])


def lrp_speed(d: dict) -> str:
    """Cost of an LRP pass vs a plain forward+backward and vs zennit (benchmarks/lrp_speed.py)."""
    s = d["settings"]
    out = [f"N = {s['n']} samples in batches of {s['batch']}, median of {s['repeats']}, {s['clock']} time.", "",
           "| model | composite | fwd+bwd s | xprune s | zennit s | xprune / fwd+bwd | zennit / xprune |",
           "|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        z = "—" if r["zennit_s"] is None else f"{r['zennit_s']:.3f}"
        zr = "—" if r["zennit_over_xprune"] is None else f"{r['zennit_over_xprune']:.2f}"
        out.append(f"| {r['model']} | {r['composite']} | {r['fwd_bwd_s']:.3f} | {r['xprune_s']:.3f} | {z} | "
                   f"{r['xprune_over_fwd_bwd']:.2f} | {zr} |")
    return "\n".join(out + ["", _source_line(d, script="lrp_speed.py")])


def guarantee(d: dict) -> str:
    """Certified rates by criterion and model (benchmarks/guarantee.py)."""
    rows = d["rows"]
    cols = list(dict.fromkeys((r["model"], r["max_drop"]) for r in rows))
    out = ["| criterion | " + " | ".join(f"{m.replace(':', ', ')}, {drop:.0%}" for m, drop in cols) + " |",
           "|:--|" + "--:|" * len(cols)]
    best = {c: max(r["rate"] for r in rows if (r["model"], r["max_drop"]) == c) for c in cols}
    for crit in dict.fromkeys(r["criterion"] for r in rows):
        cells = []
        for c in cols:
            r = next(x for x in rows if x["criterion"] == crit and (x["model"], x["max_drop"]) == c)
            if r["rate"] == 0:
                cells.append("0")
                continue
            rate = f"{r['rate']:.2f}"
            rate = f"**{rate}**" if r["rate"] == best[c] else rate
            cells.append(f"{rate} ({r['flips']}/{r['n_calibration']}, {100 * r['test_drop']:+.1f}%)")
        out.append(f"| {crit} | " + " | ".join(cells) + " |")
    models = d.get("models", {})
    notes = [f"{m}: n = {v['n_calibration']} calibration / {v['n_test']} test samples, unpruned test accuracy "
             f"{100 * v['accuracy_test']:.2f}%" for m, v in models.items()]
    out += ([""] + ["; ".join(notes) + "."] if notes else [])
    return "\n".join(out + ["", _source_line(d, script="guarantee.py")])


# Why two criteria of a table can give identical scores; keyed by the pair (kept, merged).
IDENTICAL = {
    ("lrp (epsilon-plus)", "lrp (epsilon-plus-flat)"):
        "the `-flat` presets change only the rule of the first layer, which moves relevance from that layer's "
        "output to the input; the scores are read at the outputs of layers, so they are the same",
    ("lrp (epsilon-alpha2-beta1)", "lrp (epsilon-alpha2-beta1-flat)"): "as above",
    ("lrp (epsilon)", "lrp (gradient)"):
        "in the gradient-times-input form the epsilon rule (epsilon = 1e-6) back-propagates the plain gradient "
        "up to the stabiliser, so its relevance at a unit's output is what the `gradient` composite (no rules) "
        "reads: activation x gradient of the target logit, over the logit",
}


def _merge_identical(auc: dict) -> tuple[list[tuple[str, list]], list[str]]:
    """Rows of (label, values) with identical per-seed values merged, and the notes that say why."""
    rows, notes, done = [], [], set()
    for k, v in auc.items():
        if k in done:
            continue
        same = [o for o in auc if o != k and o not in done and auc[o] == v]
        done.update([k, *same])
        rows.append((" = ".join([k, *same]), v))
        for o in same:
            why = IDENTICAL.get((k, o)) or IDENTICAL.get((o, k))
            notes.append(f"`{k}` = `{o}`: " + (why or "identical per-seed values (no reason known; investigate)"))
    return rows, notes


def pxp_tune(d: dict) -> str:
    """Test AUC of tuned LRP vs presets and baselines (benchmarks/pxp_tune.py), identical rows merged."""
    rows, notes = _merge_identical(d["auc"])
    rows.sort(key=lambda kv: -statistics.fmean(kv[1]))
    a = d["args"]
    out = [f"Task `{a['task']}`, {a['trials']} trials (sampler {a['sampler']}) on {a['val_size']} validation "
           f"samples, test AUC on {a['test_size']} test samples, seeds {a['seeds']}.", "",
           "| criterion | test AUC | per seed |", "|---|---|---|"]
    out += [f"| {k} | {_ms(v, 4)} | {', '.join(f'{x:.4f}' for x in v)} |" for k, v in rows]
    if notes:
        out += ["", "Merged rows (identical on every seed): " + "; ".join(notes) + "."]
    if d.get("timing"):
        out += ["", "| seed | validation AUC (tuned) | trials complete / pruned | s per trial | tuning s |",
                "|---|---|---|---|---|"]
        out += [f"| {t['seed']} | {t['val_auc']:.4f} | {t['counts'].get('complete', 0)} / "
                f"{t['counts'].get('pruned', 0)} | {t['seconds_per_trial']:.2f} | {t['tune_seconds']:.0f} |"
                for t in d["timing"]]
    return "\n".join(out + ["", _source_line(d, script="pxp_tune.py")])


def pxp_tune_units(heads: dict, neurons: dict) -> str:
    """ViT heads and neurons side by side (two files of benchmarks/pxp_tune.py)."""
    crits = sorted(dict.fromkeys([*heads["auc"], *neurons["auc"]]),
                   key=lambda k: -statistics.fmean(heads["auc"].get(k, [0.0])))
    best = {u: max(statistics.fmean(v) for v in d["auc"].values()) for u, d in (("h", heads), ("n", neurons))}

    def cell(d, u, k):
        v = d["auc"].get(k)
        if v is None:
            return "—"
        s = _ms(v)
        return f"**{s}**" if statistics.fmean(v) == best[u] else s

    out = [f"{heads['args']['trials']} trials (sampler {heads['args']['sampler']}), test AUC, seeds "
           f"{heads['args']['seeds']}.", "", "| criterion | heads | neurons |", "|---|---|---|"]
    out += [f"| {k} | {cell(heads, 'h', k)} | {cell(neurons, 'n', k)} |" for k in crits]
    per = [f"{name}: {statistics.fmean(t['seconds_per_trial'] for t in d['timing']):.1f} s per trial"
           for name, d in (("heads", heads), ("neurons", neurons))]
    return "\n".join(out + ["", "; ".join(per) + ".", "", _source_line(heads, neurons, script="pxp_tune.py")])


def transfer(d: dict) -> str:
    """AUC and accuracy at 25/50/75% by criterion (benchmarks/transfer.py)."""
    by: dict[str, list[dict]] = {}
    for c in d["curves"]:
        by.setdefault(c["criterion"], []).append(c)

    def at(cs, rate):
        return [c["accuracies"][min(range(len(c["rates"])), key=lambda i: abs(c["rates"][i] - rate))] for c in cs]

    out = ["| criterion | AUC | acc@25% | acc@50% | acc@75% | seeds |", "|---|---|---|---|---|---|"]
    for k in sorted(by, key=lambda k: -statistics.fmean(c["auc"] for c in by[k])):
        cs = by[k]
        out.append(f"| {k} | {_ms([c['auc'] for c in cs])} | {_ms(at(cs, 0.25))} | {_ms(at(cs, 0.5))} | "
                   f"{_ms(at(cs, 0.75))} | {len(cs)} |")
    return "\n".join(out + ["", _source_line(d, script="transfer.py")])


def entwined(d: dict) -> str:
    """Entwined vs one-shot + FT vs iterative without FT (benchmarks/entwined.py), test accuracy %."""
    kinds = ["entwined", "one-shot + FT", "iterative, no FT"]
    out = ["| criterion | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for c, runs in d["results"].items():
        out.append(f"| {c} | " + " | ".join(_ms([100 * r[k]["accuracy"] for r in runs], 2) for k in kinds) + " |")
    out += ["", f"Unpruned: {100 * d['unpruned_accuracy']:.2f}."]
    return "\n".join(out + ["", _source_line(d, script="entwined.py")])


def _suite_auc(curves: list) -> dict:
    """Per-seed AUC (mean accuracy over the rates) by criterion of the suite's saved curves."""
    by: dict[str, list[float]] = {}
    for c in curves:
        by.setdefault(c["criterion"], []).append(statistics.fmean(c["accuracies"]))
    return by


def headline(tr: dict, res: dict, vit: dict, summary: dict | None = None) -> str:
    """Best, runner-up, taylor, random and weakest criterion per scenario of the suite (`xprune bench`);
    ``summary`` (the suite's ``summary.json``) adds the commands and commits of the three scenarios."""
    scen = [("CNN transfer, 10 samples/class, no FT (AUC)", _suite_auc(tr["curves"]))]
    for kind, label in (("one-shot + FT", "one-shot + 60 FT steps"), ("entwined", "entwined, 60 FT steps")):
        acc = {c: v[kind] for c, v in res["results"].items() if v.get(kind)}
        scen.append((f"ResNet, 50% MACs, {label} (acc.)", acc))
    for kind, label in (("heads", "ViT heads, 3-class tasks, no FT (AUC)"),
                        ("neurons", "ViT MLP neurons, no FT (AUC)")):
        scen.append((label, _suite_auc(vit["curves"][kind])))
    out = ["| scenario (metric) | best | runner-up | taylor | random | weakest |", "|---|---|---|---|---|---|"]
    for label, by in scen:
        ranked = sorted(by, key=lambda k: -statistics.fmean(by[k]))
        cells = [f"{ranked[0]} {_ms(by[ranked[0]])}", f"{ranked[1]} {_ms(by[ranked[1]])}",
                 _ms(by["taylor"]) if "taylor" in by else "—", _ms(by["random"]) if "random" in by else "—",
                 f"{ranked[-1]} {_ms(by[ranked[-1]])}"]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if summary:
        runs = {}
        for name in ("transfer", "resnet", "vit"):
            info = summary["scenarios"].get(name)
            if info:
                runs.setdefault(info["command"], []).append(f"{name}: commit {info.get('commit') or '?'}, "
                                                            f"finished {info['finished']}")
        out += ["", "Run: " + "; ".join(f"`{cmd}` ({', '.join(v)})" for cmd, v in runs.items()) + "."]
    return "\n".join(out)


def steered(d: dict) -> str:
    """Interpretations Steered Pruning vs lrp, singe and taylor (benchmarks/steered.py)."""
    cols = [("MACs removed", "reduction", 3), ("units removed", "removed", 1), ("acc. no FT", "acc_no_ft", 3),
            ("acc. after FT", "acc", 3), ("heatmap Pearson", "pearson", 3), ("top-10% overlap", "topk", 3),
            ("scoring s", "score_seconds", 1)]
    out = ["| method | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for m, runs in d["rows"].items():
        out.append(f"| {m} | " + " | ".join(_ms([r[k] for r in runs], dg) for _, k, dg in cols) + " |")
    if d.get("gates_only"):
        out += ["", f"steered gates alone (threshold 0, no calibration): MACs removed {_ms(d['gates_only'])}."]
    st = d["stages"][0]
    a = d["args"]
    out += ["", f"Seeds {a['seeds']}, {a['ft_steps']} fine-tuning steps; steered stage training times (seed "
            f"{a['seeds'][0]}, {a['threads']} thread): predictor {st['predictor']:.1f} s, selector "
            f"{st['selector']:.1f} s, gates {st['gates']:.1f} s."]
    return "\n".join(out + ["", _source_line(d, script="steered.py")])


def _units_table(d: dict, key: str, digits: int, bold_best: bool = True) -> list[str]:
    crits = list(dict.fromkeys(k.split("/", 1)[1] for k in d["curves"]))
    best = {u: max(v[key] for k, v in d["curves"].items() if k.startswith(u + "/")) for u in ("heads", "neurons")}

    def cell(u, c):
        v = d["curves"].get(f"{u}/{c}")
        if v is None:
            return "—"
        s = f"{v[key]:.{digits}f}"
        return f"**{s}**" if bold_best and v[key] == best[u] else s

    return ["| criterion | heads | neurons |", "|---|---|---|"] + [
        f"| {c} | {cell('heads', c)} | {cell('neurons', c)} |" for c in crits]


def minilm(d: dict) -> str:
    """MiniLM heads and neurons: mean cosine of pruned vs original embeddings (benchmarks/minilm.py)."""
    r = d["timing_ratio"]
    plain, units, lrp = (r["forward+backward (parameters)"], r["forward+backward (unit outputs)"],
                         r["AttnLRP heads+neurons"])
    out = _units_table(d, "auc_cos", 3) + [
        "", f"{d['n_ref']} reference / {d['n_test']} held-out sentences. Scoring heads and neurons together with "
        f"AttnLRP costs {lrp / units:.2f}x a forward+backward to the same unit outputs ({lrp / plain:.2f}x one that "
        "computes parameter gradients)."]
    return "\n".join(out + ["", _source_line(d, script="minilm.py")])


def vit_pxp(d: dict) -> str:
    """xprune's ViT on MNIST in the PXP setting (benchmarks/vit_pxp.py), AUC over the rates."""
    out = [f"Classes {d['classes']}, {d['n_ref']} reference samples, {d['n_test']} test samples, AUC over "
           f"{len(d['rates'])} rates.", ""] + _units_table(d, "auc", 3)
    return "\n".join(out + ["", _source_line(d, script="vit_pxp.py")])


def llm(d: dict, calib: int | None = 128) -> str:
    """Perplexity of the tiny Llama-GQA after removing heads or neurons (benchmarks/llm.py); ``calib=None``:
    every calibration size, one row each."""
    hs, ns = d["head_ratios"], d["neuron_ratios"]
    rows = d["rows"] if calib is None else [r for r in d["rows"] if r["calib"] in (calib, 0, None)] or d["rows"]
    hb = [min(r["heads"][i] for r in rows) for i in range(len(hs))]
    nb = [min(r["neurons"][i] for r in rows) for i in range(len(ns))]

    def f(v, b):
        return f"**{v:.3f}**" if v == b else f"{v:.3f}"

    many = "8, 32 or 128" if calib is None else str(calib)
    label = (lambda r: f"{r['criterion']} ({r['calib']})" if r.get("calib") else r["criterion"]) if calib is None \
        else (lambda r: r["criterion"])
    where = " (in brackets)" if calib is None else ""
    out = [f"Unpruned perplexity {d['unpruned_perplexity']:.3f}; calibration{where} for the criteria that use data: "
           f"{many} blocks of {d['seq_len']} tokens.", "",
           "| criterion | " + " | ".join(f"heads {h:g}" for h in hs) + " | " + " | ".join(f"neurons {n:g}" for n in ns)
           + " |", "|---|" + "---|" * (len(hs) + len(ns))]
    for r in rows:
        out.append(f"| {label(r)} | " + " | ".join(f(v, b) for v, b in zip(r["heads"], hb)) + " | "
                   + " | ".join(f(v, b) for v, b in zip(r["neurons"], nb)) + " |")
    return "\n".join(out + ["", _source_line(d, script="llm.py")])


def faithful(*ds: dict) -> str:
    """The published methods at 50% of the MACs, one fine-tuning budget (benchmarks/faithful.py; a file per setting)."""
    out = []
    for res in (r for d in ds for r in d["results"]):
        out += [f"**{res['arch']} on {res['data']}**: unpruned test accuracy {res['unpruned_accuracy']:.3f} "
                f"({res['test_n']} test samples), {res['macs'] / 1e6:.2f} M MACs, {res['units']} prunable channels.",
                "", "| method | MACs removed % | acc. before FT | acc. after FT | scoring s |", "|---|---|---|---|---|"]
        best = max(statistics.fmean([r["acc"] for r in rs]) for rs in res["rows"].values())
        for m, rs in res["rows"].items():
            before = [r["acc_no_ft"] for r in rs if r["acc_no_ft"] is not None]
            acc = _ms([r["acc"] for r in rs])
            if statistics.fmean([r["acc"] for r in rs]) == best:
                acc = f"**{acc}**"
            out.append(f"| {m} | {_ms([100 * r['macs_reduction'] for r in rs], 1)} | "
                       f"{_ms(before) if before else 'interleaved'} | {acc} | {_ms([r['score_seconds'] for r in rs], 1)} |")
        out.append("")
    st = ds[0]["settings"]
    out.append(f"Seeds {st['seeds']} (reference samples, ISP stages, fine-tuning order); {st['per_class']} reference "
               f"samples per class; fine-tuning {st['ft_steps']} Adam steps, lr {st['ft_lr']}, for every row; "
               f"entwined: {st['entwined_steps']} rounds sharing those steps; lrp (tuned): {st['trials']} random-search "
               "trials of `xprune.tune` on validation data, seed 0. ISP scoring time = training its three stages.")
    return "\n".join(out + ["", _source_line(*ds, script="faithful.py")])


RENDERERS: dict[str, Callable[..., str]] = {
    "speedup": speedup, "scale": scale, "lrp_speed": lrp_speed, "guarantee": guarantee, "pxp_tune": pxp_tune,
    "pxp_tune_units": pxp_tune_units, "transfer": transfer, "entwined": entwined, "headline": headline,
    "steered": steered, "minilm": minilm, "vit_pxp": vit_pxp, "llm": llm,
    "llm_all": lambda d: llm(d, calib=None), "faithful": faithful,
}


def _script(name: str) -> Callable[..., str]:
    """The renderer a benchmark script defines itself (``render(d)``), imported when a block needs it."""
    def render_with(d: dict) -> str:
        import importlib

        return importlib.import_module(name).render(d)

    return render_with


RENDERERS.update(control_lm=_script("control_lm"), control_shortcut=_script("control_shortcut"),
                 control_minilm=_script("control_minilm"))


# ----------------------------------------------------------------------------- blocks and the check


def _load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _render_block(spec: str, body: str) -> str:
    name, *paths = spec.split()
    if name == "quoted":
        return body
    lost = [p for p in paths if not (ROOT / p).exists()]
    if lost:
        print(f"warning: block '{spec}' left as it is: no file {lost}", file=sys.stderr)
        return body
    if name not in RENDERERS:
        raise SystemExit(f"unknown renderer {name!r} in '<!-- figures: {spec} -->'; known: {sorted(RENDERERS)}")
    return RENDERERS[name](*[_load(p) for p in paths]).rstrip() + "\n"


def render_text(text: str) -> str:
    """``text`` with every figure block re-rendered from its files."""
    def one(m):
        return f"<!-- figures: {m['spec']} -->\n{_render_block(m['spec'], m['body'])}<!-- /figures -->"

    return BLOCK.sub(one, text)


def json_numbers(data) -> list[float]:
    """Every number a table may quote from ``data``: the scalars, and for each list of numbers (and each dict
    whose values are such lists, concatenated) its mean, standard deviation, minimum, maximum and sum."""
    out: list[float] = []

    def stats(values):
        values = [float(v) for v in values]
        if values:
            out.extend([statistics.fmean(values), min(values), max(values), sum(values)])
        if len(values) > 1:
            out.extend([statistics.stdev(values), statistics.pstdev(values)])

    def walk(x):
        if isinstance(x, bool) or x is None:
            return
        if isinstance(x, (int, float)):
            out.append(float(x))
        elif isinstance(x, list):
            if x and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x):
                stats(x)
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            vals = list(x.values())
            if vals and all(isinstance(v, list) and v and all(isinstance(e, (int, float)) for e in v) for v in vals):
                stats([e for v in vals for e in v])
            for v in vals:
                walk(v)

    walk(data)
    return [v for v in out if math.isfinite(v)]


NUMBER = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.])")


def untraced(body: str, datas: list) -> list[str]:
    """Decimal figures of ``body`` that no number of ``datas`` (nor 100x one) rounds to.

    Figures in code spans and in the 'Run:' provenance line are not checked.
    """
    pool = [v for d in datas for v in json_numbers(d)]
    pool += [100 * v for v in pool]
    text = "\n".join(ln for ln in body.splitlines() if not ln.startswith("Run: "))
    text = re.sub(r"`[^`]*`", "", text)
    missing = []
    for tok in NUMBER.findall(text):
        digits = len(tok.split(".")[1])
        x, tol = float(tok), 0.5 * 10 ** -digits + 1e-9
        if not any(abs(v - x) <= tol or abs(abs(v) - abs(x)) <= tol for v in pool):
            missing.append(tok)
    return missing


def check(paths=FILES) -> list[str]:
    """Problems: blocks that differ from a fresh render, blocks quoting numbers their files lack, missing files."""
    problems = []
    for p in paths:
        text = (ROOT / p).read_text()
        for m in BLOCK.finditer(text):
            name, *files = m["spec"].split()
            lost = [f for f in files if not (ROOT / f).exists()]
            if lost or not files:
                problems.append(f"{p}: block '{m['spec']}' names no stored file or a missing one: {lost}")
                continue
            if name != "quoted":  # a rendered block is traced by construction: it must equal a fresh render
                if _render_block(m["spec"], m["body"]) != m["body"]:
                    problems.append(f"{p}: block '{m['spec']}' is stale; run `python benchmarks/render.py`")
                continue
            bad = untraced(m["body"], [_load(f) for f in files])
            if bad:
                problems.append(f"{p}: block '{m['spec']}' quotes figures not in its files: {bad}")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 on a stale or untraced block")
    ap.add_argument("files", nargs="*", default=list(FILES))
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.files)
        print("\n".join(problems) or "all figure blocks are fresh and traced")
        return 1 if problems else 0
    for p in args.files:
        path = ROOT / p
        text = path.read_text()
        new = render_text(text)
        if new != text:
            path.write_text(new)
            print(f"rendered {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
