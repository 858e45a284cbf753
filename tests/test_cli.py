"""The command line speaks the user's conventions (issue 18): data as given, criterion options, honoured flags,
the current folder importable, Hugging Face models, image-folder options, one-line errors, --overwrite everywhere,
degenerate results warned about, readable output, progress on stderr.

Everything runs in a folder like a user's: ``mynet.py`` (a small CNN factory), its weights (safetensors) trained
on the digits as [0, 1] pixels, ``digits.npz`` with those pixels, an image folder, and a tiny BERT saved with
``save_pretrained`` with a tokenizer built offline and a ``.jsonl`` of labelled texts.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from xprune import report
from xprune._progress import Progress, track
from xprune.cli import build_parser, main

MYNET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, channels=1, classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def make_net():
    return Net()


def make_gray3():
    return Net(1, 3)


def broken():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            if x.shape[0] > 1:  # traced on one sample, fails on a batch
                raise ZeroDivisionError("float division by zero in Broken.forward")
            return self.fc(self.conv(x).mean((2, 3)))
    return Broken()
"""

WORDS = ["good", "great", "fine", "nice", "bad", "awful", "poor", "sad", "the", "movie", "was", "very", "and"]


def _train_digits(folder: Path) -> float:
    """Train mynet's CNN on the digits as [0, 1] pixels (the user's convention); return its accuracy on them."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype("float32").reshape(-1, 1, 8, 8)
    np.savez(folder / "digits.npz", X=X, y=y)
    namespace: dict = {}
    exec(compile(MYNET, str(folder / "mynet.py"), "exec"), namespace)
    torch.manual_seed(0)
    net = namespace["make_net"]()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(20):
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt), 128):
            idx = perm[i : i + 128]
            loss = nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(folder / "net.safetensors"))
    with torch.no_grad():
        return (net(Xt).argmax(1) == yt).float().mean().item()


def _images(folder: Path, n: int = 10) -> None:
    """Three classes of RGB 10x12 PNGs, each class brighter in one colour channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["circle", "cross", "square"]):
        (folder / "images" / name).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 60, size=(10, 12, 3), dtype=np.uint8)
            a[..., c] += 150
            Image.fromarray(a, "RGB").save(folder / "images" / name / f"{i}.png")


def _bert(folder: Path) -> None:
    """A tiny BERT classifier with a tokenizer built offline, saved with save_pretrained, and labelled texts."""
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=2,
        max_position_embeddings=32,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(folder / "bert")
    tokenizer.save_pretrained(folder / "bert")
    rng = random.Random(0)
    lines = []
    for i in range(60):
        label = i % 2
        w = rng.sample(WORDS[:4] if label else WORDS[4:8], 2)
        lines.append(json.dumps({"text": f"the movie was very {w[0]} and {w[1]}", "label": ["neg", "pos"][label]}))
    (folder / "reviews.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user")
    (folder / "mynet.py").write_text(MYNET)
    accuracy = _train_digits(folder)
    assert accuracy > 0.9
    _images(folder)
    return folder


@pytest.fixture
def here(work, monkeypatch):
    """Run in the user's folder, with it (and '') off sys.path as under a console script, mynet not imported yet."""
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(work))])
    for name in ("mynet",):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return work


MODEL = ["--model", "mynet:make_net", "--weights", "net.safetensors"]


def _true_accuracy(work: Path, model: nn.Module | None = None) -> float:
    """The accuracy of mynet's CNN on the test split of digits.npz as stored, computed here by hand."""
    if model is None:
        sys.path.insert(0, str(work))
        try:
            import mynet
        finally:
            sys.path.remove(str(work))
        from safetensors.torch import load_file

        model = mynet.make_net()
        model.load_state_dict(load_file(str(work / "net.safetensors")))
    test = xprune.data.load(str(work / "digits.npz"), normalize="none").test
    with torch.no_grad():
        return (model.eval()(test.X).argmax(1) == test.y).float().mean().item()


def _table_accuracy(out: str) -> tuple[float, float]:
    m = re.search(r"accuracy\s+│\s+([0-9.]+)\s+│\s+([0-9.]+)", out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


# --------------------------------------------------------------------------- 1, 4: data as given, cwd importable


def test_npz_is_fed_as_stored_and_the_model_is_imported_from_the_current_folder(here, capsys):
    assert main(["prune", *MODEL, "--data", "digits.npz", "--ratio", "0.2", "--out", "small.pt", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "data: inputs fed to the model as stored" in out
    truth = _true_accuracy(here)
    before, _after = _table_accuracy(out)
    assert truth > 0.9 and before == pytest.approx(truth, abs=5e-5)  # its true accuracy, not the standardised one
    plan = xprune.Plan.load("small.plan.json")
    assert plan.meta["normalization"]["method"] == "none"
    assert plan.meta["accuracy"]["before"] == pytest.approx(truth)
    small = torch.load("small.pt", weights_only=False)  # the way the command says to open it
    assert plan.meta["accuracy"]["after"] == pytest.approx(_true_accuracy(here, small))
    assert "torch.load(path, weights_only=False)" in out and "xprune.Plan.load(path)" in out

    # asked for: standardised with the train split's statistics, said and recorded
    assert (
        main(
            [
                "prune",
                *MODEL,
                "--data",
                "digits.npz",
                "--normalize",
                "mean-std",
                "--ratio",
                "0.2",
                "--out",
                "std.pt",
                "--overwrite",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "standardised with the train split's mean and std" in out
    assert xprune.Plan.load("std.plan.json").meta["normalization"]["method"] == "mean-std"
    assert _table_accuracy(out)[0] != pytest.approx(truth, abs=1e-3)

    # a JSON file of statistics
    Path("stats.json").write_text(json.dumps({"mean": [0.5], "std": [0.25]}))
    assert (
        main(
            [
                "prune",
                *MODEL,
                "--data",
                "digits.npz",
                "--normalize",
                "stats.json",
                "--criterion",
                "weight",
                "--ratio",
                "0.2",
                "--out",
                "given.pt",
                "--overwrite",
            ]
        )
        == 0
    )
    meta = xprune.Plan.load("given.plan.json").meta["normalization"]
    assert meta["mean"] == [0.5] and meta["std"] == [0.25]

    # the certified rate (--max-drop, calibrated on the val split), and the pruned model exported to ONNX
    assert main(["prune", *MODEL, "--data", "digits.npz", "--max-drop", "0.05", "--out", "safe.pt", "--overwrite"]) == 0
    assert "Chosen pruning rate" in capsys.readouterr().out
    assert xprune.Plan.load("safe.plan.json").meta["guarantee"]["calibration"] == "val split"
    assert (
        main(["export", "--model", "small.pt", "--input-shape", "1,1,8,8", "--out", "small.onnx", "--overwrite"]) == 0
    )
    assert "onnxruntime.InferenceSession(path)" in capsys.readouterr().out
    ort = pytest.importorskip("onnxruntime")
    X = torch.randn(5, 1, 8, 8)
    got = ort.InferenceSession("small.onnx").run(None, {"input": X.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), small(X), atol=1e-4, rtol=1e-4)


def test_a_pickled_model_of_a_class_in_the_current_folder_loads(here, work, capsys, tmp_path):
    import importlib

    sys.path.insert(0, str(work))
    mynet = importlib.import_module("mynet")
    sys.path.remove(str(work))
    torch.save(mynet.make_net(), work / "mynet_full.pt")
    sys.modules.pop("mynet")
    assert (
        main(
            [
                "prune",
                "--model",
                "mynet_full.pt",
                "--data",
                "digits.npz",
                "--criterion",
                "weight",
                "--ratio",
                "0.3",
                "--out",
                "full-small.pt",
                "--overwrite",
            ]
        )
        == 0
    )
    capsys.readouterr()
    sys.modules.pop("mynet", None)
    os.chdir(tmp_path)  # elsewhere: the module is missing, and the message says which and how to fix it
    assert (
        main(
            [
                "prune",
                "--model",
                str(work / "mynet_full.pt"),
                "--data",
                str(work / "digits.npz"),
                "--ratio",
                "0.3",
                "--out",
                "x.pt",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "Python module 'mynet'" in err and "PYTHONPATH=" in err and "corrupt" not in err
    assert (
        main(
            [
                "prune",
                "--model",
                "mynet:make_net",
                "--data",
                str(work / "digits.npz"),
                "--ratio",
                "0.3",
                "--out",
                "x.pt",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no mynet.py in the current folder" in err and "PYTHONPATH" in err


def test_console_script_imports_from_the_current_folder(work, tmp_path):
    script = Path(sys.executable).with_name("xprune")
    if not script.exists():
        pytest.skip("the xprune console script is not installed next to this Python")
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="100")
    env.pop("PYTHONPATH", None)
    res = subprocess.run(
        [
            str(script),
            "prune",
            *MODEL,
            "--data",
            "digits.npz",
            "--criterion",
            "weight",
            "--ratio",
            "0.3",
            "--out",
            str(tmp_path / "s.pt"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines and "" not in lines[lines.index(next(x for x in lines if x.startswith("Plan:"))) :]  # no blank lines


# --------------------------------------------------------------------------- 2: criterion options


@pytest.fixture
def recorded(monkeypatch):
    """Every call of xprune.score (by the commands and by curve), with its arguments."""
    import xprune.pipeline
    import xprune.scores

    calls = []
    real = xprune.scores.score

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(xprune.scores, "score", spy)
    monkeypatch.setattr(xprune.pipeline, "score", spy)
    return calls


def test_criterion_options_arrive_typed_and_unknown_ones_are_refused(here, capsys, recorded):
    assert (
        main(
            [
                "prune",
                *MODEL,
                "--data",
                "digits.npz",
                "--ratio",
                "0.2",
                "--out",
                "o.pt",
                "--overwrite",
                "--composite",
                "epsilon-alpha2-beta1",
                "--option",
                "aggregate=yeom",
                "--option",
                "canonizers=false",
                "--option",
                "normalize=l1",
            ]
        )
        == 0
    )
    ((_, kwargs),) = recorded
    assert kwargs["composite"] == "epsilon-alpha2-beta1" and kwargs["aggregate"] == "yeom"
    assert kwargs["canonizers"] is False and kwargs["normalize"] == "l1"
    assert "criterion options: lrp: composite='epsilon-alpha2-beta1'" in capsys.readouterr().out
    recorded.clear()
    assert (
        main(
            [
                "prune",
                *MODEL,
                "--data",
                "digits.npz",
                "--criterion",
                "integrated-gradients",
                "--option",
                "n_steps=3",
                "--ratio",
                "0.2",
                "--out",
                "o.pt",
                "--overwrite",
            ]
        )
        == 0
    )
    assert recorded[0][1]["n_steps"] == 3  # an int, from the signature

    bad = [
        (["--option", "foo=1"], "--option foo: no criterion takes it (lrp takes composite=None, aggregate='pxp'"),
        (["--option", "aggregate=nope"], "aggregate must be 'pxp' or 'yeom'"),
        (
            ["--criterion", "integrated-gradients", "--option", "n_steps=abc"],
            "--option n_steps=abc: integrated-gradients's option 'n_steps' takes int (default 16); got 'abc'",
        ),
        (["--criterion", "taylor", "--composite", "epsilon-plus"], "--composite is an option of lrp"),
        (["--composite", "nope"], "unknown LRP composite 'nope'; known composites: epsilon-plus"),
        (["--criterion", "random", "--option", "seed=3"], "--option seed: set it with --seed"),
        (["--option", "normalize=l7"], "--option normalize=l7: choose among none, l1, l2, max"),
    ]
    for extra, message in bad:
        recorded.clear()
        assert (
            main(["prune", *MODEL, "--data", "digits.npz", "--ratio", "0.2", "--out", "o.pt", "--overwrite", *extra])
            == 2
        ), extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not recorded  # refused before any scoring

    # curve: an option goes to the criteria that take it; one that none takes is refused
    assert (
        main(
            [
                "curve",
                *MODEL,
                "--data",
                "digits.npz",
                "--criteria",
                "taylor,integrated-gradients",
                "--option",
                "objective=loss",
                "--option",
                "n_steps=2",
                "--out",
                "cv",
                "--overwrite",
            ]
        )
        == 0
    )
    by = {a[2]: k for a, k in recorded}
    assert by["taylor"]["objective"] == "loss" and "n_steps" not in by["taylor"]
    assert by["integrated-gradients"]["n_steps"] == 2
    assert json.loads(Path("cv/curves.json").read_text())["options"]["integrated-gradients"]["n_steps"] == 2
    assert (
        main(
            [
                "curve",
                *MODEL,
                "--data",
                "digits.npz",
                "--criteria",
                "taylor,weight",
                "--option",
                "n_steps=2",
                "--out",
                "cv2",
            ]
        )
        == 2
    )
    assert (
        "no chosen criterion takes it (taylor takes objective='loss'; weight takes no options"
        in capsys.readouterr().err
    )

    assert main(["criteria"]) == 0
    out = capsys.readouterr().out
    assert "options: composite=None, aggregate='pxp', start='onehot', canonizers=True" in out
    assert "options: n_steps=16" in out and "--option KEY=VALUE" in out


def test_tune_then_prune_with_the_tuned_composite(here, capsys):
    pytest.importorskip("optuna")
    assert (
        main(
            [
                "tune",
                *MODEL,
                "--data",
                "digits.npz",
                "--trials",
                "2",
                "--sampler",
                "random",
                "--score-normalize",
                "l1",
                "--val-size",
                "100",
                "--out",
                "tuned",
                "--overwrite",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "tuned/best_composite.json  the tuned LRP composite: --composite PATH" in out
    command = next(line for line in out.splitlines() if line.startswith("use it: ")).removeprefix("use it: ")
    assert command.startswith("xprune prune ") and "--composite tuned/best_composite.json" in command
    summary = json.loads(Path("tuned/summary.json").read_text())
    assert summary["normalization"]["method"] == "none" and summary["options"]["normalize"] == "l1"
    argv = shlex.split(command)
    assert argv[0] == "xprune"
    argv[argv.index("--out") + 1] = "tuned.pt"
    assert main([*argv[1:], "--overwrite"]) == 0
    out = capsys.readouterr().out
    # the tuned composite's aggregate and normalize come with it
    assert "composite='tuned/best_composite.json', aggregate=" in out and "normalize='l1'" in out
    assert xprune.Plan.load("tuned.plan.json").meta["criterion_options"]["normalize"] == "l1"


# --------------------------------------------------------------------------- 3: no accepted-and-ignored flag


def test_tune_honours_scope_precision_and_device(here, capsys, monkeypatch):
    pytest.importorskip("optuna")
    import importlib

    evaluator = importlib.import_module("xprune.tune.evaluator")  # (xprune.tune is also the function)

    scopes, precisions = [], []
    real_select, real_score = evaluator.select, evaluator.score

    def select(scores, rate, **kw):
        scopes.append(kw.get("scope"))
        return real_select(scores, rate, **kw)

    def score(*a, **kw):
        precisions.append(kw.get("precision"))
        return real_score(*a, **kw)

    monkeypatch.setattr(evaluator, "select", select)
    monkeypatch.setattr(evaluator, "score", score)
    args = ["tune", *MODEL, "--data", "digits.npz", "--trials", "1", "--sampler", "random", "--val-size", "60"]
    assert main([*args, "--scope", "local", "--precision", "bf16", "--out", "tl"]) == 0
    assert scopes and set(scopes) == {"local"} and set(precisions) == {"bf16"}
    assert json.loads(Path("tl/summary.json").read_text())["scope"] == "local"
    capsys.readouterr()
    if not torch.cuda.is_available():  # asked for and unavailable: refused, not run on CPU
        assert main([*args, "--device", "cuda", "--out", "td"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_every_command_with_data_takes_the_data_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("prune", "curve", "tune"):
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {
            "--normalize",
            "--image-size",
            "--grayscale",
            "--composite",
            "--option",
            "--device",
            "--scope",
            "--precision",
            "--overwrite",
            "--traceback",
        } <= flags, name
    demo_flags = {o for a in sub.choices["demo"]._actions for o in a.option_strings}
    assert {"--normalize", "--composite", "--option", "--overwrite", "--tolerance"} <= demo_flags


# --------------------------------------------------------------------------- 5, 6: Hugging Face, image folders


def test_image_folder_options(here, capsys):
    args = ["curve", "--model", "mynet:make_gray3", "--data", "images", "--n-per-class", "3", "--criteria", "weight"]
    assert main([*args, "--out", "c-rgb"]) == 2  # three channels into a one-channel model
    capsys.readouterr()
    assert main([*args, "--grayscale", "--image-size", "8", "--out", "c-gray"]) == 0
    assert "8-bit pixels divided by 255" in capsys.readouterr().out
    saved = json.loads(Path("c-gray/curves.json").read_text())
    assert saved["normalization"]["method"] == "none"
    assert main([*args, "--grayscale", "--image-size", "6x7", "--normalize", "mean-std", "--out", "c-gray2"]) == 0
    assert json.loads(Path("c-gray2/curves.json").read_text())["normalization"]["method"] == "mean-std"
    assert main(["prune", *MODEL, "--data", "digits.npz", "--grayscale", "--ratio", "0.3", "--out", "g.pt"]) == 2
    assert "--grayscale applies to image folders; --data digits.npz is a data file" in capsys.readouterr().err


def test_hugging_face_model_on_text(here, capsys):
    _bert(here)
    assert (
        main(
            [
                "prune",
                "--model",
                "hf:bert",
                "--data",
                "reviews.jsonl",
                "--ratio",
                "0.3",
                "--n-per-class",
                "4",
                "--out",
                "bert-pruned",
                "--overwrite",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "heads" in out and "xprune.transformers.load_pruned(path)" in out
    from xprune.transformers import hub, load_pruned

    plan = xprune.Plan.load("bert-pruned/plan.json")
    assert plan.kind == "heads" and plan.n_removed > 0
    again = load_pruned("bert-pruned")
    loaded = hub.load("bert-pruned")
    heads = [layer.attention.self.num_attention_heads for layer in again.bert.encoder.layer]
    assert sum(heads) == 8 - plan.n_removed and loaded.tokenizer is not None
    ids = torch.tensor([[2, 13, 14, 15, 16, 5, 17, 9, 3]])
    torch.testing.assert_close(again(ids).logits, loaded.model(ids).logits)
    # exported with the ONNX check, taking token ids
    pytest.importorskip("onnxruntime")
    assert (
        main(["export", "--model", "hf:bert-pruned", "--input-shape", "1,9", "--out", "bert.onnx", "--overwrite"]) == 0
    )
    assert Path("bert.onnx").stat().st_size > 1000
    # an image option, or a --normalize, does not apply to text
    assert (
        main(
            [
                "prune",
                "--model",
                "hf:bert",
                "--data",
                "reviews.jsonl",
                "--image-size",
                "8",
                "--ratio",
                "0.3",
                "--out",
                "b2",
            ]
        )
        == 2
    )
    assert "--image-size applies to image folders" in capsys.readouterr().err
    assert main(["prune", "--model", "hf:bert", "--data", "digits.npz", "--ratio", "0.3", "--out", "b2"]) == 2
    assert "is a language model: give --data a .txt" in capsys.readouterr().err


def test_hugging_face_vision_model_gets_its_processor_size_and_normalisation(here, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(config).eval()
    model.save_pretrained("vit")
    stats = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    Path("vit/preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ViTImageProcessor",
                "do_resize": True,
                "size": {"height": 8, "width": 8},
                "do_normalize": True,
                "image_mean": stats["mean"],
                "image_std": stats["std"],
            }
        )
    )
    assert (
        main(
            [
                "prune",
                "--model",
                "hf:vit",
                "--data",
                "images",
                "--n-per-class",
                "3",
                "--ratio",
                "0.3",
                "--out",
                "vit-pruned",
                "--overwrite",
            ]
        )
        == 0
    )  # the 10x12 images are resized to the processor's 8x8
    out = capsys.readouterr().out
    assert "mean [0.5, 0.4, 0.3], std [0.2, 0.25, 0.3], preprocessor_config.json" in out
    plan = xprune.Plan.load("vit-pruned/plan.json")
    assert plan.kind == "heads" and plan.meta["normalization"]["mean"] == pytest.approx(stats["mean"])
    assert Path("vit-pruned/preprocessor_config.json").is_file()
    test = xprune.data.load("folder", root="images", image_size=(8, 8), normalize=stats).test
    assert _table_accuracy(out)[0] == pytest.approx(xprune.evaluate.accuracy(model, test), abs=5e-5)


# --------------------------------------------------------------------------- 7: bad arguments, one line each


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("xprune: error: ") and "Traceback" not in err
    return err


def test_bad_arguments_are_one_line_naming_the_option(here, capsys):
    cases = [
        (
            ["export", "--model", "x.pt", "--input-shape", "abc", "--out", "m.onnx"],
            "argument --input-shape: 'abc' is not a shape",
        ),
        (["prune", *MODEL, "--data", "d", "--ratio", "1.5", "--out", "y"], "argument --ratio: ratio must be"),
        (
            ["prune", *MODEL, "--data", "d", "--n-per-class", "0", "--ratio", "0.5", "--out", "y"],
            "argument --n-per-class: must be a positive integer",
        ),
        (
            ["prune", *MODEL, "--data", "d", "--image-size", "8y", "--ratio", "0.5", "--out", "y"],
            "argument --image-size: '8y' is not an image size; give N (square) or HxW",
        ),
        (
            ["prune", *MODEL, "--data", "d", "--normalize", "std", "--ratio", "0.5", "--out", "y"],
            "argument --normalize: 'std' is neither auto, mean-std, none nor a .json file",
        ),
        (
            ["prune", *MODEL, "--data", "d", "--option", "x", "--ratio", "0.5", "--out", "y"],
            "argument --option: 'x' is not KEY=VALUE",
        ),
        (["curve", *MODEL, "--data", "d", "--seeds", "0,a"], "argument --seeds: 'a' is not an integer"),
        (["demo", "--ratio", "2"], "argument --ratio: ratio must be in [0, 1), got 2.0; or give auto"),
        (["tune", *MODEL, "--data", "d", "--timeout", "-1"], "argument --timeout: must be a positive number"),
    ]
    for argv, message in cases:
        err = _usage_error(argv, capsys)
        assert message in err and f"run 'xprune {argv[0]} --help'" in err, (argv, err)

    # a wrong --input-shape: the model's own error, in one line naming the option
    torch.save(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), "cnn.pt")
    assert main(["export", "--model", "cnn.pt", "--input-shape", "1,3,8,8", "--out", "m.onnx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xprune: error: --input-shape 1,3,8,8 does not fit the model (RuntimeError")
    assert len(err.splitlines()) == 1 and not Path("m.onnx").exists()
    assert main(["bench", "toy", "--page-only"]) == 2
    assert "--page-only runs nothing, so scenarios would be ignored" in capsys.readouterr().err

    # an unexpected failure inside the user's model: one line, exit code 1; --traceback shows where
    args = [
        "prune",
        "--model",
        "mynet:broken",
        "--data",
        "digits.npz",
        "--criterion",
        "weight",
        "--ratio",
        "0.3",
        "--out",
        "b.pt",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("xprune: error: ZeroDivisionError: float division by zero in Broken") and "--traceback" in err
    assert len(err.splitlines()) == 1
    with pytest.raises(ZeroDivisionError, match=r"Broken\.forward"):
        main([*args, "--traceback"])


def test_errors_and_exit_codes_in_a_real_process(work, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "xprune", "export", "--model", str(tmp_path / "none.pt"), "--input-shape"]
    for shape, code, message in (("abc", 2, "argument --input-shape"), ("1,1,8,8", 2, "no such file")):
        res = subprocess.run(
            [*run, shape, "--out", "m.onnx"], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
        )
        assert res.returncode == code and message in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- 8, 9: --overwrite, demo, degenerate


def test_demo_refuses_to_overwrite_then_chooses_its_rate_on_val(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "xprune-demo"
    out.mkdir()
    (out / "results.json").write_text("mine")
    args = [
        "demo",
        "--arch",
        "mlp",
        "--criteria",
        "taylor,random",
        "--seeds",
        "0",
        "--n-per-class",
        "5",
        "--tolerance",
        "0.05",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "results.json already exists; pass --overwrite" in err and (out / "results.json").read_text() == "mine"
    assert main([*args, "--overwrite"]) == 0
    stdout = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    choice = results["ratio_choice"]
    assert choice["split"] == "val" and results["normalization"]["method"] == "mean-std"
    # the rate is the largest of the val curve within the tolerance, recomputed here from that curve
    within = [
        r
        for r, a in zip(choice["val_curve"]["rates"], choice["val_curve"]["accuracies"], strict=True)
        if a >= choice["val_accuracy"] - 0.05 - 1e-12
    ]
    assert results["ratio"] == max(within) and f"Rate {100 * max(within):.0f}%" in stdout
    assert "on the val split" in stdout and "not the test split" in stdout
    pruned = torch.load(out / "pruned.pt", weights_only=False)  # as the listing says
    assert isinstance(pruned, nn.Module) and "torch.load(path, weights_only=False)" in stdout
    assert (xprune.Plan.load(out / "plan.json").n_removed > 0) == (results["ratio"] > 0)
    # the pruned model's val accuracy is the val curve's at the chosen rate, and within the tolerance
    val = xprune.data.load("digits").val
    at = choice["val_curve"]["accuracies"][choice["val_curve"]["rates"].index(results["ratio"])]
    assert xprune.evaluate.accuracy(pruned, val) == pytest.approx(at)
    assert at >= choice["val_accuracy"] - 0.05 - 1e-12


def test_a_pruned_model_at_chance_is_warned_about_in_one_line(here, capsys):
    original = warnings.showwarning
    assert (
        main(
            [
                "prune",
                *MODEL,
                "--data",
                "digits.npz",
                "--criterion",
                "weight",
                "--ratio",
                "0.9",
                "--out",
                "ruined.pt",
                "--overwrite",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert any(line.startswith("warning: the pruned model has accuracy") and "chance" in line for line in lines)
    assert all(line.startswith("warning: ") for line in lines), err  # no file:line, no source line
    assert "UserWarning" not in err and "DegenerateResult" not in err and "--min-keep" in err
    assert warnings.showwarning is original  # restored after the command


# --------------------------------------------------------------------------- 10, 11: output and progress


def test_comparison_table_says_slower_and_more():
    from rich.console import Console

    console = Console(file=io.StringIO(), width=120)
    console.print(
        report.comparison_table(
            {"params": 100, "macs": 50, "ms_1": 0.96, "ms_64": 2.0},
            {"params": 120, "macs": 50, "ms_1": 1.0, "ms_64": 1.0},
        )
    )
    text = console.file.getvalue()
    assert "1.04x slower" in text and "1.20x more" in text and "same" in text and "2.00x faster" in text
    assert "0.96x" not in text


def test_progress_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("XPRUNE_PROGRESS", raising=False)
    stream = io.StringIO()
    with Progress(interval=0, stream=stream) as bar:
        task = bar.add_task("scoring lrp", total=4, unit="batches")
        for _ in range(4):
            bar.advance(task)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"scoring lrp: 1/4 batches, \d+ s elapsed, ~\d+ s left", lines[0]), lines
    assert re.fullmatch(r"scoring lrp: 4 batches in \d+ s", lines[-1]) and len(lines) == 4
    quiet = io.StringIO()
    with Progress(stream=quiet) as bar:  # short work prints nothing
        bar.advance(bar.add_task("fast", total=3))
    assert quiet.getvalue() == ""
    assert list(track(range(3), "x", enabled=False)) == [0, 1, 2]
    monkeypatch.setenv("XPRUNE_PROGRESS", "off")
    off = io.StringIO()
    with Progress(interval=0, stream=off) as bar:
        bar.advance(bar.add_task("off", total=2))
    assert off.getvalue() == ""


def test_piped_output_has_no_blank_lines(work, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", XPRUNE_PROGRESS="plain")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "xprune",
            "curve",
            *MODEL,
            "--data",
            "digits.npz",
            "--criteria",
            "weight,taylor",
            "--out",
            str(tmp_path / "c"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=work,
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("data: ") and "" not in lines
    assert all(line.startswith("warning: ") or ":" in line for line in res.stderr.splitlines())


def test_every_progress_bar_goes_to_stderr_as_lines(monkeypatch, capsys):
    from tiny_models import ConvBN, randomize_bn
    from xprune import evaluate, schedules
    from xprune.data import Split
    from xprune.guarantee import choose_rate
    from xprune.models.train import fine_tune, train

    monkeypatch.setenv("XPRUNE_PROGRESS", "plain")
    monkeypatch.setenv("XPRUNE_PROGRESS_INTERVAL", "0")
    torch.manual_seed(0)
    model = randomize_bn(ConvBN(c=3, n=5)).eval()
    X, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate.curve(model, (X, y), (X, y), "weight", rates=[0.0, 0.3, 0.6], progress=True)
        choose_rate(model, (X[:20], y[:20]), (X[20:], y[20:]), "weight", rates=[0.0, 0.3], progress=True)
        schedules.iterative(model, (X, y), "weight", 0.4, step=0.2, progress=True)
        schedules.entwined(model, (X, y), "weight", 0.4, steps=2, progress=True)
        train(randomize_bn(ConvBN(c=3, n=5)), Split(X, y), epochs=1, batch_size=20, progress=True)
        fine_tune(randomize_bn(ConvBN(c=3, n=5)), Split(X, y), steps=2, batch_size=20, progress=True)
    out, err = capsys.readouterr()
    assert out == ""  # nothing drawn on stdout, where the results go
    for what in (
        "curve (weight): 1/3 rates",
        "calibrating (weight): 1/2 rates",
        "iterative pruning (weight)",
        "entwined (weight)",
        "train ConvBN: 1/2 steps",
        "fine-tune",
    ):
        assert what in err, (what, err)
    assert all(re.search(r"\d+ s (elapsed|in)|in \d+ s", line) for line in err.splitlines()), err
