"""The "which criterion should I use?" section of the results page: bullets computed from the suite's
output (and the stored results) and the hand-written advice :data:`GUIDE`."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from ._common import _auc_ranking, _first


def _guide(out: Path, existing: Path) -> list[str]:
    """Bullet points of "which criterion" derived from the numbers in ``out`` (and the stored results)."""
    lines = []
    toy_json = out / "toy.json"
    if toy_json.exists():
        toy_ = json.loads(toy_json.read_text())
        ns = toy_["settings"]["reference_per_class"]
        few, many = [str(n) for n in ns if n <= 5], [str(n) for n in ns if n >= 50] or [str(ns[-1])]
        for ds, r in toy_["results"].items():
            def best(keys, r=r):
                ranked = sorted(r["acc"], key=lambda lab: -statistics.fmean(sum((r["acc"][lab][k] for k in keys), [])))
                top = ranked[0]
                return top, statistics.fmean(sum((r["acc"][top][k] for k in keys), []))
            (b1, a1), (b2, a2) = best(few), best(many)
            rnd = statistics.fmean(sum(r["acc"]["random"].values(), []))
            informed = {lab: v for lab, v in r["acc"].items() if lab not in ("random", "weight", "l2")}
            (c1, d1), (c2, d2) = best(few, {"acc": informed}), best(many, {"acc": informed})
            lines.append(f"- Toy MLP, {ds} (unpruned {statistics.fmean(r['base']):.3f}): with <= 5 samples per class "
                         f"the best is **{b1}** ({a1:.3f}), the best that uses data {c1} ({d1:.3f}); with >= "
                         f"{many[0]} the best is **{b2}** ({a2:.3f}), the best that uses data {c2} ({d2:.3f}); random "
                         f"removal keeps {rnd:.3f}.")
    tr = out / "transfer.json"
    if tr.exists():
        by, ranked = _auc_ranking(json.loads(tr.read_text())["curves"])
        lines.append("- CNN transfer, 10 samples per class, no fine-tuning: AUC ranking "
                     + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:4]) + f"; last: {ranked[-1]} "
                     f"{statistics.fmean(by[ranked[-1]]):.3f}.")
    res = _first(out / "resnet.json", existing / "entwined.json")
    if res is not None:
        r = json.loads(res.read_text())["results"]
        if r and isinstance(next(iter(r.values())), dict):  # bench format: criterion -> schedule -> [acc]
            acc = {c: {k: statistics.fmean(v) for k, v in s.items() if v} for c, s in r.items()}
        else:  # benchmarks/entwined.py format: criterion -> [per seed {schedule: {accuracy}}]
            acc = {c: {k: statistics.fmean(x[k]["accuracy"] for x in runs) for k in runs[0]} for c, runs in r.items()}
        for kind in ("entwined", "one-shot + FT"):
            top = max((c for c in acc if kind in acc[c]), key=lambda c: acc[c][kind])
            src = "" if res.parent == out else f" (stored `{res.name}`)"
            lines.append(f"- ResNet with fine-tuning, 50% fewer MACs, {kind}: **{top}** ({acc[top][kind]:.3f}){src}.")
    vit_json = out / "vit.json"
    if vit_json.exists():
        for kind, cs in json.loads(vit_json.read_text())["curves"].items():
            by, ranked = _auc_ranking(cs)
            lines.append(f"- ViT {kind}, 3-class tasks, no fine-tuning: AUC ranking "
                         + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:3])
                         + f"; random {statistics.fmean(by['random']):.3f}; last: {ranked[-1]} "
                         f"{statistics.fmean(by[ranked[-1]]):.3f}.")
    pf = out / "perf.json"
    if pf.exists():
        costs = json.loads(pf.read_text())["costs"]
        lrp_cost = costs.get("lrp (epsilon-plus)", {}).get("relative")
        dear = max(costs, key=lambda k: costs[k]["relative"])
        lines.append(f"- Cost: lrp (epsilon-plus) {lrp_cost:.2f}x a forward+backward; taylor "
                     f"{costs['taylor']['relative']:.2f}x; the dearest is {dear} ({costs[dear]['relative']:.2f}x).")
    return lines


GUIDE = """\
In short (the bullets above are computed from the suite's output and the stored results; the advice below
draws on all the tables on this page):

- **Few reference samples, no fine-tuning, a CNN** (the Pruning-by-Explaining setting): `lrp`, but choose
  the composite: the epsilon rule, z+ or a composite tuned with `xprune tune` beat `taylor` on the transfer
  task, while the default `epsilon-plus` trails it there. Tuning gained little over the best preset
  (within one seed's spread) and needs a labelled validation split.
- **A very over-parameterised network, a moderate rate**: check `random` first. On the 1000-wide toy MLPs
  no criterion beats removing a third of the neurons at random on circles and moons; the data-driven
  criteria approach it only from about 50-100 samples per class.
- **You will fine-tune anyway**: the criterion matters little. After a one-shot cut of half the ResNet's
  MACs and 60 fine-tuning steps, `steered`, `random`, `taylor` and `lrp` (alpha2-beta1) end within one
  point of each other; `singe` and z+ fall behind one-shot and need the entwined schedule (several small
  steps with fine-tuning between), where `lrp` (epsilon-plus) was best.
- **Transformers**: prune attention heads with `lrp` (AttnLRP or CP-LRP; tuned slightly better): far ahead
  of `taylor`, `gradient`, `weight` and `random` on the ViT and on MiniLM (where `activation` matches it on
  heads). For MLP neurons of the small ViT
  the criteria are within noise; on MiniLM `lrp` (AttnLRP) keeps the embeddings closest. For decoder LLMs
  judged by perplexity, `llm-pruner` and `wanda` were best beyond a quarter of the heads (tiny model).
- **Keep explanations**: after pruning 50% of the digits VGG with `lrp` its heatmaps barely change
  (below); `taylor` kept heatmaps best after fine-tuning in the steered-pruning study.
- **Budget**: `weight`, `l2`, `random` cost less than one forward+backward; `gradient`, `taylor` and `lrp`
  about 1.5-1.8x; `integrated-gradients` and `singe` 15x and more (one pass per path step).
- **No data at all**: `weight`/`l2` are the only options without data and usually among the weakest.
- **Need a guarantee**: `xprune prune --max-drop` certifies the rate on calibration data, whatever the
  criterion; `lrp` got the largest certified rates in the stored runs.
"""

