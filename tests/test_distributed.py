"""Distributed scoring (gloo, 2 processes spawned here), devices and bf16 precision.

Run as a script, this file is the worker of the multi-process tests::

    python tests/test_distributed.py MODE RANK WORLD INIT_FILE OUT_DIR
"""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
N_SAMPLES = 37  # odd: the ranks get unequal shares, the last batch is partial
BATCH = 8
SHARDED = ("lrp", "taylor", "gradient", "activation")


def _setup():
    from tiny_models import Residual, randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(Residual(c=3, n=5).eval())
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N_SAMPLES, 3, 8, 8, generator=g)
    y = torch.randint(0, 5, (N_SAMPLES,), generator=g)
    return model, X, y


def _own_weights_taylor():
    """Taylor with its own (unmarked) compute_weights: not known to reduce its sums, so the fallback."""
    from xprune.criteria.gradient import Taylor

    class OwnWeights(Taylor):
        def compute_weights(self, model, units, data, *, target="label"):
            return super().compute_weights(model, units, data, target=target)

    return OwnWeights()


def _all_scores(model, X, y):
    """Every score the equality test compares, keyed by a label (single process or one rank)."""
    import xprune

    out = {}
    for name in SHARDED:
        out[name] = xprune.score(model, (X, y), name, batch_size=BATCH)
    batches = [(X[i : i + 5], y[i : i + 5]) for i in range(0, len(X), 5)]  # a plain iterable: split sample by sample
    out["taylor-iterable"] = xprune.score(model, batches, "taylor", batch_size=BATCH)
    out["weight"] = xprune.score(model, (X, y), "weight")  # replicated
    out["own-weights"] = xprune.score(model, (X, y), _own_weights_taylor(), "weights", batch_size=BATCH)  # fallback
    return out


def _new_scores(model, X, y):
    """The criteria split since the fallback ones were sharded: singe, integrated gradients, single weights."""
    import xprune

    d = (X, y)
    return {
        "singe": xprune.score(model, d, "singe", n_steps=3, batch_size=BATCH),
        "singe-network-loss": xprune.score(
            model, d, "singe", n_steps=2, scope="network", objective="loss", batch_size=BATCH
        ),
        "ig-sum": xprune.score(model, d, "integrated-gradients", n_steps=3, batch_size=BATCH),
        "ig-abs": xprune.score(model, d, "integrated-gradients", n_steps=3, aggregate="abs", batch_size=BATCH),
        "taylor-weights": xprune.score(model, d, "taylor", "weights", batch_size=BATCH),
        "gradient-weights": xprune.score(model, d, "gradient", "weights", batch_size=BATCH),
        "lrp-weights": xprune.score(model, d, "lrp", "weights", batch_size=BATCH),
    }


def _tiny_llama(vocab: int, heads: int, kv_heads: int, intermediate: int, positions: int):
    """A random 2-layer Llama (hidden size 32) with grouped-query attention."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return T.LlamaForCausalLM(cfg).eval()


def _llama():
    model = _tiny_llama(50, 4, 2, 40, 16)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 50, (11, 8), generator=g)
    mask = torch.ones(11, 7, dtype=torch.long)
    mask[1::3, 5:] = 0  # padded samples: the token counts of "activation" differ per sample
    # a plain iterable of batches of unequal size: split sample by sample
    data = [
        ({"input_ids": ids[i:j, :-1], "attention_mask": mask[i:j]}, ids[i:j, -1]) for i, j in ((0, 4), (4, 9), (9, 11))
    ]
    return model, data


def _transformer_scores(model, data):
    import xprune
    import xprune.transformers  # registers the unit kinds heads and neurons

    return {
        f"{name}-{kind}": xprune.score(model, data, name, kind)
        for kind in ("heads", "neurons")
        for name in ("lrp", "taylor", "gradient", "activation")
    }


def _worker(mode: str, rank: int, world: int, init_file: str, out_dir: str) -> int:
    import warnings

    import torch.distributed as dist

    torch.set_num_threads(1)
    sys.path.insert(0, str(HERE))
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=20)
    )
    import xprune
    from xprune import distributed, evaluate

    model, X, y = _setup()
    try:
        if mode == "kill":
            if rank == 1:
                os._exit(3)  # dies before the collectives: rank 0 must fail, not hang
            xprune.score(model, (X, y), "taylor", batch_size=BATCH)
            return 0
        if mode in ("new", "transformers"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got = _new_scores(model, X, y) if mode == "new" else _transformer_scores(*_llama())
            if distributed.is_main():
                torch.save(
                    {"scores": {k: dict(v) for k, v in got.items()}, "meta": {k: v.meta for k, v in got.items()}},
                    Path(out_dir) / "result.pt",
                )
            return 0
        if mode in ("tune", "tune-kill"):
            return _tune_worker(mode, rank, out_dir)
        if mode == "nan":  # NaN inputs in rank 1's share only: both ranks must stop with an error
            X = X.clone()
            X[1] = float("nan")
            xprune.score(model, (X, y), "taylor", batch_size=BATCH)
            return 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = _all_scores(model, X, y)
        mine = sum(len(b[1]) for b in distributed.shard((X, y), BATCH))
        (seen,) = distributed.sum_counts(mine)
        acc = evaluate.accuracy(model, (X, y), batch_size=BATCH)
        if distributed.is_main():
            torch.save(
                {
                    "scores": {k: dict(v) for k, v in scores.items()},
                    "meta": {k: v.meta for k, v in scores.items()},
                    "mine": mine,
                    "seen": seen,
                    "accuracy": acc,
                },
                Path(out_dir) / "result.pt",
            )
        return 0
    except xprune.XpruneError as e:
        print(f"rank {rank}: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _tune_task():
    """A tiny tuning task: a ConvBN labelling its own data, reference and validation split apart."""
    from tiny_models import ConvBN

    torch.manual_seed(0)
    model = ConvBN().eval()
    X = torch.randn(67, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(X).argmax(1)
    return model, (X[:15], y[:15]), (X[15:], y[15:])


def _tune(out):
    import xprune
    from xprune.tune import BoundPruner

    model, ref, val = _tune_task()
    # the bound pruner with no start-up and no margin stops some trials early: every rank must follow
    return xprune.tune(
        model,
        ref,
        val,
        trials=5,
        sampler="random",
        seed=0,
        out=out,
        rates=[0.0, 0.3, 0.5, 0.7],
        progress=False,
        pruner=BoundPruner(margin=0.0, n_startup_trials=1),
    )


def _tune_worker(mode: str, rank: int, out_dir: str) -> int:
    import json

    from xprune.tune import _Evaluator

    if mode == "tune-kill" and rank == 1:
        real, calls = _Evaluator.score, []

        def dies_at_the_second_trial(self, *a, **k):
            calls.append(1)
            if len(calls) == 2:
                os._exit(3)
            return real(self, *a, **k)

        _Evaluator.score = dies_at_the_second_trial  # type: ignore[method-assign]  # the crash under test
    res = _tune(Path(out_dir) / "tune")
    trials = None if res.study is None else [(t.number, t.state.name, t.params, t.value) for t in res.study.trials]
    print(
        "RESULT "
        + json.dumps(
            {
                "rank": rank,
                "best_value": res.best_value,
                "best_params": res.best_params,
                "counts": res.counts,
                "trials": trials,
                "study": res.study is not None,
            }
        )
    )
    return 0


def _spawn(mode: str, tmp_path: Path, world: int = 2, timeout: float = 90):
    init = tmp_path / "init"
    out = tmp_path / "out"
    out.mkdir()
    env = dict(
        os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, mode, str(r), str(world), str(init), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    results, start = [], time.monotonic()
    try:
        for p in procs:
            left = max(1.0, timeout - (time.monotonic() - start))
            o, e = p.communicate(timeout=left)
            results.append((p.returncode, o, e))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results, out, time.monotonic() - start


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-6) -> bool:
    return a.shape == b.shape and float((a - b).abs().max()) <= rel * max(float(b.abs().max()), 1e-300)


def test_two_gloo_processes_equal_one(tmp_path):
    import xprune

    model, X, y = _setup()
    reference = _all_scores(model, X, y)
    base_acc = xprune.evaluate.accuracy(model, (X, y), batch_size=BATCH)
    results, out, _ = _spawn("score", tmp_path)
    for rc, _o, e in results:
        assert rc == 0, e[-3000:]
    assert [p.name for p in out.iterdir()] == ["result.pt"]  # only rank 0 wrote
    got = torch.load(out / "result.pt", weights_only=False)
    assert got["seen"] == N_SAMPLES and got["mine"] == (N_SAMPLES + 1) // 2  # every sample once, rank 0: 19
    assert got["accuracy"] == base_acc
    for label, ref in reference.items():
        assert set(got["scores"][label]) == set(ref)
        for group in ref:
            assert _close(got["scores"][label][group], ref[group]), (label, group)
    for name in (*SHARDED, "taylor-iterable"):
        assert got["meta"][name]["distributed"] == "shard" and got["meta"][name]["world_size"] == 2
    assert got["meta"]["weight"]["distributed"] == "replicate"
    assert got["meta"]["own-weights"]["distributed"] == "fallback"


def _compare_spawned(mode: str, reference: dict, tmp_path: Path) -> None:
    results, out, _ = _spawn(mode, tmp_path)
    for rc, _o, e in results:
        assert rc == 0, e[-3000:]
    assert [p.name for p in out.iterdir()] == ["result.pt"]  # only rank 0 wrote
    got = torch.load(out / "result.pt", weights_only=False)
    for label, ref in reference.items():
        assert got["meta"][label]["distributed"] == "shard" and got["meta"][label]["world_size"] == 2, label
        assert set(got["scores"][label]) == set(ref)
        for group in ref:
            assert _close(got["scores"][label][group], ref[group]), (label, group)


def test_singe_integrated_gradients_and_weights_shard_exactly(tmp_path):
    model, X, y = _setup()
    _compare_spawned("new", _new_scores(model, X, y), tmp_path)


def test_heads_and_neurons_shard_exactly(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("xprune.transformers")
    _compare_spawned("transformers", _transformer_scores(*_llama()), tmp_path)


def test_failure_in_one_ranks_share_stops_every_rank(tmp_path):
    results, _, elapsed = _spawn("nan", tmp_path, timeout=60)
    (rc0, _, err0), (rc1, _, err1) = results
    assert rc1 == 2 and "NaN" in err1, err1[-3000:]  # the rank holding the NaN sample (position 1)
    assert rc0 == 2 and "rank 1 of 2 failed while scoring" in err0, err0[-3000:]  # told, not left waiting
    assert elapsed < 60


def _results(outputs) -> list[dict]:
    import json

    return [json.loads(line[7:]) for o in outputs for line in o.splitlines() if line.startswith("RESULT ")]


def test_tune_across_two_processes_equals_one(tmp_path):
    pytest.importorskip("optuna")
    single = _tune(tmp_path / "single")
    results, out, _ = _spawn("tune", tmp_path)
    for rc, _o, e in results:
        assert rc == 0, e[-3000:]
    got = {r["rank"]: r for r in _results(o for _, o, _ in results)}
    assert set(got) == {0, 1} and got[0]["study"] and not got[1]["study"]
    for r in got.values():  # the same objective on every rank, and as in one process
        assert r["best_params"] == single.best_params
        assert abs(r["best_value"] - single.best_value) <= 1e-9
        assert r["counts"] == single.counts
    ref = [(t.number, t.state.name, t.params, t.value) for t in single.study.trials]
    assert [tuple(t[:3]) for t in got[0]["trials"]] == [tuple(t[:3]) for t in ref]
    assert all(
        (a[3] is None) == (b[3] is None) and (a[3] is None or abs(a[3] - b[3]) <= 1e-9)
        for a, b in zip(got[0]["trials"], ref, strict=True)
    )
    assert single.counts.get("pruned", 0) >= 1  # the early stopping was exercised
    assert sorted(p.name for p in out.iterdir()) == ["tune"]  # one study, written by rank 0 only
    assert (out / "tune" / "study.db").exists() and (out / "tune" / "best_composite.json").exists()


def test_killed_rank_during_tuning_fails_clearly(tmp_path):
    optuna = pytest.importorskip("optuna")
    results, out, elapsed = _spawn("tune-kill", tmp_path, timeout=90)
    (rc0, _, err0), (rc1, _, _) = results
    assert rc1 == 3
    assert rc0 == 2 and "did not take part" in err0 and "rank 0 of 2" in err0, err0[-3000:]
    assert elapsed < 90
    study = optuna.load_study(study_name="pxp-channels", storage=f"sqlite:///{out / 'tune' / 'study.db'}")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["interrupted"]  # run again when the study is resumed


def test_killed_rank_fails_clearly(tmp_path):
    results, _out, elapsed = _spawn("kill", tmp_path, timeout=90)
    (rc0, _, err0), (rc1, _, _) = results
    assert rc1 == 3
    assert rc0 == 2, err0[-3000:]
    assert "did not take part" in err0 and "rank 0 of 2" in err0
    assert elapsed < 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_cli_prunes_and_only_rank0_writes(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, X=g.standard_normal((120, 3, 8, 8)).astype("float32"), y=np.arange(120) % 5)
    out = tmp_path / "run"
    out.mkdir()
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        XPRUNE_DIST_TIMEOUT="60",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "xprune",
        "prune",
        "--model",
        "tiny_models:ConvBN",
        "--data",
        str(data),
        "--n-per-class",
        "4",
        "--criterion",
        "taylor",
        "--ratio",
        "0.3",
        "--device",
        "cpu",
        "--out",
        str(out / "pruned.pt"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["pruned.plan.json", "pruned.pt"]
    assert res.stdout.count("wrote ") == 1  # rank 1 printed nothing


def test_torchrun_cli_tune_only_rank0_writes(tmp_path):
    pytest.importorskip("optuna")
    import numpy as np

    g = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, X=g.standard_normal((100, 3, 8, 8)).astype("float32"), y=np.arange(100) % 5)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        XPRUNE_DIST_TIMEOUT="60",
        PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "xprune",
        "tune",
        "--model",
        "tiny_models:ConvBN",
        "--data",
        str(data),
        "--n-per-class",
        "3",
        "--trials",
        "2",
        "--sampler",
        "random",
        "--out",
        "run",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best_composite.json",
        "history.png",
        "importances.png",
        "study.db",
        "summary.json",
    ]
    assert res.stdout.count("TuneResult:") == 1 and res.stdout.count("[tune] trial") == 2  # rank 1 printed nothing


# ----------------------------------------------------------------------------- single process


def test_outside_a_group_nothing_changes():
    import xprune
    from xprune import distributed

    model, X, y = _setup()
    assert not distributed.is_active() and distributed.is_main() and distributed.world_size() == 1
    s = xprune.score(model, (X, y), "taylor", batch_size=BATCH)
    assert "distributed" not in s.meta
    t, c = distributed.all_reduce_sums({"a": torch.ones(2)}, {"a": 3})
    assert torch.equal(t["a"], torch.ones(2)) and c == {"a": 3}
    assert sum(len(b[1]) for b in distributed.shard((X, y), 5)) == N_SAMPLES


def test_device_cpu_and_model_stays_put():
    import xprune
    from xprune import XpruneError

    model, X, y = _setup()
    a = xprune.score(model, (X, y), "lrp", batch_size=BATCH)
    b = xprune.score(model, (X, y), "lrp", batch_size=BATCH, device="cpu")
    for k in a:
        assert torch.equal(a[k], b[k])
    assert all(p.device.type == "cpu" for p in model.parameters())
    c = xprune.evaluate.curve(model, (X, y), (X, y), "taylor", rates=(0.0, 0.5), device="cpu")
    assert len(c.accuracies) == 2
    if not torch.cuda.is_available():
        with pytest.raises(XpruneError, match="CUDA is not available"):
            xprune.score(model, (X, y), "taylor", device="cuda")


def test_bf16_where_the_rule_allows():
    import xprune

    model, X, y = _setup()
    fp32 = xprune.score(model, (X, y), "taylor", batch_size=BATCH)
    bf16 = xprune.score(model, (X, y), "taylor", batch_size=BATCH, precision="bf16")
    assert bf16.meta["precision"] == "bf16"
    a = torch.cat([fp32[k] for k in fp32])
    b = torch.cat([bf16[k] for k in bf16])
    assert not torch.equal(a, b) and torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
    with pytest.warns(UserWarning, match="keeps fp32"):
        lrp = xprune.score(model, (X, y), "lrp", batch_size=BATCH, precision="bf16")
    assert lrp.meta["precision"] == "fp32"
    ref = xprune.score(model, (X, y), "lrp", batch_size=BATCH)
    for k in ref:
        assert torch.equal(ref[k], lrp[k])


def test_declared_but_unreduced_sums_are_refused():
    from xprune import XpruneError, distributed
    from xprune.criteria.activation import Activation

    class Forgetful(Activation):
        def compute(self, model, units, data, *, target="label"):
            return {}

    with pytest.raises(XpruneError, match="never called"), distributed.sharded_session(Forgetful()):
        pass


# ----------------------------------------------------------------------------- large language models


def _perplexity(model, ids: torch.Tensor) -> float:
    """exp(mean next-token cross-entropy) over ``ids`` ``[N, T]``."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1]
    return float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)).exp())


def test_tiny_llama_gqa_prune_quarter_heads_and_neurons(capsys):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pytest.importorskip("transformers")
    pytest.importorskip("xprune.transformers")  # registers the unit kinds heads and neurons
    import xprune

    model = _tiny_llama(64, 8, 4, 48, 32)
    g = torch.Generator().manual_seed(0)
    calib = torch.randint(1, 64, (8, 12), generator=g)  # calibration: explain the true next token
    data = [({"input_ids": calib[i : i + 4, :-1]}, calib[i : i + 4, -1]) for i in (0, 4)]
    held_out = torch.randint(1, 64, (4, 12), generator=g)
    pruned = {}
    for mode in ("remove", "mask"):
        m = model
        for unit in ("heads", "neurons"):
            s = xprune.score(m, data, "lrp", unit)  # AttnLRP on the unit kinds of xprune.transformers
            if unit == "heads":
                assert [v.numel() for v in s.values()] == [4, 4]  # KV groups (GQA): 2 query heads each
            plan = xprune.select(s, 0.25)
            assert plan.n_removed == (2 if unit == "heads" else 24)
            m = xprune.apply(m, plan, mode)
        pruned[mode] = m
    removed, masked = pruned["remove"], pruned["mask"]
    assert sum(p.numel() for p in removed.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            removed(input_ids=held_out).logits, masked(input_ids=held_out).logits, atol=1e-5, rtol=0
        )
        gen = removed.generate(held_out[:1, :4], max_new_tokens=5, do_sample=False)
    assert gen.shape == (1, 9)
    before, after = _perplexity(model, held_out), _perplexity(removed, held_out)
    assert torch.isfinite(torch.tensor([before, after])).all()
    with capsys.disabled():
        print(
            f"\n[tiny llama GQA, random init] perplexity {before:.2f} -> {after:.2f} "
            f"after removing 25% of heads and 25% of neurons"
        )


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
