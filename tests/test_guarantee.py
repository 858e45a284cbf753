"""Pruning with a guarantee: the binomial math, the procedures, their edge cases and a validity simulation."""

import numpy as np
import pytest
import torch

import xprune
from xprune import guarantee as g
from xprune.cli import main

RATES = [round(0.025 * i, 3) for i in range(21)]  # 0 .. 0.5, fixed in advance


# --------------------------------------------------------------------------- binomial math against scipy


def test_binomial_cdf_and_p_value_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    cases = [
        (0, 10, 0.1),
        (3, 500, 0.01),
        (5, 500, 0.01),
        (100, 60000, 0.001),
        (9, 10, 0.5),
        (40, 1000, 0.05),
        (250, 300, 0.9),
        (0, 1, 0.3),
        (7, 7, 0.2),
        (-1, 5, 0.5),
    ]
    for k, n, p in cases:
        assert g.binomial_cdf(k, n, p) == pytest.approx(stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-300)
    assert g.binomial_cdf(3, 10, 0.0) == 1.0 and g.binomial_cdf(3, 10, 1.0) == 0.0
    # the LTT p-value of H0: R > alpha is the binomial c.d.f. at alpha
    assert g.binomial_p_value(4, 300, 0.03) == pytest.approx(stats.binom.cdf(4, 300, 0.03), rel=1e-9)
    with pytest.raises(xprune.XpruneError):
        g.binomial_p_value(11, 10, 0.1)
    with pytest.raises(xprune.DataError):
        g.binomial_p_value(0, 0, 0.1)


def test_clopper_pearson_matches_beta_quantile_and_the_test():
    stats = pytest.importorskip("scipy.stats")
    for k, n, conf in [
        (0, 300, 0.95),
        (1, 500, 0.95),
        (7, 180, 0.9),
        (50, 60000, 0.99),
        (499, 500, 0.95),
        (3, 20, 0.6),
    ]:
        u = g.clopper_pearson_upper(k, n, conf)
        assert u == pytest.approx(stats.beta.ppf(conf, k + 1, n - k), rel=1e-8)
        # duality: the test rejects R > alpha at level delta exactly when the bound is <= alpha
        for alpha in {min(0.999, a) for a in (0.5 * u, 0.999 * u, 1.001 * u, 2 * u)}:
            assert (g.binomial_p_value(k, n, alpha) <= 1 - conf) == (u <= alpha)
    assert g.clopper_pearson_upper(10, 10, 0.9) == 1.0
    assert g.clopper_pearson_upper(0, 299, 0.95) <= 0.01 < g.clopper_pearson_upper(0, 298, 0.95)


def test_calibration_size_is_the_first_n_from_which_every_n_certifies():
    stats = pytest.importorskip("scipy.stats")
    assert g.calibration_size(0.01, 0.95) == 299  # (1 - 0.01)^n <= 0.05
    assert g.calibration_size(0.05, 0.9, tightness=0.05) == 45
    for alpha, conf, t in [(0.05, 0.95, 0.01), (0.1, 0.9, 0.03), (0.2, 0.95, 0.07), (0.3, 0.99, 0.1)]:
        n = np.arange(1, 20001)
        ok = stats.binom.cdf(np.floor(n * (alpha - t) + 1e-9), n, alpha) <= 1 - conf
        brute = int(np.nonzero(~ok)[0][-1]) + 2  # after the last failure
        assert g.calibration_size(alpha, conf, t) == brute
    # tighter bounds and higher confidence need more data
    assert g.calibration_size(0.01, 0.95, 0.002) > g.calibration_size(0.01, 0.95, 0.005) > 299
    assert g.calibration_size(0.01, 0.99) > 299
    for bad in ({"tightness": 0.0}, {"tightness": 0.02}, {"tightness": -1}):
        with pytest.raises(xprune.XpruneError, match="tightness"):
            g.calibration_size(0.01, 0.95, **bad)
    with pytest.raises(xprune.XpruneError, match="confidence"):
        g.calibration_size(0.01, 1.0)


# --------------------------------------------------------------------------- the procedures on given outcomes


def _outcomes(flips_per_rate, n):
    """Every sample right before pruning; the first flips_per_rate[j] samples wrong at rate j."""
    base = np.ones(n, bool)
    pruned = np.ones((len(flips_per_rate), n), bool)
    for j, f in enumerate(flips_per_rate):
        pruned[j, :f] = False
    return base, pruned


def test_fixed_sequence_stops_at_the_first_non_rejection():
    stats = pytest.importorskip("scipy.stats")
    rates = [0.0, 0.1, 0.2, 0.3, 0.4]
    base, pruned = _outcomes([0, 0, 2, 40, 0], 500)  # rate 0.4 looks safe again but comes after a failure
    c = g.choose_from_outcomes(base, pruned, rates, max_drop=0.02, confidence=0.95)
    assert c.rate == 0.2 and c.index == 2 and c.certified
    assert c.flips == [0, 0, 2, 40, 0]
    assert c.p_values[0] == 0.0  # rate 0 is the unpruned model: accepted without a test
    for j in range(1, 5):
        assert c.p_values[j] == pytest.approx(stats.binom.cdf(c.flips[j], 500, 0.02), rel=1e-9)
    assert c.p_values[4] <= 0.05 < c.p_values[3]
    assert c.accuracies[2] == pytest.approx(498 / 500) and c.drop == pytest.approx(2 / 500)
    # the simultaneous bound holds at level 1 - delta/m for the m = 4 rates that prune
    assert c.bound == pytest.approx(stats.beta.ppf(1 - 0.05 / 4, 3, 498), rel=1e-8)
    assert "20%" in c.explain() and "30%" in c.explain() and "**chosen**" in c.table()


def test_flips_count_only_samples_broken_by_pruning():
    base = np.array([True, True, False, False])
    pruned = np.array([[True, True, False, False], [False, True, True, True]])  # one broken, two repaired
    c = g.choose_from_outcomes(base, pruned, [0.0, 0.5], max_drop=0.5, confidence=0.5)
    assert c.flips == [0, 1]
    assert c.drops == [0.0, -0.25]  # the accuracy rose, the flip risk (an upper bound) did not


def test_nothing_certified_keeps_the_model_and_says_how_much_data_is_needed():
    base, pruned = _outcomes([0, 0, 0], 100)
    c = g.choose_from_outcomes(base, pruned, [0.0, 0.1, 0.2], max_drop=0.01, confidence=0.95)
    assert c.rate == 0.0 and not c.certified
    assert c.p_values[1] == pytest.approx(0.99**100)
    text = c.explain()
    assert "No rate" in text and "299" in text
    assert c.needed_calibration() == 299
    # rates whose plan removes nothing are the unpruned model: certified without data
    c = g.choose_from_outcomes(base, pruned, [0.0, 0.1, 0.2], max_drop=0.01, confidence=0.95, removed=[0, 0, 3])
    assert c.rate == 0.1 and not c.certified and c.p_values[:2] == [0.0, 0.0]


def test_crc_uses_the_monotone_envelope():
    n = 99
    base = np.ones(n, bool)
    pruned = np.ones((4, n), bool)
    pruned[1, :2] = False  # 2 broken at rate 1
    pruned[2, 2:4] = False  # 2 *other* samples broken at rate 2 (the envelope counts 4)
    pruned[3, :1] = False
    c = g.choose_from_outcomes(base, pruned, [0.0, 0.1, 0.2, 0.3], max_drop=0.04, confidence=0.9, method="crc")
    assert c.crc_risk == pytest.approx([0.0, 3 / 100, 5 / 100, 5 / 100])
    assert c.rate == 0.1 and c.p_values is None
    assert "conformal risk control" in c.explain()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_drop": 0.0}, "max_drop"),
        ({"max_drop": 1.0}, "max_drop"),
        ({"max_drop": -0.1}, "max_drop"),
        ({"max_drop": True}, "max_drop"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0}, "confidence"),
        ({"method": "bonferroni"}, "method"),
    ],
)
def test_settings_out_of_range_are_refused(kwargs, match):
    base, pruned = _outcomes([0, 0], 10)
    with pytest.raises(xprune.XpruneError, match=match):
        g.choose_from_outcomes(base, pruned, [0.0, 0.1], **kwargs)


def test_malformed_outcomes_are_refused():
    base, pruned = _outcomes([0, 0], 10)
    with pytest.raises(xprune.DataError, match="empty"):
        g.choose_from_outcomes(base[:0], pruned[:, :0], [0.0, 0.1])
    with pytest.raises(xprune.XpruneError, match="increasing"):
        g.choose_from_outcomes(base, pruned, [0.1, 0.0])
    with pytest.raises(xprune.XpruneError, match="shape"):
        g.choose_from_outcomes(base, pruned[:1], [0.0, 0.1])
    with pytest.raises(xprune.XpruneError, match=r"0\.0"):
        g.choose_from_outcomes(base, np.zeros((1, 10), bool), [0.1])


# --------------------------------------------------------------------------- on a trained model


@pytest.fixture(scope="module")
def setting():
    """A small MLP trained once on 40% of digits; the other 60% (1079 samples) is the deployment pool.

    Returns the model, reference samples (10 per class of its training split), scores, the pool and the
    per-sample correctness on the pool of the unpruned model and, per criterion (activation, taylor), of the
    model pruned at each of ``RATES``.
    """
    from xprune.data import load, reference_samples
    from xprune.models import build, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is faster than two on a shared machine
    try:
        ds = load("digits", seed=0, val_fraction=0.05, test_fraction=0.55)
        torch.manual_seed(0)
        model = build("mlp", input_shape=ds.input_shape, num_classes=10, hidden=(48, 32))
        train(model, ds.train, epochs=15, seed=0, progress=False)
        model.eval()
        ref = reference_samples(ds.train, 10, seed=0)
        pool = (torch.cat([ds.val.X, ds.test.X]), torch.cat([ds.val.y, ds.test.y]))
        base = g.correctness(model, pool).numpy()
        out = {"model": model, "ds": ds, "ref": ref, "pool": pool, "base": base}
        for criterion in ("activation", "taylor"):
            scores = xprune.score(model, ref, criterion)
            rows, removed = [], []
            for r in RATES:
                plan = xprune.select(scores, r)
                removed.append(plan.n_removed)
                rows.append(g.correctness(xprune.apply(model, plan, "mask"), pool).numpy() if plan.n_removed else base)
            out[criterion] = {"scores": scores, "pruned": np.stack(rows), "removed": removed}
    finally:
        torch.set_num_threads(threads)
    return out


def test_choose_rate_end_to_end_matches_the_outcomes(setting):
    s = setting
    X, y = s["pool"]
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))[:300]
    cal = (X[idx], y[idx])
    c = xprune.guarantee.choose_rate(
        s["model"], s["ref"], cal, "activation", max_drop=0.05, confidence=0.9, rates=RATES
    )
    a = s["activation"]
    ref_c = g.choose_from_outcomes(
        s["base"][idx], a["pruned"][:, idx], RATES, max_drop=0.05, confidence=0.9, removed=a["removed"]
    )
    assert c.rates == RATES and c.rate == ref_c.rate and c.flips == ref_c.flips and c.p_values == ref_c.p_values
    assert c.criterion == "activation" and c.units == "channels" and c.n_calibration == 300
    assert c.base_accuracy == pytest.approx(xprune.evaluate.accuracy(s["model"], cal))
    assert 0 < c.rate < 0.5 and c.certified and c.bound > 0
    # precomputed scores give the same choice; an unsorted grid without 0 is sorted and completed
    c2 = xprune.guarantee.choose_rate(
        s["model"], None, cal, scores=s["activation"]["scores"], max_drop=0.05, confidence=0.9, rates=RATES[:0:-1]
    )
    assert c2.rates == RATES and c2.rate == c.rate
    text = c.explain()
    for phrase in ("Learn-then-Test", "does not mean", "same distribution", "300 calibration samples"):
        assert phrase in text
    assert set(c.to_dict()) >= {"rate", "bound", "p_values", "accuracies", "n_calibration", "ucb"}


def test_choose_rate_refuses_calibration_that_is_the_reference(setting):
    s = setting
    ref = s["ref"]
    with pytest.raises(xprune.XpruneError, match="calibration"):
        xprune.guarantee.choose_rate(s["model"], ref, ref, "activation")
    with pytest.raises(xprune.XpruneError, match="identical"):
        xprune.guarantee.choose_rate(s["model"], ref, (ref.X.clone(), ref.y.clone()), "activation")
    X, y = s["pool"]
    mixed = (torch.cat([X[:50], ref.X[:5]]), torch.cat([y[:50], ref.y[:5]]))
    with pytest.warns(g.GuaranteeWarning, match="5 of 55"):
        xprune.guarantee.choose_rate(s["model"], ref, mixed, scores=s["activation"]["scores"], rates=[0.0, 0.1])
    with pytest.raises(xprune.DataError, match="empty"):
        xprune.guarantee.choose_rate(s["model"], ref, (X[:0], y[:0]), scores=s["activation"]["scores"])
    with pytest.raises(xprune.XpruneError, match="rates"):
        xprune.guarantee.choose_rate(s["model"], ref, (X, y), scores=s["activation"]["scores"], rates=[0.5, 1.0])
    with pytest.raises(xprune.XpruneError, match="max_drop"):
        xprune.guarantee.choose_rate(s["model"], ref, (X, y), scores=s["activation"]["scores"], max_drop=1.5)


# --------------------------------------------------------------------------- the validity simulation


def _naive(base, pruned, max_drop):
    """The largest rate whose calibration accuracy drop is at most max_drop: no correction at all."""
    drops = base.mean() - pruned.mean(axis=1)
    return int(np.nonzero(drops <= max_drop)[0].max())


@pytest.mark.parametrize("criterion", ["activation", "taylor"])
def test_simulation_ltt_keeps_its_promise_where_the_naive_rule_does_not(setting, criterion):
    """Over many random calibration draws from the pool, LTT violates max_drop at most 1 - confidence of the time.

    Two ways of drawing, each ``runs`` times, with ``n = 200`` calibration samples, ``max_drop = 3%`` and
    ``confidence = 90%``, on 21 rates from 0 to 50%:

    - *split*: the pool is split at random into calibration and held-out test samples (879); the true drop is
      the drop on the held-out part (what a user would measure afterwards);
    - *population*: calibration samples are drawn i.i.d. from the pool and the true drop (and flip risk) is
      that of the whole pool, which is then exactly the deployment distribution of the theorem.

    The allowance is the one-sided 99% binomial quantile of ``runs`` draws at 1 - confidence. The naive rule
    (the largest rate whose calibration drop is at most max_drop) violates far more often; with activation
    scores (a gradual accuracy curve with several rates just above max_drop) more often than the allowance.
    """
    stats = pytest.importorskip("scipy.stats")
    s = setting
    base, pruned, removed = s["base"], s[criterion]["pruned"], s[criterion]["removed"]
    alpha, conf, n, runs = 0.03, 0.9, 200, 600
    allowed = stats.binom.ppf(0.99, runs, 1 - conf) / runs
    N = len(base)
    broken = base[None] & ~pruned
    flip_risk, envelope_risk = broken.mean(axis=1), np.maximum.accumulate(broken, axis=0).mean(axis=1)
    pool_drop = base.mean() - pruned.mean(axis=1)
    rng = np.random.default_rng(0)
    count = dict.fromkeys(("split_ltt", "split_naive", "pop_ltt", "pop_ltt_risk", "pop_naive", "certified"), 0)
    crc_risks = []
    for _ in range(runs):
        perm = rng.permutation(N)
        cal, test = perm[:n], perm[n:]
        test_drop = base[test].mean() - pruned[:, test].mean(axis=1)
        c = g.choose_from_outcomes(base[cal], pruned[:, cal], RATES, max_drop=alpha, confidence=conf, removed=removed)
        count["split_ltt"] += test_drop[c.index] > alpha
        count["split_naive"] += test_drop[_naive(base[cal], pruned[:, cal], alpha)] > alpha
        count["certified"] += c.certified

        cal = rng.integers(0, N, n)
        c = g.choose_from_outcomes(base[cal], pruned[:, cal], RATES, max_drop=alpha, confidence=conf, removed=removed)
        count["pop_ltt"] += pool_drop[c.index] > alpha
        count["pop_ltt_risk"] += flip_risk[c.index] > alpha  # the quantity LTT controls
        count["pop_naive"] += pool_drop[_naive(base[cal], pruned[:, cal], alpha)] > alpha
        crc = g.choose_from_outcomes(
            base[cal], pruned[:, cal], RATES, max_drop=alpha, confidence=conf, removed=removed, method="crc"
        )
        crc_risks.append(envelope_risk[crc.index])
    rate = {k: v / runs for k, v in count.items()}
    print(criterion, rate, "allowed", allowed, "CRC mean risk", np.mean(crc_risks))
    # the setting is not vacuous: some rate's true drop exceeds max_drop, and LTT does prune
    assert pool_drop.max() > alpha and rate["certified"] > 0.9
    for k in ("split_ltt", "pop_ltt", "pop_ltt_risk"):
        assert rate[k] <= allowed, (k, rate)
    for k in ("split", "pop"):
        assert rate[f"{k}_naive"] > rate[f"{k}_ltt"] + 0.05, (k, rate)
        if criterion == "activation":
            assert rate[f"{k}_naive"] > allowed, (k, rate)
    # conformal risk control bounds the expected (envelope) flip risk: mean over draws <= alpha + 3 s.e.
    assert np.mean(crc_risks) <= alpha + 3 * np.std(crc_risks) / np.sqrt(runs)


# --------------------------------------------------------------------------- command line


def test_cli_prune_with_max_drop(setting, tmp_path, capsys):
    torch.save(setting["model"], tmp_path / "mlp.pt")
    rc = main(
        [
            "prune",
            "--model",
            str(tmp_path / "mlp.pt"),
            "--data",
            "digits",
            "--criterion",
            "activation",
            "--max-drop",
            "0.05",
            "--confidence",
            "0.9",
            "--out",
            str(tmp_path / "small.pt"),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "Chosen pruning rate" in out and "calibration samples" in out
    plan = xprune.Plan.load(tmp_path / "small.plan.json")
    assert plan.meta["guarantee"]["max_drop"] == 0.05 and plan.meta["guarantee"]["n_calibration"] == 180
    assert torch.load(tmp_path / "small.pt", weights_only=False) is not None
    for argv, message in [
        (["--ratio", "0.5", "--max-drop", "0.01"], "either"),
        ([], "--ratio, or --max-drop"),
        (["--ratio", "0.5", "--confidence", "0.9"], "--confidence goes with"),
    ]:
        assert (
            main(
                [
                    "prune",
                    "--model",
                    str(tmp_path / "mlp.pt"),
                    "--data",
                    "digits",
                    "--out",
                    str(tmp_path / "x.pt"),
                    *argv,
                ]
            )
            == 2
        )
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prune", "--model", "x", "--data", "digits", "--max-drop", "1.5", "--out", "y"])
    assert "strictly between 0 and 1" in capsys.readouterr().err
