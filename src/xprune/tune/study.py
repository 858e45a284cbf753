r"""The PXP optuna study: storage, samplers, the bound pruner, :func:`tune` and :class:`TuneResult`.

:func:`tune` searches the LRP composite (one rule per layer group, plus
aggregation, normalisation and, for transformers, the softmax rule) that
maximises the validation AUC of the accuracy-vs-pruning-rate curve
(PXP: Hatefi et al., "Pruning By Explaining Revisited", arXiv:2408.12568,
2024), by random search by default: PXP's Gaussian-process Bayesian
optimisation (``sampler="gp"``) did worse than random search at equal budgets
(``benchmarks/results/pxp_samplers_*.json``, ``docs/tune.md``, "Samplers").
Main parameters: ``model``, ``reference`` and ``validation`` data,
``units``, ``space``, ``trials``,
``sampler``, ``storage``/``study_name`` (resumable, shareable study), ``out``,
``rates``, ``pruner``. The study persists in ``out/study.db``; the best
composite is written to ``out/best_composite.json``. Objective, search space,
persistence and the distributed mode: ``docs/tune.md``.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write
from ..errors import XpruneError
from ..evaluate import DEFAULT_RATES, Curve
from .evaluator import Evaluator
from .plots import save_plots
from .space import Design, Space
from .trials import optimize, requeue_interrupted, serve

__all__ = ["tune", "TuneResult", "bound_pruner_cls", "N_STARTUP"]

N_STARTUP = 5
"""Random start-up trials of the ``"gp"`` and ``"tpe"`` samplers (and of the bound pruner).

A fixed number, not a share of ``trials``: a study resumed with a larger
budget is then the study that one run with that budget would have made, and
the best-so-far curve of one run reads the result of every smaller budget
(``benchmarks/pxp_samplers.py``). Five random composites leave the model 25 of
the default 30 trials (5 of 10); optuna's own default is 10.
"""


# ----------------------------------------------------------------------------- pruner


@functools.cache
def bound_pruner_cls():
    """The class :class:`BoundPruner` (an optuna pruner, so optuna is imported when it is first asked for)."""
    import optuna

    class BoundPruner(optuna.pruners.BasePruner):
        """Stop a trial whose optimistic AUC projection falls below the best finished AUC minus ``margin``.

        The intermediate value reported after rate :math:`k` is
        :math:`\\hat A_k = (\\sum_{j\\le k} a_j + (K-k) a_k)/K`, an upper bound of
        the final AUC when accuracy does not rise with the pruning rate;
        ``margin`` absorbs small rises. No trial is pruned before
        ``n_startup_trials`` trials have completed (default
        :data:`N_STARTUP`, the random start-up of the samplers of :func:`tune`,
        so that the surrogate model starts from exact values). Under the GP
        sampler a stopped trial is recorded as complete with
        :math:`\\hat A_k` as its value (see :func:`tune`, ``pruner``).
        """

        def __init__(self, margin: float = 0.01, n_startup_trials: int = N_STARTUP):
            if margin < 0:
                raise XpruneError(f"margin must be >= 0, got {margin}")
            self.margin = float(margin)
            self.n_startup_trials = int(n_startup_trials)

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step is None:
                return False
            done = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
            if len(done) < self.n_startup_trials:
                return False
            return trial.intermediate_values[step] < max(done) - self.margin

    return BoundPruner


# ----------------------------------------------------------------------------- result


@dataclass
class TuneResult:
    """Outcome of :func:`tune`.

    Attributes
    ----------
    study : optuna.Study or None
        The study (all trials, including those of earlier runs); ``None`` on
        the ranks other than 0 of a process group (rank 0 owns the study).
    best_value : float
        Validation AUC of the best trial.
    best_params : dict
        Its optuna parameters.
    composite : Path
        The best composite file (``out/best_composite.json``).
    options : dict
        ``{"composite": path, "aggregate": ..., "normalize": ...}``: pass as
        ``xprune.score(model, data, "lrp", **result.options)`` (or to
        :func:`xprune.evaluate.curve`) to reproduce the best trial.
    curve : Curve
        The best trial's validation curve.
    out : Path
        Output folder.
    counts : dict
        Number of trials by state (``complete``, ``pruned``, ``fail``, ...);
        ``pruned`` counts every trial the pruner stopped, also those recorded
        as complete for the GP sampler (see :func:`tune`, ``pruner``).
    seconds_per_trial : float
        Mean wall time of the finished (complete or pruned) trials.
    files : dict
        Name -> path of everything written.
    """

    study: Any | None
    best_value: float
    best_params: dict[str, Any]
    composite: Path
    options: dict[str, Any]
    curve: Curve
    out: Path
    counts: dict[str, int] = field(default_factory=dict)
    seconds_per_trial: float = float("nan")
    files: dict[str, Path] = field(default_factory=dict)

    def __str__(self) -> str:
        counts = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)
        return (
            f"TuneResult: best validation AUC {self.best_value:.4f} ({counts}; "
            f"{self.seconds_per_trial:.2f} s per trial)\n  composite: {self.composite}\n"
            f"  options: aggregate={self.options['aggregate']!r}, normalize={self.options['normalize']!r}"
        )


# ----------------------------------------------------------------------------- study parts


def _storage(storage: Any, out: Path):
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback

    if storage is not None and not isinstance(storage, (str, Path)):
        return storage  # an optuna storage object
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out / 'study.db').resolve()}"
    elif "://" in str(storage):
        url = str(storage)
    else:  # a file path: SQLite
        Path(storage).parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{Path(storage).resolve()}"
    kwargs: dict[str, Any] = {"heartbeat_interval": 60, "grace_period": 180}
    with warnings.catch_warnings():  # crashed trials (no heartbeat for 3 min) are failed and retried once
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            kwargs["heartbeat_stale_trial_callback"] = RetryHeartbeatStaleTrialCallback(max_retry=1)
        except ImportError:  # optuna < 4.9
            kwargs["failed_trial_callback"] = RetryFailedTrialCallback(max_retry=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, **kwargs)
    except Exception as e:  # SQLAlchemy errors: bad URL, missing driver, unreachable server
        raise XpruneError(f"cannot open the study storage {url!r}: {e}") from e


def _sampler(sampler: Any, seed: int):
    import optuna

    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True, n_startup_trials=N_STARTUP)
        if sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=N_STARTUP)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise XpruneError(f"sampler must be 'gp', 'tpe', 'random' or an optuna sampler; got {sampler!r}")


def _pruner(pruner: Any):
    import optuna

    if pruner is None or pruner is False:
        return optuna.pruners.NopPruner()
    if pruner == "bound":
        return bound_pruner_cls()()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise XpruneError(f"pruner must be 'bound', 'median', None or an optuna pruner; got {pruner!r}")


# ----------------------------------------------------------------------------- tune


def tune(
    model: nn.Module,
    reference: Any,
    validation: Any,
    units: str = "channels",
    space: Space | Mapping[str, Any] | None = None,
    trials: int = 30,
    sampler: Any = "random",
    storage: Any = None,
    study_name: str | None = None,
    out: str | Path = "xprune-tune",
    seed: int = 0,
    rates: Sequence[float] = DEFAULT_RATES,
    classes: Sequence[int] | None = None,
    timeout: float | None = None,
    progress: bool = True,
    pruner: Any = "bound",
    scope: str = "global",
    device: Any = None,
    precision: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> TuneResult:
    """Search the LRP composite that prunes ``model`` best (PXP, Hatefi et al. 2024).

    Parameters
    ----------
    model : nn.Module
        The model to prune (not modified). For domain restriction wrap it in
        :class:`xprune.data.RestrictedModel` and/or pass ``classes``.
    reference : data
        Reference samples the relevance is computed from (e.g. 10 per class).
    validation : data
        Where the AUC is measured during the search: neither the reference
        samples (checked) nor the test set the result is reported on.
    units : str
        ``"channels"`` (CNNs), or ``"heads"``/``"neurons"`` (transformers,
        after ``import xprune.transformers``).
    space : Space or dict, optional
        Search space (fields of :class:`Space` to override).
    trials : int
        Finished trials (complete or pruned) the study should hold; trials of
        earlier runs count, so calling again with the same ``trials``
        resumes and stops where it should have.
    sampler : {"random", "gp", "tpe"} or optuna sampler
        ``"random"``: random search (default); ``"gp"``: optuna's
        Gaussian-process Bayesian optimisation (PXP's optimiser); ``"tpe"``:
        multivariate tree-structured Parzen estimator. ``"gp"`` and ``"tpe"``
        start with :data:`N_STARTUP` random trials, whatever ``trials`` is
        (the same points as the first draws of ``"random"`` with the same
        seed). Random search is the default because GP did not beat it at
        equal budgets: on the CNN transfer task random search's best
        validation AUC after 25 and after 50 trials is higher on all 4 seeds;
        on ViT heads after 30 trials the two are within 0.001 on 3 seeds and
        GP is 0.015 lower on one (``benchmarks/results/pxp_samplers_cnn.json``,
        ``pxp_samplers_vit-heads.json``; ``docs/tune.md``, "Samplers").
        Seeded with ``seed`` plus the number of trials already in the study
        (a resumed study does not repeat the first run's random points).
    storage : None, str, path or optuna storage
        ``None``: SQLite ``out/study.db``; a SQLAlchemy URL
        (``"postgresql://..."``, ``"sqlite:///..."``) for a shared study; a
        path: SQLite file.
    study_name : str, optional
        Default ``"pxp-<units>"``. An existing study of that name is
        resumed (``load_if_exists``) if it was created with the same setup
        (space, groups, rates, units), else an error is raised.
    out : str or Path
        Output folder (composite file, plots, summary, default SQLite).
    seed : int
        Seed of the sampler.
    rates : sequence of float
        Increasing pruning rates of the curve (default 0, 0.05, ..., 0.95).
    classes : sequence of int, optional
        Domain restriction: accuracy over these classes only (their logits).
    timeout : float, optional
        Stop starting new trials after this many seconds.
    progress : bool
        Print one line per trial.
    pruner : "bound", "median", None or optuna pruner
        Early stopping of hopeless trials on their partial curve (see
        ``docs/tune.md``, "Fast trials"). optuna's GP sampler fits its model
        to complete trials only, so under an optuna ``GPSampler`` a stopped
        trial whose reported projection :math:`\\hat A_k` (an upper bound of
        its AUC) is below the best complete AUC is recorded as complete with
        :math:`\\hat A_k` as its value, and with the rate it stopped at in its
        user attribute ``"stopped_after"``: the model learns that the
        composite does worse than the best one (by at least the pruner's
        margin) without being told it is worse than it could be (when
        accuracy does not rise with the rate, the bound's assumption), and it
        does not propose that point again (left out, the model saw only the
        start-up trials and proposed the same point again and again). Such a
        trial cannot become the best trial; :attr:`TuneResult.counts` counts
        it as ``"pruned"``. The other samplers learn from pruned trials
        themselves (TPE) or not at all (random): there a stopped trial stays
        pruned.
    scope : {"global", "local"}
        Ranking scope of the prunings each curve measures (as in
        :func:`xprune.select`).
    device : str or torch.device, optional
        Score and measure on this device (the model is moved there for the
        call and back afterwards); default: where the model is.
    precision : "fp32" or "bf16", optional
        Precision of the scoring (see :func:`xprune.score`).
    options : mapping, optional
        Fixed keyword arguments of every trial's :func:`xprune.score` call:
        options of the lrp criterion that are not searched (e.g.
        ``{"start": "logit"}``) and ``target``. They are recorded in the
        composite file and in ``TuneResult.options``.

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> res = xprune.tune(model, ref, ds.val, trials=20, out="tuned")      # doctest: +SKIP
    >>> xprune.evaluate.curve(model, ref, ds.test, "lrp", **res.options).auc  # doctest: +SKIP
    """
    import importlib.util

    if importlib.util.find_spec("optuna") is None:  # pragma: no cover
        raise XpruneError("xprune.tune needs optuna >= 4: pip install optuna")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise XpruneError(f"trials must be a positive int, got {trials!r}")
    if timeout is not None and timeout <= 0:
        raise XpruneError(f"timeout must be positive seconds, got {timeout!r}")
    out = Path(out)
    from .. import distributed

    with distributed.on_device(model, device):
        return _tune(
            model,
            reference,
            validation,
            units,
            space,
            trials,
            sampler,
            storage,
            study_name,
            out,
            seed,
            rates,
            classes,
            timeout,
            progress,
            pruner,
            scope,
            precision,
            dict(options or {}),
        )


def _tune(
    model,
    reference,
    validation,
    units,
    space,
    trials,
    sampler,
    storage,
    study_name,
    out,
    seed,
    rates,
    classes,
    timeout,
    progress,
    pruner,
    scope,
    precision,
    options,
) -> TuneResult:
    import optuna

    from .. import distributed

    kind = units if isinstance(units, str) else units.kind
    design = Design(Space.coerce(space), model, kind)
    ev = Evaluator(
        model, reference, validation, units, classes, rates, scope=scope, precision=precision, options=options
    )
    n_rates = len(ev.rates)
    setup = {"design": design.describe(), "rates": ev.rates, "classes": ev.classes, "units": kind}
    # what else changes the objective, recorded when not the default (studies made before stay resumable)
    setup.update(
        {
            k: v
            for k, v in (("scope", scope), ("precision", precision), ("options", options))
            if v not in ("global", None, "fp32", {})
        }
    )
    setup_json = json.dumps(setup, sort_keys=True, default=str)

    def open_study():  # rank 0 owns the study and its storage (the only rank that writes)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = study_name or f"pxp-{kind}"
        study = optuna.create_study(
            storage=_storage(storage, out),
            study_name=name,
            direction="maximize",
            load_if_exists=True,
            pruner=_pruner(pruner),
        )
        stored = study.user_attrs.get("setup")
        if stored is None:
            study.set_user_attr("setup", setup_json)
        elif stored != setup_json:
            raise XpruneError(
                f"study {name!r} in this storage was made with another setup (space, layer groups, "
                "rates, classes, units, scope, precision or fixed options); pass another study_name= or out="
            )
        study.sampler = _sampler(sampler, seed + len(study.trials))
        requeue_interrupted(study)
        return study

    study = distributed.run_on_main(open_study, "to open the study")  # None on the other ranks
    if study is None:  # the other ranks of a process group score and evaluate their share of rank 0's trials
        serve(ev, n_rates)
    else:
        optimize(study, design, ev, trials, timeout, progress)
    result = distributed.run_on_main(lambda: _finish(study, design, ev, out), "to write the results")
    shared = distributed.broadcast_object(
        None if result is None else {f.name: getattr(result, f.name) for f in fields(TuneResult) if f.name != "study"}
    )
    return result if result is not None else TuneResult(study=None, **shared)


def _finish(study, design: Design, ev: Evaluator, out: Path) -> TuneResult:
    import optuna

    from ..lrp import save_composite

    TS = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TS.COMPLETE and "stopped_after" not in t.user_attrs]
    if not complete:
        raise XpruneError(
            f"study {study.study_name!r} has no complete trial yet (states: "
            f"{_counts(all_trials)}); run more trials or check the failures in the log"
        )
    best = max(complete, key=lambda t: (t.value, -t.number))  # = study.best_trial (a stopped trial is below it)
    spec, options = best.user_attrs["composite"], best.user_attrs["options"]
    kwargs = {} if design.attention else {"groups": design.groups}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "best_composite.json"
    normalize = None if options["normalize"] == "none" else options["normalize"]
    chosen = {"aggregate": options["aggregate"], "normalize": normalize, **ev.options}
    save_composite(
        path,
        spec,
        kwargs=kwargs,
        options=chosen,
        meta={
            "study": study.study_name,
            "trial": best.number,
            "validation_auc": best.value,
            "rates": ev.rates,
            "units": ev.kind,
            "source": "xprune.tune (PXP, Hatefi et al. 2024)",
        },
    )
    secs = [
        t.user_attrs["seconds"] for t in all_trials if t.state in (TS.COMPLETE, TS.PRUNED) and "seconds" in t.user_attrs
    ]
    curve = Curve(
        "lrp (tuned)",
        list(ev.rates),
        list(best.user_attrs["accuracies"]),
        meta={"units": ev.kind, "split": "validation", "trial": best.number},
    )
    files = {"composite": path}
    files.update(save_plots(study, out))
    summary = {
        "study": study.study_name,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "composite": str(path),
        "options": chosen,
        "scope": ev.scope,
        "counts": _counts(all_trials),
        "seconds_per_trial": statistics.fmean(secs) if secs else None,
        "seconds_complete_trial": statistics.fmean(
            [t.user_attrs["seconds"] for t in complete if "seconds" in t.user_attrs] or [math.nan]
        ),
        "best_curve": curve.to_dict(),
        "setup": json.loads(study.user_attrs["setup"]),
        "trials": [
            {
                "number": t.number,
                "state": _state(t),
                "value": t.value,
                "params": t.params,
                "seconds": t.user_attrs.get("seconds"),
                "stopped_after": t.user_attrs.get("stopped_after"),
            }
            for t in all_trials
        ],
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    files["summary"] = out / "summary.json"
    return TuneResult(
        study,
        best.value,
        dict(best.params),
        path,
        {"composite": str(path), **chosen},
        curve,
        out,
        _counts(all_trials),
        statistics.fmean(secs) if secs else math.nan,
        files,
    )


def _state(t) -> str:
    """The trial's state name; ``"PRUNED"`` also for a stopped trial recorded as complete for the GP sampler."""
    return "PRUNED" if "stopped_after" in t.user_attrs else t.state.name


def _counts(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        name = _state(t).lower()
        out[name] = out.get(name, 0) + 1
    return out
