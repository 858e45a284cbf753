"""Every figure of README.md ("## Results") and docs/results.md has a stored source (benchmarks/render.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import _meta  # noqa: E402 - benchmarks/ is put on sys.path above
import render  # noqa: E402 - as above

# Decimal figures the README's Results section may state outside a figure block: settings, not measurements.
SETTINGS = {"0.8": "the speed-up / MAC-reduction target of benchmarks/speedup.py"}


def _results_section(text: str) -> str:
    start = text.index("\n## Results\n")
    end = text.find("\n## ", start + 5)
    return text[start : end if end > 0 else None]


def test_every_block_is_fresh_and_traced():
    assert render.check() == []


def test_readme_results_quote_no_figure_outside_blocks():
    section = _results_section((ROOT / "README.md").read_text())
    assert render.BLOCK.search(section), "the Results section has no figure block"
    outside = render.BLOCK.sub("", section)
    loose = []
    for line in outside.splitlines():
        if "(not reproduced: no stored run)" in line:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        loose += [t for t in render.NUMBER.findall(line) if t not in SETTINGS]
    assert loose == [], f"figures outside a figure block (put them in one, or mark them as not reproduced): {loose}"


def test_results_page_tables_come_from_stored_output():
    """Outside its figure blocks, every table row of docs/results.md is copied from a stored ``.md`` output."""

    def links(text):  # the page rewrites the paths of images relative to itself
        return re.sub(r"\]\([^)]*\)", "]()", text)

    page = links(render.BLOCK.sub("", (ROOT / "docs" / "results.md").read_text()))
    stored = links(
        "\n".join(p.read_text() for d in ("docs/bench", "benchmarks/results") for p in (ROOT / d).glob("*.md"))
    )
    rows = [ln for ln in page.splitlines() if ln.startswith("| ") and re.search(r"\d\.\d", ln)]
    rows = [ln for ln in rows if "`" not in ln]  # the provenance table ("How these numbers were made")
    assert rows, "no table rows found"
    assert [ln for ln in rows if ln not in stored] == []


def test_json_numbers_holds_values_and_list_statistics():
    pool = render.json_numbers({"a": [0.5, 0.7], "b": {"c": 3, "d": True}, "e": [{"f": 0.25}]})
    for v in (0.5, 0.7, 0.6, 0.1414213562, 1.2, 3.0, 0.25):
        assert any(abs(v - x) < 1e-9 for x in pool), v
    assert 1.0 not in pool  # booleans are not figures


def test_check_catches_a_made_up_figure_and_a_stale_table(tmp_path):
    src = ROOT / "benchmarks" / "results" / "entwined.json"
    data = json.loads(src.read_text())
    acc = [r["one-shot + FT"]["accuracy"] for r in data["results"]["taylor"]]
    rel = src.relative_to(ROOT).as_posix()
    good = f"<!-- figures: quoted {rel} -->\ntaylor kept {acc[0]:.3f} after fine-tuning.\n<!-- /figures -->\n"
    page = tmp_path / "page.md"
    page.write_text(good)
    assert render.check([str(page)]) == []
    page.write_text(good.replace(f"{acc[0]:.3f}", f"{acc[0] + 0.0123:.4f}"))
    assert "quotes figures not in its files" in render.check([str(page)])[0]

    mean = sum(acc) / len(acc)
    fresh = render.render_text(f"<!-- figures: entwined {rel} -->\n<!-- /figures -->\n")
    page.write_text(fresh)
    assert render.check([str(page)]) == []
    # the table shows the taylor one-shot accuracy in %, as the mean over seeds computed here
    assert f"{100 * mean:.2f}" in fresh.split("| taylor |")[1].splitlines()[0]
    page.write_text(fresh.replace(f"{100 * mean:.2f}", f"{100 * mean + 1:.2f}"))
    assert "is stale" in render.check([str(page)])[0]


def test_speedup_table_quotes_the_stored_ratios():
    data = json.loads((ROOT / "benchmarks" / "results" / "speedup-56.json").read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    r = next(x for x in rows if x["model"] == "vgg" and x["rate"] == 0.5 and x["batch"] == 1)
    ratio = r["speedup"] / r["mac_reduction"]  # recomputed, not the stored "ratio"
    text = render.speedup(data)
    line = next(ln for ln in text.splitlines() if ln.startswith("| vgg | 50% |"))
    assert line.split(" | ")[4].strip("*") == f"{ratio:.2f}"


def test_identical_rows_are_merged_with_their_reason():
    auc = {
        "lrp (epsilon-plus)": [0.3, 0.4],
        "lrp (epsilon-plus-flat)": [0.3, 0.4],
        "taylor": [0.3, 0.41],
        "a": [0.5],
        "b": [0.5],
    }
    rows, notes = render._merge_identical(auc)
    assert [k for k, _ in rows] == ["lrp (epsilon-plus) = lrp (epsilon-plus-flat)", "taylor", "a = b"]
    assert "first layer" in notes[0] and "no reason known" in notes[1]


def test_the_stated_reasons_for_identical_rows_hold():
    """-flat presets change only the input relevance; epsilon reads activation x gradient; z+ does not."""
    from tiny_models import ConvBN, randomize_bn
    from xprune import lrp

    torch.manual_seed(0)
    model = ConvBN()
    randomize_bn(model)
    model.eval()
    x, y = torch.rand(6, 3, 8, 8), torch.randint(0, 5, (6,))
    layers = ["conv1", "conv2", "fc1", "fc2"]
    rel = {
        c: lrp.relevance(model, x, y, lrp.composite(c), layers)
        for c in ("epsilon-plus", "epsilon-plus-flat", "epsilon", "gradient", "zplus")
    }
    for k in layers:
        assert torch.equal(rel["epsilon-plus"][1][k], rel["epsilon-plus-flat"][1][k])
        a, b = rel["epsilon"][1][k], rel["gradient"][1][k]  # equal up to the stabiliser (near-zero z)
        assert (a - b).norm() <= 1e-3 * b.norm()
        dims = [d for d in range(a.dim()) if d != 1]  # per-unit scores (sum of |R|) rank the units alike
        assert torch.equal(a.abs().sum(dims).argsort(), b.abs().sum(dims).argsort())
    assert not torch.allclose(rel["epsilon-plus"][0], rel["epsilon-plus-flat"][0])  # the input relevance differs
    assert not torch.allclose(rel["epsilon"][1]["conv1"], rel["zplus"][1]["conv1"], rtol=0.1)
    # activation x gradient of the target logit at the output of conv1 + bn1 (BatchNorm is merged into conv1),
    # divided by the logit since the pass starts from relevance 1 there; computed here without xprune.lrp
    store = []
    h = model.bn1.register_forward_hook(lambda m, a, o: store.append(o))
    logit = model(x)[torch.arange(6), y]
    h.remove()
    (g,) = torch.autograd.grad(logit.sum(), store)
    ref = store[0] * g / logit.view(-1, 1, 1, 1)
    assert (rel["gradient"][1]["conv1"] - ref).norm() <= 1e-5 * ref.norm()


def test_meta_records_the_run(tmp_path):
    record = _meta.meta(["benchmarks/x.py", "--n", "1"], threads=3)
    assert record["command"] == "python benchmarks/x.py --n 1"
    assert record["threads"] == 3 and record["machine"]["cores"] >= 1 and record["date"].endswith("UTC")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert record["commit"] == head.stdout.strip()
    path = _meta.write_json(tmp_path / "r.json", [{"a": 1}], record=record)
    body = json.loads(path.read_text())
    assert body["rows"] == [{"a": 1}] and body["meta"]["command"] == record["command"]
    assert "load_average_end" in body["meta"]["machine"]


@pytest.mark.parametrize("name", ["lrp_speed.json", "guarantee.json"])
def test_rerun_files_carry_provenance(name):
    meta = json.loads((ROOT / "benchmarks" / "results" / name).read_text())["meta"]
    assert meta["command"].startswith("python benchmarks/") and meta["commit"] and meta["date"]
