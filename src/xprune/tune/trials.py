r"""Running the trials of a PXP study, in one process or across the ranks of a process group.

:func:`optimize` (rank 0, or the only process) runs the optuna study for
``trials`` finished trials within ``timeout``: each trial samples a composite
from the :class:`~xprune.tune.space.Design`, scores it and measures its
validation curve with the :class:`~xprune.tune.evaluator.Evaluator`,
reporting after each rate the optimistic projection
:math:`\hat A_k = (\sum_{j \le k} a_j + (K - k) a_k) / K` for the pruner.
Under optuna's GP sampler, which learns from complete trials only, a trial the
pruner stops is recorded as complete with that projection as its value (an
upper bound of its AUC, below the best AUC; user attribute ``"stopped_after"``).
:func:`serve` is what the other ranks run: they score and evaluate their share
of each trial rank 0 broadcasts. :func:`requeue_interrupted` enqueues again
the trials stopped by Ctrl-C. Part of :mod:`xprune.tune` (PXP, Hatefi et al.
2024, arXiv:2408.12568); see ``docs/tune.md``.
"""

from __future__ import annotations

import time

from ..errors import XpruneError
from ..scores import Scores
from .evaluator import Evaluator
from .space import Design

__all__ = ["optimize", "serve", "requeue_interrupted"]


class _TrialFailed(XpruneError):
    """A trial that failed on its own (bad composite, NaN scores): recorded as failed, the study goes on."""


def optimize(study, design: Design, ev: Evaluator, trials: int, timeout, progress: bool) -> None:
    """Rank 0 (or the only process): run the study; in a process group each trial is sent to every rank."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from .. import distributed

    TS = optuna.trial.TrialState
    finished = (TS.COMPLETE, TS.PRUNED)
    n_rates = len(ev.rates)
    gp = isinstance(study.sampler, optuna.samplers.GPSampler)

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
            bound = (sum(accs) + (n_rates - len(accs)) * accs[-1]) / n_rates  # the value reported at the stop
            if gp and bound < max(
                (t.value for t in study.get_trials(deepcopy=False, states=(TS.COMPLETE,))), default=float("inf")
            ):
                # optuna's GP fits complete trials only: the bound tells it this composite is worse than the best
                trial.set_user_attr("stopped_after", ev.rates[stopped])
                return bound
            raise optuna.TrialPruned(f"projected AUC below the best after rate {ev.rates[stopped]}")
        return sum(accs) / n_rates

    def report(study, t):
        if not progress:
            return
        done = len(study.get_trials(deepcopy=False, states=finished))
        best = max((x.value for x in study.get_trials(deepcopy=False, states=(TS.COMPLETE,))), default=float("nan"))
        sec = t.user_attrs.get("seconds", float("nan"))
        what = f"AUC {t.value:.4f}" if t.state == TS.COMPLETE else t.state.name.lower()
        if "stopped_after" in t.user_attrs:
            what = f"pruned (projected AUC {t.value:.4f} recorded for the GP)"
        print(f"[tune] trial {t.number} ({done}/{trials}): {what}, best {best:.4f}, {sec:.1f} s", flush=True)

    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    try:
        if remaining > 0:
            # a DistributedError (a peer died or timed out) is no _TrialFailed: it stops the study on every rank
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=timeout,
                catch=(_TrialFailed,),
                callbacks=[MaxTrialsCallback(trials, states=finished), report],
                gc_after_trial=False,
            )
    except BaseException as e:
        if not isinstance(e, distributed.DistributedError):
            import contextlib

            with contextlib.suppress(distributed.DistributedError):  # the other ranks stop instead of waiting
                distributed.broadcast_object(("abort", f"{type(e).__name__}: {e}"))
        raise
    distributed.broadcast_object(None)  # no more trials


def serve(ev: Evaluator, n_rates: int) -> None:
    """Ranks other than 0: score and evaluate each trial rank 0 sends, until it sends ``None``."""
    from .. import distributed

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


def _attempt(ev: Evaluator, params, trial, n_rates: int):
    """:func:`_evaluate`; in a process group, a trial that fails on one rank fails on every rank."""
    from .. import distributed

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


def _evaluate(ev: Evaluator, params, trial, n_rates: int) -> tuple[list[float], int | None]:
    """Score one composite and measure its validation curve (each rank of a process group its share).

    Returns the accuracies and the index of the rate after which the trial
    was pruned (``None``: complete). Only rank 0 holds the optuna ``trial``;
    its pruning decisions are broadcast so that every rank takes the same branch.
    """
    from .. import distributed

    spec, kwargs, options = params
    scores = ev.score(spec, kwargs, **options)
    if distributed.is_active():  # rank 0's scores everywhere: the same rankings, prunings and cache keys
        scores = Scores(
            distributed.broadcast(dict(scores)),
            kind=scores.kind,
            criterion=scores.criterion,
            members=scores.members,
            roots=scores.roots,
            example=scores.example,
            meta=scores.meta,
            parts=scores.parts,
        )
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


def requeue_interrupted(study) -> None:
    """Enqueue again, once, the parameters of trials stopped by Ctrl-C (marked failed by optuna)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if (
            t.state == optuna.trial.TrialState.FAIL
            and t.user_attrs.get("interrupted")
            and t.number not in retried
            and "retry_of" not in t.user_attrs
        ):
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
