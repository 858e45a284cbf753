"""The "which criterion should I use?" section of the results page: bullets computed from the suite's
output and the stored results (:func:`_guide`), then :data:`GUIDE`, a hand-written *reading* of the
tables, labelled as such on the page: it is not recomputed when the numbers change and quotes no figure."""

from __future__ import annotations

import itertools
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
                def mean(label):
                    return statistics.fmean(itertools.chain.from_iterable(r["acc"][label][k] for k in keys))

                top = max(r["acc"], key=mean)  # the first of equals, as a stable sort by -mean gives
                return top, mean(top)

            (b1, a1), (b2, a2) = best(few), best(many)
            rnd = statistics.fmean(itertools.chain.from_iterable(r["acc"]["random"].values()))
            informed = {lab: v for lab, v in r["acc"].items() if lab not in ("random", "weight", "l2")}
            (c1, d1), (c2, d2) = best(few, {"acc": informed}), best(many, {"acc": informed})
            lines.append(
                f"- Toy MLP, {ds} (unpruned {statistics.fmean(r['base']):.3f}): with <= 5 samples per class "
                f"the best is **{b1}** ({a1:.3f}), the best that uses data {c1} ({d1:.3f}); with >= "
                f"{many[0]} the best is **{b2}** ({a2:.3f}), the best that uses data {c2} ({d2:.3f}); random "
                f"removal keeps {rnd:.3f}."
            )
    tr = out / "transfer.json"
    if tr.exists():
        by, ranked = _auc_ranking(json.loads(tr.read_text())["curves"])
        lines.append(
            "- CNN transfer, 10 samples per class, no fine-tuning: AUC ranking "
            + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:4])
            + f"; last: {ranked[-1]} "
            f"{statistics.fmean(by[ranked[-1]]):.3f}."
        )
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
            lines.append(
                f"- ViT {kind}, 3-class tasks, no fine-tuning: AUC ranking "
                + ", ".join(f"{k} {statistics.fmean(by[k]):.3f}" for k in ranked[:3])
                + f"; random {statistics.fmean(by['random']):.3f}; last: {ranked[-1]} "
                f"{statistics.fmean(by[ranked[-1]]):.3f}."
            )
    pf = out / "perf.json"
    if pf.exists():
        costs = json.loads(pf.read_text())["costs"]
        rel = {k: v["relative"] for k, v in costs.items()}
        cheap = sorted((k for k, v in rel.items() if v < 1), key=rel.__getitem__)
        mid = sorted((k for k, v in rel.items() if 1 <= v < 5), key=rel.__getitem__)
        dear = sorted((k for k, v in rel.items() if v >= 5), key=rel.__getitem__)

        def span(ks):
            return f"{', '.join(ks)} ({min(rel[k] for k in ks):.2f}-{max(rel[k] for k in ks):.2f}x)" if ks else "none"

        lines.append(
            f"- Cost of scoring, relative to a forward+backward: below 1x {span(cheap)}; 1-5x {span(mid)}; "
            f"5x and more {span(dear)}."
        )
    gj = existing / "guarantee.json"
    if gj.exists():
        rows = json.loads(gj.read_text())["rows"]
        cols = list(dict.fromkeys((r["model"], r["max_drop"]) for r in rows))
        parts = []
        for model, drop in cols:
            cell = [r for r in rows if (r["model"], r["max_drop"]) == (model, drop)]
            top = max(r["rate"] for r in cell)
            who = [r["criterion"] for r in cell if r["rate"] == top]
            winners = f"{', '.join(who)} ({top:.2f})" if top > 0 else "none certified"
            parts.append(f"{model} at {drop:.0%}: {winners}")
        lines.append("- Largest certified rate (stored `guarantee.json`): " + "; ".join(parts) + ".")
    return lines


GUIDE = """\
In short: **a reading** of the tables on this page, written by hand. Unlike the bullets above it is not
recomputed when the numbers change, and it quotes no figure: check it against the tables it names.

- **Few reference samples, no fine-tuning, a CNN** (the Pruning-by-Explaining setting; "CNN transfer" and
  "Tuned LRP composites"): `lrp`, but choose the composite. On the transfer task the epsilon rule, z+ and
  a composite tuned with `xprune tune` were ahead of `taylor`, while `epsilon-plus` was behind it. Tuning
  needs a labelled validation split.
- **A very over-parameterised network, a moderate rate** ("Toy 2-D MLP"): check `random` first. On the
  1000-wide toy MLPs, removing a third of every layer at random was not beaten on circles and moons.
- **You will fine-tune anyway** ("ResNet with fine-tuning"): the criterion mattered little after a one-shot
  cut and fine-tuning, where `random` was within the seeds' spread of the best; `singe-fast` and z+
  needed the entwined schedule (several small steps with fine-tuning between). SInGE as defined now
  (`singe`, per unit) and the published methods side by side: the README's "published methods" table.
- **Transformers** ("ViT heads and neurons", "MiniLM", "Decoder-only language model"): for attention heads
  `lrp` (AttnLRP or CP-LRP) led on the ViT and on MiniLM (where `activation` was close); for MLP neurons of
  the small ViT the criteria were within noise. For decoder LLMs judged by perplexity, `llm-pruner` and
  `wanda` were best beyond a quarter of the heads (tiny model).
- **Keep explanations** ("Explanations before and after pruning", "Interpretations Steered Pruning"): the
  heatmaps of the digits VGG barely changed after pruning half of it with `lrp`; after fine-tuning,
  `taylor` kept the heatmaps closest in the steered-pruning study.
- **Budget**: see the cost bullet above; path methods (`integrated-gradients`, `singe-fast`) pay one pass
  per path step; `singe` (per unit) pays about one pass per unit and path step (`docs/singe.md`).
- **No data at all**: `weight`/`l2` are the only options without data.
- **Need a guarantee** ("Pruning with a guarantee"): `xprune prune --max-drop` certifies the rate on
  calibration data, whatever the criterion.
"""
