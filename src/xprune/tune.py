r"""Tune the LRP composite for pruning: Bayesian optimisation over layer-group rules (PXP).

Hatefi et al. ("Pruning By Explaining Revisited: Optimizing Attribution
Methods to Prune CNNs and Transformers", arXiv:2408.12568, 2024) treat the
attribution method as a hyper-parameter of the pruning task: the LRP rule of
each *layer group* is chosen to maximise the area under the accuracy-vs-
pruning-rate curve, with Bayesian optimisation (a Gaussian-process surrogate).
:func:`tune` runs that search as an `optuna <https://optuna.org>`_ study.

Objective
---------
For a candidate composite :math:`c`, relevance is computed once on the
unpruned model from the reference samples, units are ranked globally, and the
nested prunings at rates :math:`r_1 < \dots < r_K` (default
:math:`0, 0.05, \dots, 0.95`, no fine-tuning) are evaluated by masking on a
**validation** split:

.. math:: \mathrm{AUC}(c) = \frac{1}{K} \sum_{k=1}^{K} \mathrm{acc}_{\mathrm{val}}(r_k; c),

exactly :attr:`xprune.evaluate.Curve.auc` of :func:`xprune.evaluate.curve`.
The validation split must differ from the reference samples (checked) and
from the test set on which the tuned composite is finally reported (the
caller's responsibility).

Search space (:class:`Space`, every field overridable)
--------------------------------------------------------
- **Layer groups**, derived from depth: CNNs: conv layers in forward
  (registration) order split into thirds ``low``/``mid``/``high`` and the
  linear layers ``fc`` (:func:`xprune.lrp.conv_groups`); transformers (unit
  kinds ``"heads"``/``"neurons"``): the dense layers split into thirds
  ``low``/``mid``/``high``. Empty groups are dropped. Override with
  ``Space(groups={name: [module names]})`` or a callable ``model -> mapping``.
- **Rule per group** in {epsilon, z+, alpha-beta, gamma} (Montavon et al.,
  "Layer-wise relevance propagation: an overview", 2019) with its parameter:
  :math:`\epsilon \sim \log\mathcal{U}(10^{-8}, 1)`,
  :math:`\gamma \sim \log\mathcal{U}(10^{-3}, 10)`,
  :math:`\alpha \sim \mathcal{U}(1, 3)` with :math:`\beta = \alpha - 1`
  (conservation; :math:`\alpha = 1` is z+, :math:`\alpha = 2` alpha2-beta1).
- **Aggregation** of a unit's relevance over the reference samples:
  ``"pxp"`` :math:`\sum_n |\sum_p R_{n,p,c}|` or ``"yeom"``
  :math:`\sum_{n,p} |R_{n,p,c}|` (see :mod:`xprune.criteria.lrp`).
- **Normalisation** before the global ranking: none, or per-layer L1
  (Yeom et al. 2021).
- **Transformers**: the softmax rule, AttnLRP (Achtibat et al., ICML 2024;
  relevance through the softmax, :math:`R_{in} = x (R_{out} - s \sum R_{out})`)
  or CP-LRP (Ali et al., ICML 2022; attention treated as constant), and
  the rule of the dense layers per group (as above).

Every parameter is sampled in every trial (a fixed space, which the
Gaussian-process sampler needs to model all of them jointly); a group's
parameter that its rule does not use is ignored.

Fast trials
-----------
What does not change between trials is prepared once: the data tensors (on
the model's device), the unit discovery, a working copy of the model with its
original weights and its dependency graph (masking a plan zeroes slices of
that copy, restored before each rate), and a cache of validation accuracies
keyed by the exact set of removed units (rate 0 and every pruning that two
composites agree on are evaluated once per study). After each rate the trial
reports an optimistic projection of its AUC,

.. math:: \hat{A}_k = \frac{1}{K}\Big(\sum_{j \le k} a_j + (K - k)\, a_k\Big),

which bounds the final AUC from above when accuracy does not rise with the
pruning rate; the default :class:`BoundPruner` stops a trial as soon as
:math:`\hat{A}_k` falls below the best finished AUC minus a margin. Any optuna
pruner can be used instead (e.g. ``optuna.pruners.MedianPruner()``).

Persistence
-----------
The study lives in SQLite in the output folder (``out/study.db``) unless
``storage`` names another database (any SQLAlchemy URL: several processes or
machines running :func:`tune` with the same ``storage`` and ``study_name``
share the study, optuna's distributed mode). Each finished trial is committed
at once; running again resumes: finished trials are kept and counted towards
``trials``, trials interrupted by Ctrl-C are run again with the same
parameters, and trials of a crashed process are detected by optuna's
heartbeat and retried. At the end, ``out`` holds:

- ``best_composite.json``: the best composite, accepted by
  ``criterion="lrp", composite=PATH`` (see :mod:`xprune.lrp.files`); its
  ``options`` are the aggregation and normalisation to use with it
  (:attr:`TuneResult.options`);
- ``history.png`` (AUC per trial, best so far), ``importances.png``
  (parameter importances, optuna's default evaluator), ``summary.json``.

Across processes
----------------
Inside an initialised ``torch.distributed`` process group (``torchrun``; pass
the same model and data on every rank), rank 0 owns the study: it alone opens
the storage, samples the parameters and writes files. Each trial's parameters
are broadcast and every rank scores its share of the reference samples and
measures its share of the validation curve (the sums and the counts are
reduced, see :mod:`xprune.distributed`), so the objective is the same on every
rank, and so is the single-process one up to float64 summation order. Rank
0's pruning decision after each rate is broadcast too: every rank takes the
same branch. A trial that fails on any rank fails on every rank (recorded as
failed, the study goes on); a rank that dies or times out stops the run with
:class:`~xprune.distributed.DistributedError` on the others (that trial is
run again when the study is resumed). Every rank returns a
:class:`TuneResult`; its ``study`` is ``None`` except on rank 0.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from . import _inputs
from ._io import atomic_write
from .errors import DataError, XpruneError
from .evaluate import DEFAULT_RATES, Curve, accuracy
from .lrp.composites import CONV, LINEAR, conv_groups
from .scores import Scores, score
from .select import select

__all__ = ["tune", "Space", "TuneResult", "BoundPruner", "RULE_CHOICES", "TRANSFORMER_KINDS"]

RULE_CHOICES = ("epsilon", "zplus", "alpha-beta", "gamma")
"""The rules searched per layer group (canonical names of :data:`xprune.lrp.RULES`)."""

TRANSFORMER_KINDS = ("heads", "neurons")
"""Unit kinds pruned with the attention composites (AttnLRP / CP-LRP)."""

_NORMALIZE = ("none", "l1", "l2", "max")


# ----------------------------------------------------------------------------- search space


@dataclass
class Space:
    """The search space of :func:`tune` (see the module docstring for the defaults' meaning).

    Parameters
    ----------
    rules : sequence of str, or mapping of group name to sequence of str
        Rules to choose from, for every group or per group; names among
        ``"epsilon"``, ``"zplus"``, ``"alpha-beta"``, ``"gamma"``. A group
        with a single rule does not add a choice to the search.
    epsilon, gamma : (low, high)
        Log-uniform ranges of the epsilon and gamma parameters.
    alpha : (low, high)
        Uniform range of alpha (:math:`\\beta = \\alpha - 1`), within [1, inf).
    aggregate : sequence of {"pxp", "yeom"}
        Aggregations over the reference samples.
    normalize : sequence of {None/"none", "l1", "l2", "max"}
        Per-layer normalisations before the global ranking.
    softmax : sequence of {"attnlrp", "cp"}
        Softmax rules (transformer unit kinds only).
    groups : mapping of group name to module names, callable or None
        Layer groups; default derived from depth (see the module docstring).

    Examples
    --------
    >>> Space(rules={"low": ["gamma", "zplus"], "mid": ["gamma"], "high": ["epsilon", "gamma"],
    ...              "fc": ["epsilon"]}, normalize=[None])  # doctest: +SKIP
    """

    rules: Sequence[str] | Mapping[str, Sequence[str]] = RULE_CHOICES
    epsilon: tuple[float, float] = (1e-8, 1.0)
    gamma: tuple[float, float] = (1e-3, 10.0)
    alpha: tuple[float, float] = (1.0, 3.0)
    aggregate: Sequence[str] = ("pxp", "yeom")
    normalize: Sequence[str | None] = (None, "l1")
    softmax: Sequence[str] = ("attnlrp", "cp")
    groups: Mapping[str, Sequence[str]] | Callable[[nn.Module], Mapping[str, Sequence[str]]] | None = None

    @classmethod
    def coerce(cls, space: "Space | Mapping[str, Any] | None") -> "Space":
        """A :class:`Space` from ``None`` (defaults), a Space, or a dict of fields to override."""
        if space is None:
            return cls()
        if isinstance(space, Space):
            return space
        if isinstance(space, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(space) - known)
            if unknown:
                raise XpruneError(f"unknown search-space fields {unknown}; known: {sorted(known)}")
            return cls(**dict(space))
        raise XpruneError(f"space must be a Space, a dict of its fields or None; got {type(space).__name__}")

    def check(self) -> None:
        """Raise :class:`~xprune.errors.XpruneError` if a field is out of range."""
        rule_lists = self.rules.values() if isinstance(self.rules, Mapping) else [self.rules]
        for rl in rule_lists:
            if isinstance(rl, str) or not list(rl):
                raise XpruneError(f"rules are non-empty lists of rule names; got {rl!r}")
            bad = sorted(set(rl) - set(RULE_CHOICES))
            if bad:
                raise XpruneError(f"unknown rules {bad} in the search space; choose among {list(RULE_CHOICES)}")
        for name, lo_min in (("epsilon", 0.0), ("gamma", 0.0)):
            lo, hi = getattr(self, name)
            if not (lo > lo_min and hi >= lo):
                raise XpruneError(f"{name} range must be 0 < low <= high (log-uniform); got {(lo, hi)}")
        lo, hi = self.alpha
        if not (1.0 <= lo <= hi):
            raise XpruneError(f"alpha range must be 1 <= low <= high (beta = alpha - 1 >= 0); got {(lo, hi)}")
        for a in self.aggregate:
            if a not in ("pxp", "yeom"):
                raise XpruneError(f"aggregate choices are 'pxp' and 'yeom'; got {a!r}")
        for n in self.normalize:
            if _norm_name(n) not in _NORMALIZE:
                raise XpruneError(f"normalize choices are None, 'l1', 'l2', 'max'; got {n!r}")
        for s in self.softmax:
            if s not in ("attnlrp", "cp"):
                raise XpruneError(f"softmax choices are 'attnlrp' and 'cp'; got {s!r}")
        for name in ("aggregate", "normalize", "softmax"):
            if not list(getattr(self, name)):
                raise XpruneError(f"the search space needs at least one {name} choice")

    def describe(self) -> dict[str, Any]:
        """JSON-able description (the groups as given, not resolved)."""
        d = {k: v for k, v in asdict(self).items() if k != "groups"}
        d["rules"] = {k: list(v) for k, v in self.rules.items()} if isinstance(self.rules, Mapping) else list(self.rules)
        d["normalize"] = [_norm_name(n) for n in self.normalize]
        for k in ("epsilon", "gamma", "alpha", "aggregate", "softmax"):
            d[k] = list(d[k])
        return d


def _norm_name(n: str | None) -> str:
    return "none" if n is None else str(n)


def default_groups(model: nn.Module, kind: str) -> dict[str, list[str]]:
    """Layer groups from depth: CNN conv thirds + ``fc``; transformers: dense-layer thirds. Empty groups dropped."""
    if kind in TRANSFORMER_KINDS:
        import numpy as np

        dense = [n for n, m in model.named_modules() if isinstance(m, CONV + LINEAR) or _is_conv1d(m)]
        parts = np.array_split(np.arange(len(dense)), 3)
        groups = {g: [dense[i] for i in idx] for g, idx in zip(("low", "mid", "high"), parts)}
    else:
        groups = conv_groups(model)
    return {g: names for g, names in groups.items() if names}


def _is_conv1d(m: nn.Module) -> bool:
    return type(m).__name__ == "Conv1D" and hasattr(m, "weight")  # Hugging Face GPT-2 style linear


class _Design:
    """A :class:`Space` resolved for one model: concrete groups and per-group rule choices."""

    def __init__(self, space: Space, model: nn.Module, kind: str):
        space.check()
        self.space = space
        self.kind = kind
        self.attention = kind in TRANSFORMER_KINDS
        if space.groups is None:
            groups = default_groups(model, kind)
        elif callable(space.groups):
            groups = space.groups(model)
        else:
            groups = space.groups
        self.groups = {str(g): [str(n) for n in names] for g, names in dict(groups).items()}
        if not self.groups:
            raise XpruneError("the model has no conv or linear layers to form layer groups; pass Space(groups=...)")
        modules = dict(model.named_modules())
        seen: dict[str, str] = {}
        for g, names in self.groups.items():
            if not names:
                raise XpruneError(f"layer group {g!r} is empty")
            if not self.attention and g == "first":
                raise XpruneError("'first' is reserved by the layer-group composite; name the group otherwise")
            for n in names:
                if n not in modules:
                    raise XpruneError(f"layer group {g!r} names {n!r}, which the model does not have")
                if n in seen:
                    raise XpruneError(f"module {n!r} is in two layer groups: {seen[n]!r} and {g!r}")
                seen[n] = g
        if isinstance(space.rules, Mapping):
            missing = sorted(set(self.groups) - set(space.rules))
            extra = sorted(set(space.rules) - set(self.groups))
            if missing or extra:
                raise XpruneError(f"Space.rules must name exactly the layer groups {sorted(self.groups)}; "
                                  f"missing {missing}, unknown {extra}")
            self.choices = {g: list(space.rules[g]) for g in self.groups}
        else:
            self.choices = {g: list(space.rules) for g in self.groups}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "groups": self.groups, "choices": self.choices, "space": self.space.describe()}

    def suggest(self, trial) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """Sample a composite: ``(spec, resolver kwargs, criterion/score options)``."""
        sp = self.space
        rules = {}
        for g, choices in self.choices.items():
            rule = _categorical(trial, f"{g}.rule", choices)
            params = {}
            if "epsilon" in choices:
                params["epsilon"] = trial.suggest_float(f"{g}.epsilon", *sp.epsilon, log=True)
            if "gamma" in choices:
                params["gamma"] = trial.suggest_float(f"{g}.gamma", *sp.gamma, log=True)
            if "alpha-beta" in choices:
                params["alpha"] = _float(trial, f"{g}.alpha", *sp.alpha)
            rules[g] = _rule_spec(rule, params)
        options = {
            "aggregate": _categorical(trial, "aggregate", list(sp.aggregate)),
            "normalize": _categorical(trial, "normalize", [_norm_name(n) for n in sp.normalize]),
        }
        if self.attention:
            softmax = _categorical(trial, "softmax", list(sp.softmax))
            name_map = {n: rules[g] for g, names in self.groups.items() for n in names}
            spec: Any = ["attnlrp" if softmax == "attnlrp" else "cp-lrp", {"name_map": name_map}]
            kwargs: dict[str, Any] = {}
        else:
            spec, kwargs = rules, {"groups": self.groups}
        return spec, kwargs, options


def _categorical(trial, name, choices):
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)


def _float(trial, name, lo, hi, log=False):
    return lo if lo == hi else trial.suggest_float(name, lo, hi, log=log)


def _rule_spec(rule: str, p: Mapping[str, float]) -> list:
    if rule == "epsilon":
        return ["epsilon", {"epsilon": p["epsilon"]}]
    if rule == "gamma":
        return ["gamma", {"gamma": p["gamma"]}]
    if rule == "alpha-beta":
        return ["alpha-beta", {"alpha": p["alpha"], "beta": p["alpha"] - 1.0}]
    return ["zplus", {}]


def _resolve(spec: Any, kwargs: Mapping[str, Any]):
    from .lrp import composite
    from .lrp.files import _spec_from_json

    if isinstance(spec, list) and spec and spec[0] in ("attnlrp", "cp-lrp"):
        from .lrp import attention  # noqa: F401  (registers the attention presets)
    return composite(_spec_from_json(spec), **kwargs)


# ----------------------------------------------------------------------------- fast evaluation


def _prepare(data: Any, device, batch_size: int) -> Any:
    """Materialise data once: ``(X, y)`` tensors on ``device`` when possible, else a list of batches."""
    if data is None:
        raise DataError("tune needs reference and validation data")
    batches = list(_inputs.batches(data, batch_size))
    if not batches:
        raise DataError("got an empty data set")
    if all(isinstance(x, torch.Tensor) for x, _ in batches):
        X = torch.cat([x for x, _ in batches]).to(device)
        y = torch.cat([torch.as_tensor(t) for _, t in batches]).to(device)
        return X, y
    return [(_inputs.to_device(x, device), torch.as_tensor(y).to(device)) for x, y in batches]


def _row_hashes(data: Any) -> set[bytes]:
    if not (isinstance(data, tuple) and isinstance(data[0], torch.Tensor)):
        return set()
    X = data[0].detach().cpu().contiguous()
    return {hashlib.blake2b(X[i].numpy().tobytes(), digest_size=16).digest() for i in range(len(X))}


def _check_disjoint(reference: Any, validation: Any) -> None:
    ref, val = _row_hashes(reference), _row_hashes(validation)
    if not ref or not val:
        return
    n_val = len(val)
    shared = len(ref & val)
    if shared and (shared == len(ref) or shared > 0.1 * n_val):
        raise DataError(
            f"{shared} of the {n_val} validation samples are reference samples: tune on a validation split that is "
            "neither the reference set nor the test set (e.g. dataset.val)"
        )
    if shared:
        warnings.warn(f"{shared} validation samples equal reference samples (duplicates in the data?)", stacklevel=3)


class _Evaluator:
    """Everything a trial reuses: data, units, a working copy of the model and an accuracy cache."""

    def __init__(self, model: nn.Module, reference: Any, validation: Any, units: str, classes, rates,
                 batch_size: int = 256):
        from .units import UnitSet, build_graph, discover

        if not isinstance(model, nn.Module):
            raise XpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.reference = _prepare(reference, self.device, 128)
        self.validation = _prepare(validation, self.device, batch_size)
        _check_disjoint(self.reference, self.validation)
        self.classes = None if classes is None else [int(c) for c in classes]
        self.rates = [float(r) for r in rates]
        if not self.rates or any(not 0 <= r < 1 for r in self.rates):
            raise XpruneError(f"rates must be numbers in [0, 1), got {list(rates)}")
        if self.rates != sorted(self.rates):
            raise XpruneError("rates must be increasing (the curve is pruned early on its partial values)")
        example = _inputs.first_sample(next(iter(_inputs.batches(self.reference, 1)))[0])
        self.units = units if isinstance(units, UnitSet) else discover(model, example, units)
        self.kind = self.units.kind
        self.cache: dict[Any, float] = {}
        self.work = None
        if self.kind == "channels":  # mask in place on one working copy with one dependency graph
            self.work = copy.deepcopy(model).eval()
            self.original = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
            self.graph = build_graph(self.work, _inputs.to_device(_inputs.from_spec(self.units.example), self.device))

    def score(self, spec: Any, kwargs: Mapping[str, Any], aggregate: str, normalize: str) -> Scores:
        comp = _resolve(spec, kwargs)
        return score(self.model, self.reference, "lrp", self.units, composite=comp, aggregate=aggregate,
                     normalize=None if normalize == "none" else normalize)

    def accuracies(self, scores: Scores):
        """Yield ``(rate, validation accuracy)`` for the nested prunings of ``scores``."""
        for rate in self.rates:
            plan = select(scores, rate)
            key = tuple((n, tuple(v)) for n, v in plan.remove.items() if v)
            if key not in self.cache:
                self.cache[key] = self._accuracy(plan)
            yield rate, self.cache[key]

    def _accuracy(self, plan) -> float:
        from .surgery import _mask_group, _pruning_group, apply

        if not plan.n_removed:
            return accuracy(self.model, self.validation, classes=self.classes)
        if self.work is None:
            return accuracy(apply(self.model, plan, "mask"), self.validation, classes=self.classes)
        with torch.no_grad():
            state = self.work.state_dict()
            for k, v in self.original.items():
                state[k].copy_(v)
            for name in plan.remove:
                group = _pruning_group(self.graph, self.work, plan, name)
                if group is not None:
                    _mask_group(group)
        return accuracy(self.work, self.validation, classes=self.classes)


# ----------------------------------------------------------------------------- pruner


@functools.lru_cache(maxsize=None)
def _bound_pruner_cls():
    import optuna

    class BoundPruner(optuna.pruners.BasePruner):
        """Stop a trial whose optimistic AUC projection falls below the best finished AUC minus ``margin``.

        The intermediate value reported after rate :math:`k` is
        :math:`\\hat A_k = (\\sum_{j\\le k} a_j + (K-k) a_k)/K`, an upper bound of
        the final AUC when accuracy does not rise with the pruning rate;
        ``margin`` absorbs small rises. No trial is pruned before
        ``n_startup_trials`` trials have completed (default 8, the random
        start-up of the default samplers: optuna's GP sampler learns from
        complete trials only, so these are never cut short).
        """

        def __init__(self, margin: float = 0.01, n_startup_trials: int = 8):
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


def __getattr__(name: str):  # BoundPruner needs optuna, imported only when asked for
    if name == "BoundPruner":
        return _bound_pruner_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
        Number of trials by state (``complete``, ``pruned``, ``fail``, ...).
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
        return (f"TuneResult: best validation AUC {self.best_value:.4f} ({counts}; "
                f"{self.seconds_per_trial:.2f} s per trial)\n  composite: {self.composite}\n"
                f"  options: aggregate={self.options['aggregate']!r}, normalize={self.options['normalize']!r}")


# ----------------------------------------------------------------------------- tune


def _storage(storage: Any, out: Path):
    import optuna
    from optuna.storages import RDBStorage, RetryFailedTrialCallback  # noqa: F401

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
    except Exception as e:  # noqa: BLE001  (SQLAlchemy errors: bad URL, missing driver, unreachable server)
        raise XpruneError(f"cannot open the study storage {url!r}: {e}") from e


def _sampler(sampler: Any, seed: int):
    import optuna

    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, deterministic_objective=True, n_startup_trials=8)
        if sampler == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8)
        if sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
    raise XpruneError(f"sampler must be 'gp', 'tpe', 'random' or an optuna sampler; got {sampler!r}")


def _pruner(pruner: Any):
    import optuna

    if pruner is None or pruner is False:
        return optuna.pruners.NopPruner()
    if pruner == "bound":
        return _bound_pruner_cls()()
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5)
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    raise XpruneError(f"pruner must be 'bound', 'median', None or an optuna pruner; got {pruner!r}")


def tune(
    model: nn.Module,
    reference: Any,
    validation: Any,
    units: str = "channels",
    space: Space | Mapping[str, Any] | None = None,
    trials: int = 30,
    sampler: Any = "gp",
    storage: Any = None,
    study_name: str | None = None,
    out: str | Path = "xprune-tune",
    seed: int = 0,
    rates: Sequence[float] = DEFAULT_RATES,
    classes: Sequence[int] | None = None,
    timeout: float | None = None,
    progress: bool = True,
    pruner: Any = "bound",
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
    sampler : {"gp", "tpe", "random"} or optuna sampler
        ``"gp"``: optuna's Gaussian-process Bayesian optimisation (default);
        ``"tpe"``: multivariate tree-structured Parzen estimator. Seeded with
        ``seed`` plus the number of trials already in the study (a resumed
        study does not repeat the first run's random start-up points).
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
        Early stopping of hopeless trials on their partial curve (see the
        module docstring).

    Returns
    -------
    TuneResult

    Examples
    --------
    >>> res = xprune.tune(model, ref, ds.val, trials=20, out="tuned")      # doctest: +SKIP
    >>> xprune.evaluate.curve(model, ref, ds.test, "lrp", **res.options).auc  # doctest: +SKIP
    """
    try:
        import optuna
    except ImportError:  # pragma: no cover
        raise XpruneError("xprune.tune needs optuna >= 4: pip install optuna") from None
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise XpruneError(f"trials must be a positive int, got {trials!r}")
    if timeout is not None and timeout <= 0:
        raise XpruneError(f"timeout must be positive seconds, got {timeout!r}")
    out = Path(out)
    kind = units if isinstance(units, str) else units.kind
    design = _Design(Space.coerce(space), model, kind)
    ev = _Evaluator(model, reference, validation, units, classes, rates)
    n_rates = len(ev.rates)
    setup = {"design": design.describe(), "rates": ev.rates, "classes": ev.classes, "units": kind}
    setup_json = json.dumps(setup, sort_keys=True)

    from . import distributed

    def open_study():  # rank 0 owns the study and its storage (the only rank that writes)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        name = study_name or f"pxp-{kind}"
        study = optuna.create_study(storage=_storage(storage, out), study_name=name, direction="maximize",
                                    load_if_exists=True, pruner=_pruner(pruner))
        stored = study.user_attrs.get("setup")
        if stored is None:
            study.set_user_attr("setup", setup_json)
        elif stored != setup_json:
            raise XpruneError(f"study {name!r} in this storage was made with another setup (space, layer groups, "
                              "rates, classes or units); pass another study_name= or out=")
        study.sampler = _sampler(sampler, seed + len(study.trials))
        _requeue_interrupted(study)
        return study

    study = distributed.run_on_main(open_study, "to open the study")  # None on the other ranks
    if study is None:  # the other ranks of a process group score and evaluate their share of rank 0's trials
        _serve(ev, n_rates)
    else:
        _optimize(study, design, ev, trials, timeout, progress)
    result = distributed.run_on_main(lambda: _finish(study, design, ev, out), "to write the results")
    shared = distributed.broadcast_object(
        None if result is None else {f.name: getattr(result, f.name) for f in fields(TuneResult) if f.name != "study"})
    return result if result is not None else TuneResult(study=None, **shared)


class _TrialFailed(XpruneError):
    """A trial that failed on its own (bad composite, NaN scores): recorded as failed, the study goes on."""


def _optimize(study, design: _Design, ev: "_Evaluator", trials: int, timeout, progress: bool) -> None:
    """Rank 0 (or the only process): run the study; in a process group each trial is sent to every rank."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from . import distributed

    TS = optuna.trial.TrialState
    finished = (TS.COMPLETE, TS.PRUNED)
    n_rates = len(ev.rates)

    def objective(trial):
        params = design.suggest(trial)
        trial.set_user_attr("composite", params[0])
        trial.set_user_attr("options", params[2])
        distributed.broadcast_object(("trial", params))
        t0 = time.perf_counter()
        try:
            accs, stopped = _attempt(ev, params, trial, n_rates)
        except (KeyboardInterrupt, distributed.DistributedError):
            trial.set_user_attr("interrupted", True)  # not the composite's fault: run it again when resumed
            raise
        except XpruneError as e:
            raise _TrialFailed(f"{type(e).__name__}: {e}") from e
        trial.set_user_attr("accuracies", accs)
        trial.set_user_attr("seconds", time.perf_counter() - t0)
        if stopped is not None:
            raise optuna.TrialPruned(f"projected AUC below the best after rate {ev.rates[stopped]}")
        return sum(accs) / n_rates

    def report(study, t):
        if not progress:
            return
        done = len(study.get_trials(deepcopy=False, states=finished))
        best = max((x.value for x in study.get_trials(deepcopy=False, states=(TS.COMPLETE,))), default=float("nan"))
        sec = t.user_attrs.get("seconds", float("nan"))
        what = f"AUC {t.value:.4f}" if t.state == TS.COMPLETE else t.state.name.lower()
        print(f"[tune] trial {t.number} ({done}/{trials}): {what}, best {best:.4f}, {sec:.1f} s", flush=True)

    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    try:
        if remaining > 0:
            # a DistributedError (a peer died or timed out) is no _TrialFailed: it stops the study on every rank
            study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(_TrialFailed,),
                           callbacks=[MaxTrialsCallback(trials, states=finished), report], gc_after_trial=False)
    except BaseException as e:
        if not isinstance(e, distributed.DistributedError):
            import contextlib

            with contextlib.suppress(distributed.DistributedError):  # the other ranks stop instead of waiting
                distributed.broadcast_object(("abort", f"{type(e).__name__}: {e}"))
        raise
    distributed.broadcast_object(None)  # no more trials


def _serve(ev: "_Evaluator", n_rates: int) -> None:
    """Ranks other than 0: score and evaluate each trial rank 0 sends, until it sends ``None``."""
    from . import distributed

    while True:
        message = distributed.broadcast_object()
        if message is None:
            return
        if message[0] == "abort":
            raise XpruneError(f"rank 0 stopped tuning, so every rank stops: {message[1]}")
        try:
            _attempt(ev, message[1], None, n_rates)
        except distributed.DistributedError:
            raise
        except XpruneError:  # the trial failed on every rank (see _attempt); rank 0 records it and goes on
            pass


def _attempt(ev: "_Evaluator", params, trial, n_rates: int):
    """:func:`_evaluate`; in a process group, a trial that fails on one rank fails on every rank."""
    from . import distributed

    try:
        result, error = _evaluate(ev, params, trial, n_rates), None
    except distributed.DistributedError:
        raise
    except XpruneError as e:
        result, error = None, e
    if distributed.is_active():  # every rank takes the same branch: all succeeded, or the trial failed
        messages = distributed.gather_object(None if error is None else f"{type(error).__name__}: {error}")
        failed = [(r, m) for r, m in enumerate(messages) if m is not None]
        if failed and error is None:
            error = XpruneError(f"rank {failed[0][0]} failed in this trial: {failed[0][1]}")
    if error is not None:
        raise error
    return result


def _evaluate(ev: "_Evaluator", params, trial, n_rates: int) -> tuple[list[float], int | None]:
    """Score one composite and measure its validation curve (each rank of a process group its share).

    Returns the accuracies and the index of the rate after which the trial
    was pruned (``None``: complete). Only rank 0 holds the optuna ``trial``;
    its pruning decisions are broadcast so that every rank takes the same branch.
    """
    from . import distributed

    spec, kwargs, options = params
    scores = ev.score(spec, kwargs, **options)
    if distributed.is_active():  # rank 0's scores everywhere: the same rankings, prunings and cache keys
        scores = scores._replace(distributed.broadcast(dict(scores)))
    accs: list[float] = []
    for k, (_, a) in enumerate(ev.accuracies(scores)):
        accs.append(a)
        stop = False
        if trial is not None:
            trial.report((sum(accs) + (n_rates - len(accs)) * a) / n_rates, k)
            stop = len(accs) < n_rates and trial.should_prune()
        if len(accs) < n_rates and distributed.broadcast_object(stop):
            return accs, k
    return accs, None


def _requeue_interrupted(study) -> None:
    """Enqueue again, once, the parameters of trials stopped by Ctrl-C (marked failed by optuna)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if (t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("interrupted")
                and t.number not in retried and "retry_of" not in t.user_attrs):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)


def _finish(study, design: _Design, ev: _Evaluator, out: Path) -> TuneResult:
    import optuna

    from .lrp.files import save_composite

    TS = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TS.COMPLETE]
    if not complete:
        raise XpruneError(f"study {study.study_name!r} has no complete trial yet (states: "
                          f"{_counts(all_trials)}); run more trials or check the failures in the log")
    best = study.best_trial
    spec, options = best.user_attrs["composite"], best.user_attrs["options"]
    kwargs = {} if design.attention else {"groups": design.groups}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "best_composite.json"
    normalize = None if options["normalize"] == "none" else options["normalize"]
    save_composite(path, spec, kwargs=kwargs, options={"aggregate": options["aggregate"], "normalize": normalize},
                   meta={"study": study.study_name, "trial": best.number, "validation_auc": best.value,
                         "rates": ev.rates, "units": ev.kind, "source": "xprune.tune (PXP, Hatefi et al. 2024)"})
    secs = [t.user_attrs["seconds"] for t in all_trials if t.state in (TS.COMPLETE, TS.PRUNED)
            and "seconds" in t.user_attrs]
    curve = Curve("lrp (tuned)", list(ev.rates), list(best.user_attrs["accuracies"]),
                  meta={"units": ev.kind, "split": "validation", "trial": best.number})
    files = {"composite": path}
    files.update(_plots(study, out))
    summary = {
        "study": study.study_name, "best_trial": best.number, "best_value": best.value, "best_params": best.params,
        "composite": str(path), "options": {"aggregate": options["aggregate"], "normalize": normalize},
        "counts": _counts(all_trials), "seconds_per_trial": statistics.fmean(secs) if secs else None,
        "seconds_complete_trial": statistics.fmean([t.user_attrs["seconds"] for t in complete
                                                    if "seconds" in t.user_attrs] or [math.nan]),
        "best_curve": curve.to_dict(), "setup": json.loads(study.user_attrs["setup"]),
        "trials": [{"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                    "seconds": t.user_attrs.get("seconds")} for t in all_trials],
    }
    atomic_write(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    files["summary"] = out / "summary.json"
    return TuneResult(study, best.value, dict(best.params), path,
                      {"composite": str(path), "aggregate": options["aggregate"], "normalize": normalize},
                      curve, out, _counts(all_trials), statistics.fmean(secs) if secs else math.nan, files)


def _counts(trials) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    return out


def _plots(study, out: Path) -> dict[str, Path]:
    """History (AUC per trial, best so far) and parameter importances, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    TS = optuna.trial.TrialState
    files: dict[str, Path] = {}
    trials = study.get_trials(deepcopy=False)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    done = [t for t in trials if t.state == TS.COMPLETE]
    pruned = [t for t in trials if t.state == TS.PRUNED and t.intermediate_values]
    ax.scatter([t.number for t in done], [t.value for t in done], s=18, label="complete (validation AUC)")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned], marker="x",
                   s=18, color="grey", label="pruned (projected AUC at stop)")
    best, xs, ys = -math.inf, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("AUC (accuracy vs pruning rate)")
    ax.set_title(f"study {study.study_name}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    files["history"] = _savefig(fig, out / "history.png")
    plt.close(fig)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study)
    except Exception as e:  # noqa: BLE001  (too few trials, constant parameters)
        warnings.warn(f"no parameter importances: {e}", stacklevel=3)
        return files
    if imp:
        names = list(imp)[::-1]
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(names) + 1.2))
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (optuna's default evaluator, normalised)")
        ax.set_title("parameter importances")
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        files["importances"] = _savefig(fig, out / "importances.png")
        plt.close(fig)
    return files


def _savefig(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())
    return path
