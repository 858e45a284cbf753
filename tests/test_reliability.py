"""Reliability: resumable iterative schedules and curves, killed runs, refusing to overwrite,
bad input answered clearly, determinism, and a fuzz test of the command line."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from tiny_models import MLP, ConvBN, randomize_bn
from xprune import Plan, Scores, XpruneError, evaluate, pipeline, schedules
from xprune.cli import main

TESTS = Path(__file__).parent


def make(cls=ConvBN, seed=0, n=24):
    torch.manual_seed(seed)
    model = randomize_bn(cls(), seed).eval()
    if cls is MLP:
        return model, torch.randn(n, 6), torch.arange(n) % 4
    return model, torch.randn(n, 3, 8, 8), torch.arange(n) % 5


def same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Crash(Exception):
    pass


# --------------------------------------------------------------------------- resumable iterative schedule


def test_iterative_resumes_identically(tmp_path):
    m, X, y = make()
    kw = dict(criterion="random", ratio=0.5, step=0.2, seed=5)
    full = schedules.iterative(m, (X, y), checkpoint_dir=tmp_path / "a", **kw)
    calls = []

    def crash_on_third(model):
        calls.append(1)
        if len(calls) == 3:
            raise Crash

    with pytest.raises(Crash):
        schedules.iterative(m, (X, y), fine_tune=crash_on_third, checkpoint_dir=tmp_path / "b", **kw)
    assert json.loads((tmp_path / "b" / "iterative.json").read_text())["step"] == 2
    with pytest.raises(XpruneError, match="resume=True"):
        schedules.iterative(m, (X, y), checkpoint_dir=tmp_path / "b", **kw)
    with pytest.raises(XpruneError, match="other settings"):
        schedules.iterative(m, (X, y), checkpoint_dir=tmp_path / "b", resume=True, **dict(kw, ratio=0.4))
    resumed = schedules.iterative(m, (X, y), checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert [p.remove for p in resumed.plans] == [p.remove for p in full.plans]
    assert resumed.history == full.history and same_state(full.model, resumed.model)
    assert [h[1].remove for h in xprune.history(resumed.model)] == [p.remove for p in full.plans]
    # the same seed without checkpoints gives the same run; a finished run resumes to itself
    assert same_state(schedules.iterative(m, (X, y), **kw).model, full.model)
    again = schedules.iterative(m, (X, y), checkpoint_dir=tmp_path / "b", resume=True, **kw)
    assert same_state(again.model, full.model)
    files = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert files == ["iterative.json", f"model-step{len(full.plans)}.pt"]
    with pytest.raises(XpruneError, match="checkpoint_dir"):
        schedules.iterative(m, (X, y), resume=True, **kw)


def test_damaged_checkpoints_are_refused(tmp_path):
    m, X, y = make()
    kw = dict(criterion="weight", ratio=0.3, step=0.2, checkpoint_dir=tmp_path)
    schedules.iterative(m, (X, y), **kw)
    state = tmp_path / "iterative.json"
    model_file = tmp_path / json.loads(state.read_text())["model"]
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(XpruneError, match="truncated or corrupt"):
        schedules.iterative(m, (X, y), resume=True, **kw)
    state.write_text('{"step": 1, "settings": ')
    with pytest.raises(XpruneError, match="cannot be read"):
        schedules.iterative(m, (X, y), resume=True, **kw)


KILL_SCRIPT = textwrap.dedent("""
    import sys, time, torch
    sys.path.insert(0, {tests!r})
    from tiny_models import ConvBN, randomize_bn
    from xprune import schedules
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = randomize_bn(ConvBN(), 0).eval()
    X, y = torch.randn(24, 3, 8, 8), torch.arange(24) % 5
    slow = float(sys.argv[2])
    def fine_tune(model):
        time.sleep(slow)  # a long fine-tuning step: the run is killed in the middle of one
    res = schedules.iterative(m, (X, y), "taylor", 0.6, step=0.15, fine_tune=fine_tune, seed=1,
                              checkpoint_dir=sys.argv[1], resume=sys.argv[3] == "resume")
    torch.save(res.model.state_dict(), sys.argv[1] + "/final.pt")
""")


def test_killed_schedule_resumes_to_the_same_model(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS)))
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run), "0.4", "fresh"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 60
    while not (run / "iterative.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and not (run / "final.pt").exists()
    # nothing half-written looks complete: the state parses and names a model that loads
    state = json.loads((run / "iterative.json").read_text())
    assert state["step"] >= 1 and (run / state["model"]).exists()
    torch.load(run / state["model"], weights_only=False)
    visible = [p.name for p in run.iterdir() if not p.name.startswith(".")]
    assert all(n == "iterative.json" or n.startswith("model-step") for n in visible)
    for n in visible:  # every visible file is whole
        if n.endswith(".pt"):
            torch.load(run / n, weights_only=False)
    for name, args in (("killed", ["0", "resume"]), ("whole", ["0", "fresh"])):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    a = torch.load(tmp_path / "killed" / "final.pt")
    b = torch.load(tmp_path / "whole" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (
        json.loads((tmp_path / "killed" / "iterative.json").read_text())["plans"]
        == json.loads((tmp_path / "whole" / "iterative.json").read_text())["plans"]
    )


# --------------------------------------------------------------------------- resumable curve


def test_curve_resumes_and_skips_done_rates(tmp_path, monkeypatch):
    m, X, y = make()
    rates = [0.0, 0.2, 0.4, 0.6]
    full = evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates)
    ckpt = tmp_path / "c.json"
    real = evaluate.accuracy
    calls, crash_at = [], [3]

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == crash_at[0]:
            raise Crash
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "accuracy", flaky)
    monkeypatch.setattr(pipeline, "accuracy", flaky)  # curve() measures through xprune.pipeline
    with pytest.raises(Crash):
        evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt)
    assert len(json.loads(ckpt.read_text())["done"]) == 2
    with pytest.raises(XpruneError, match="resume=True"):
        evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt)
    with pytest.raises(XpruneError, match="other settings"):
        evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt, resume=True, scope="local")
    calls.clear()
    crash_at[0] = None
    resumed = evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt, resume=True)
    assert len(calls) == 2  # only the two missing rates were measured
    assert resumed.accuracies == full.accuracies and resumed.removed == full.removed and resumed.meta == full.meta
    calls.clear()
    again = evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt, resume=True)
    assert not calls and again.to_dict() == full.to_dict()  # nothing recomputed
    ckpt.write_text("{ not json")
    with pytest.raises(XpruneError, match="cannot be read"):
        evaluate.curve(m, (X, y), (X, y), "taylor", rates=rates, checkpoint=ckpt, resume=True)


# --------------------------------------------------------------------------- CLI: outputs and --resume


@pytest.fixture
def cli_files(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ConvBN(c=1, n=3)).eval()
    torch.save(model, tmp_path / "model.pt")
    X = np.random.RandomState(0).rand(60, 1, 8, 8).astype("float32")
    np.savez(tmp_path / "data.npz", X=X, y=np.repeat(np.arange(3), 20))
    return tmp_path


def test_cli_refuses_to_overwrite(cli_files, capsys):
    d = cli_files
    base = ["--model", str(d / "model.pt"), "--data", str(d / "data.npz"), "--n-per-class", "3"]
    out = d / "small.pt"
    out.write_bytes(b"the user's file")
    assert main(["prune", *base, "--ratio", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "small.pt already exists" in err and "--overwrite" in err and out.read_bytes() == b"the user's file"
    assert main(["prune", *base, "--ratio", "0.5", "--out", str(d)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["prune", *base, "--ratio", "0.5", "--out", str(out), "--overwrite", "--criterion", "weight"]) == 0
    assert isinstance(torch.load(out, weights_only=False), nn.Module)
    assert main(["prune", *base, "--ratio", "0.3", "--out", str(d / "other.pt"), "--criterion", "weight"]) == 0
    (d / "other.pt").unlink()  # the plan beside it still exists: refused as well
    assert main(["prune", *base, "--ratio", "0.3", "--out", str(d / "other.pt")]) == 2
    assert "other.plan.json already exists" in capsys.readouterr().err

    onnx = d / "m.onnx"
    onnx.write_text("keep")
    assert main(["export", "--model", str(d / "model.pt"), "--input-shape", "1,1,8,8", "--out", str(onnx)]) == 2
    assert "already exists" in capsys.readouterr().err and onnx.read_text() == "keep"

    curves = d / "curves"
    curves.mkdir()
    (curves / "curves.json").write_text("{}")
    cargs = ["curve", *base, "--criteria", "weight", "--out", str(curves)]
    assert main(cargs) == 2
    assert "curves.json already exists" in capsys.readouterr().err
    assert (curves / "curves.json").read_text() == "{}"
    tune_out = d / "tuned"
    tune_out.mkdir()
    (tune_out / "summary.json").write_text("{}")
    assert main(["tune", *base, "--out", str(tune_out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_cli_curve_resume_matches_uninterrupted(cli_files, capsys, monkeypatch):
    d = cli_files
    base = [
        "curve",
        "--model",
        str(d / "model.pt"),
        "--data",
        str(d / "data.npz"),
        "--n-per-class",
        "3",
        "--criteria",
        "weight,taylor",
    ]
    assert main([*base, "--out", str(d / "full")]) == 0
    real = evaluate.accuracy
    calls = []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 25:  # in the middle of the second curve
            raise Crash
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "accuracy", flaky)
    monkeypatch.setattr(pipeline, "accuracy", flaky)  # curve() measures through xprune.pipeline
    capsys.readouterr()
    assert main([*base, "--out", str(d / "cut")]) == 1  # an unexpected failure: one line, no traceback
    err = capsys.readouterr().err
    assert "xprune: error: Crash" in err and "--traceback" in err and "Traceback (most recent" not in err
    monkeypatch.setattr(evaluate, "accuracy", real)
    assert not (d / "cut" / "curves.json").exists()
    assert main([*base, "--out", str(d / "cut")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*base, "--out", str(d / "cut"), "--resume"]) == 0
    a = json.loads((d / "full" / "curves.json").read_text())
    b = json.loads((d / "cut" / "curves.json").read_text())
    assert a == b
    assert main([*base, "--out", str(d / "cut"), "--overwrite"]) == 0
    assert json.loads((d / "cut" / "curves.json").read_text()) == a


# --------------------------------------------------------------------------- bad input


class Custom(nn.Module):
    """A layer using its own parameter in a matrix product: Torch-Pruning cannot follow it."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6))

    def forward(self, x):
        return x @ self.w.t()


class CustomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0 = nn.Linear(6, 6)
        self.c = Custom()
        self.fc1 = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc1(torch.relu(self.c(torch.relu(self.fc0(x)))))))


def bad_inputs(tmp_path):
    """(name, callable) for every bad input of the issue; each must raise an XpruneError (or warn)."""
    m, X, y = make()
    s = xprune.score(m, (X, y), "weight")
    nan_scores = s._replace({k: v.clone() for k, v in s.items()})
    nan_scores["conv1"][0] = float("nan")
    s.save(tmp_path / "s.safetensors")
    s.save(tmp_path / "s.pt")
    for suffix in ("safetensors", "pt"):
        data = (tmp_path / f"s.{suffix}").read_bytes()
        (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
    pruned = xprune.apply(m, xprune.select(s, 0.5))
    xprune.save(pruned, tmp_path / "m.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m-cut.safetensors").write_bytes(data[:100])
    Xn = X.clone()
    Xn[0, 0, 0, 0] = float("inf")
    broken = randomize_bn(ConvBN(), 0).eval()
    with torch.no_grad():
        broken.conv1.weight[0, 0, 0, 0] = float("nan")
    plan = xprune.select(s, 0.5)
    plan.save(tmp_path / "plan.json")
    all_but_one = Plan(
        plan.kind,
        {k: list(range(v)) for k, v in plan.sizes.items()},
        plan.sizes,
        plan.members,
        plan.roots,
        plan.example,
    )
    mlp = make(MLP)[0]
    ref_missing = (X[y < 3], y[y < 3])
    return [
        ("ratio 1.0 (nothing left)", lambda: xprune.select(s, 1.0)),
        ("ratio 1.0 in a schedule", lambda: schedules.iterative(m, (X, y), "weight", 1.0)),
        ("plan emptying a layer", lambda: xprune.apply(m, all_but_one)),
        ("inputs of the wrong shape", lambda: xprune.score(m, (X[:, :, :4], y), "taylor")),
        ("inputs of the wrong dtype (int64)", lambda: xprune.score(m, (X.long(), y), "taylor")),
        ("inputs of the wrong dtype (float64)", lambda: xprune.score(m, (X.double(), y), "taylor")),
        (
            "inputs on an unavailable device",
            lambda: (
                xprune.score(m, (X, y), "taylor", device="cuda:7")
                if not torch.cuda.is_available()
                else (_ for _ in ()).throw(XpruneError("skip"))
            ),
        ),
        ("labels out of range", lambda: xprune.score(m, (X, y + 3), "taylor")),
        ("negative labels", lambda: xprune.score(m, (X, y - 1), "taylor")),
        (
            "domain restriction naming classes missing from the reference",
            lambda: evaluate.curve(m, ref_missing, (X, y), "taylor", rates=[0.0, 0.5], classes=[1, 4]),
        ),
        ("Inf in the inputs", lambda: xprune.score(m, (Xn, y), "taylor")),
        ("NaN in activations (NaN weight)", lambda: xprune.score(broken, (X, y), "taylor")),
        ("NaN in scores handed to select", lambda: xprune.select(nan_scores, 0.5)),
        (
            "unsupported layer type",
            lambda: xprune.score(CustomNet(), (torch.randn(8, 6), torch.arange(8) % 4), "taylor"),
        ),
        ("plan applied to another architecture", lambda: xprune.apply(mlp, Plan.load(tmp_path / "plan.json"))),
        ("saved model loaded on another architecture", lambda: xprune.load(tmp_path / "m.safetensors", mlp)),
        ("truncated saved model", lambda: xprune.load(tmp_path / "m-cut.safetensors", m)),
        ("truncated scores file (.safetensors)", lambda: Scores.load(tmp_path / "cut.safetensors")),
        ("truncated scores file (.pt)", lambda: Scores.load(tmp_path / "cut.pt")),
        ("a plan file that is not a plan", lambda: Plan.load(tmp_path / "s.pt")),
    ]


def test_bad_inputs_give_clear_errors(tmp_path):
    for name, call in bad_inputs(tmp_path):
        with pytest.raises(XpruneError) as info:
            call()
        message = str(info.value)
        assert len(message) > 30, (name, message)
    m, X, y = make()
    with pytest.warns(UserWarning, match=r"cover 3 of the model's 5 classes \(none of class 3, 4\)"):
        xprune.score(m, (X[y < 3], y[y < 3]), "taylor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the domain restriction means the other classes are meant to be missing
        evaluate.curve(m, (X[y < 3], y[y < 3]), (X, y), "taylor", rates=[0.0, 0.5], classes=[0, 2])


def test_unsupported_layers_are_named_and_can_be_excluded():
    net = CustomNet().eval()
    X, y = torch.randn(8, 6), torch.arange(8) % 4
    with pytest.raises(XpruneError, match=r"c \(Custom, parameter c.w\).*ignore=\['c'\]"):
        xprune.score(net, (X, y), "taylor")
    scores = xprune.score(net, (X, y), "taylor", ignore=["c"])
    assert list(scores) == ["fc1"]
    small = xprune.apply(net, xprune.select(scores, 0.5))
    with torch.no_grad():
        assert small(X).shape == (8, 4)


def test_user_files_untouched_by_refused_commands(cli_files):
    model = cli_files / "model.pt"
    before = model.read_bytes()
    main(["prune", "--model", str(model), "--data", str(cli_files / "data.npz"), "--ratio", "0.5", "--out", str(model)])
    assert model.read_bytes() == before


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("criterion", ["weight", "taylor", "lrp", "random", "singe"])
def test_same_seed_same_scores_plans_models(criterion):
    runs = []
    for _ in range(2):
        m, X, y = make(seed=3)
        options = {"seed": 7} if criterion == "random" else {}
        torch.manual_seed(11)
        scores = xprune.score(m, (X, y), criterion, **options)
        plan = xprune.select(scores, 0.4)
        runs.append((scores, plan, xprune.apply(m, plan)))
    (s1, p1, m1), (s2, p2, m2) = runs
    assert list(s1) == list(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert p1 == p2 and same_state(m1, m2)


def test_iterative_is_deterministic_with_a_seed():
    m, X, y = make()
    a = schedules.iterative(m, (X, y), "random", 0.5, step=0.25, seed=2)
    b = schedules.iterative(m, (X, y), "random", 0.5, step=0.25, seed=2)
    assert [p.remove for p in a.plans] == [p.remove for p in b.plans] and same_state(a.model, b.model)


# --------------------------------------------------------------------------- CLI fuzz


def test_cli_fuzz_never_ends_in_a_traceback(cli_files, capsys, monkeypatch):
    pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings, strategies as st

    from xprune.cli import build_parser

    d = cli_files
    monkeypatch.chdir(d)  # default and junk --out paths land in tmp_path
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    # the cheap subcommands only (demo and bench train models and write into the working tree)
    commands = {name: p for name, p in sub.choices.items() if name in ("prune", "curve", "export", "tune", "criteria")}
    options = {
        name: [(o, a.nargs != 0) for a in p._actions for o in a.option_strings if o not in ("-h", "--help")]
        for name, p in commands.items()
    }
    junk = st.sampled_from(
        [
            "",
            "0",
            "-1",
            "0.5",
            "1.5",
            "nan",
            "inf",
            "abc",
            "1,1,8,8",
            "1,1",
            "0,0",
            "3,x",
            "lrp",
            "weight",
            "taylor,random",
            "local",
            "cuda:9",
            "meta",
            "fp32",
            "bf16",
            "remove",
            "mask",
            "weights",
            "channels",
            "builtin:nope",
            "nope.pt",
            "a:b",
            str(d / "model.pt"),
            str(d / "data.npz"),
            str(d),
            str(d / "out.pt"),
            str(d / "curves"),
            "--",
            "\x00",
            "\u00e9",
        ]
    )
    valid = {
        "prune": ["--ratio", "0.5", "--out", "p.pt"],
        "curve": ["--criteria", "weight", "--out", "c"],
        "export": ["--input-shape", "1,1,8,8", "--out", "m.onnx"],
        "tune": ["--out", "t"],
        "criteria": [],
    }

    @st.composite
    def argv(draw):
        cmd = draw(st.sampled_from([*sorted(commands), "nope"]))
        args = [cmd]
        if cmd in commands and cmd != "criteria" and draw(st.booleans()):  # well-formed, then spoiled
            args += ["--model", str(d / "model.pt")]
            if cmd != "export":
                args += ["--data", str(d / "data.npz"), "--n-per-class", "2"]
            args += valid[cmd]
        for _ in range(draw(st.integers(0, 3))):
            if cmd in options and options[cmd] and draw(st.integers(0, 3)):
                opt, takes_value = draw(st.sampled_from(options[cmd]))
                args += [opt, draw(junk)] if takes_value else [opt]
            else:
                args.append(draw(junk))
        return args

    # keep each example cheap: the slow parts (tuning studies, ONNX checks) are not what is fuzzed
    tune_mod = sys.modules["xprune.tune"]
    original = tune_mod.tune

    def no_tune(*a, **k):
        raise XpruneError("tuning skipped in the fuzz test")

    tune_mod.tune = no_tune
    outcomes, timings = [], []

    @settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(argv())
    def run(args):
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rc = main(args)
        except SystemExit as e:  # argparse: usage error or --help
            outcomes.append(("exit", e.code))
            return
        finally:
            timings.append((time.perf_counter() - t0, args))
        assert isinstance(rc, int), (args, rc)
        outcomes.append(("rc", rc))
        err = capsys.readouterr().err
        assert "Traceback" not in err, (args, err)

    try:
        run()
    finally:
        tune_mod.tune = original
    assert {kind for kind, _ in outcomes} == {"exit", "rc"}
