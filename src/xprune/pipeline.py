"""Pipelines on top of score -> select -> apply: :func:`prune` in one call, and accuracy-vs-rate :func:`curve`.

The curve follows Hatefi et al. (2024, "Pruning By Explaining Revisited"):
relevance is computed once on the unpruned model; the nested prunings at each
rate (0, 0.05, ..., 0.95 by default) are evaluated without fine-tuning; the
area under the curve is the mean accuracy over the rates.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import _inputs, distributed
from .errors import DataError, XpruneError
from .measure import accuracy
from .plan import Plan
from .scores import Scores, score
from .select import select
from .surgery import apply, blamed_modules, evaluation_meta, evaluation_mode, inexact_masks

__all__ = ["prune", "default_mode", "curve", "Curve", "DEFAULT_RATES"]

DEFAULT_RATES = tuple(round(0.05 * i, 2) for i in range(20))


def default_mode(plan: Plan) -> str:
    """``"mask"`` for single weights (they cannot be removed physically), ``"remove"`` otherwise."""
    return "mask" if plan.kind == "weights" else "remove"


def prune(
    model: nn.Module,
    data: Any,
    criterion: Any = "lrp",
    ratio: float = 0.5,
    *,
    units: str = "channels",
    mode: str | None = None,
    scope: str = "global",
    target: Any = "label",
    normalize: Any = "default",
    min_keep: int | float = 1,
    round_to: int | None = None,
    inplace: bool = False,
    return_plan: bool = False,
    **options: Any,
):
    """Score, select and apply in one call.

    Equivalent to ``apply(model, select(score(model, data, criterion, units, ...), ratio, ...), mode)``.
    ``mode`` defaults to ``"remove"`` for channels and ``"mask"`` for single weights.
    Returns the pruned model, or ``(pruned, plan)`` with ``return_plan=True``.
    """
    scores = score(model, data, criterion, units, target=target, normalize=normalize, **options)
    plan = select(scores, ratio, scope=scope, min_keep=min_keep, round_to=round_to)
    if mode is None:
        mode = default_mode(plan)
    pruned = apply(model, plan, mode, inplace=inplace)
    return (pruned, plan) if return_plan else pruned


@dataclass
class Curve:
    """Accuracy against pruning rate for one criterion.

    ``auc`` is the mean accuracy over ``rates`` (Hatefi et al. 2024).
    """

    criterion: str
    rates: list[float]
    accuracies: list[float]
    removed: list[int] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def auc(self) -> float:
        return sum(self.accuracies) / len(self.accuracies)

    def at(self, rate: float) -> float:
        """Accuracy at the rate closest to ``rate``."""
        i = min(range(len(self.rates)), key=lambda j: abs(self.rates[j] - rate))
        return self.accuracies[i]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auc"] = self.auc
        return d


def curve(
    model: nn.Module,
    reference: Any,
    test: Any,
    criterion: Any = "lrp",
    *,
    rates: Sequence[float] = DEFAULT_RATES,
    units: str = "channels",
    scope: str = "global",
    classes: Sequence[int] | None = None,
    scores: Scores | None = None,
    fine_tune: Callable[[nn.Module], nn.Module | None] | None = None,
    mode: str = "mask",
    progress: bool = False,
    device: Any = None,
    checkpoint: Any = None,
    resume: bool = False,
    **options: Any,
) -> Curve:
    """Accuracy of ``model`` pruned at each rate, without fine-tuning (unless ``fine_tune`` is given).

    Relevance is computed once on the unpruned model from ``reference``;
    each rate prunes the lowest-ranked units of that single ranking (nested
    sets). Pruning is simulated by masking by default (identical accuracies to
    removal in eval mode, faster); ``mode="remove"`` prunes physically. Where
    masking would not equal removal (a LayerNorm or GroupNorm across the pruned
    channels, e.g. ConvNeXt; see :func:`xprune.surgery.inexact_masks`), the
    rates touching those groups are pruned physically: ``meta["mode"]`` says
    how the pruned rates were evaluated (``"mask"``, ``"remove"`` or
    ``"mask+remove"``), ``meta["modes"]`` per rate (``None``: nothing
    removed), ``meta["inexact_mask"]`` the modules that ruled masking out.

    Parameters
    ----------
    reference : data
        The reference samples the criterion sees (e.g. 10 per class).
    test : data
        Where accuracy is measured (never the reference samples).
    classes : optional
        Domain restriction: accuracy over these classes only.
    scores : Scores, optional
        Precomputed scores (then ``criterion`` only names the curve).
    fine_tune : callable, optional
        ``fine_tune(pruned_model)`` applied after pruning at each rate (the
        evaluation hook schedules use); may return a new model.
    device : str or torch.device, optional
        Score and evaluate on this device (the model is moved there for the
        call and back afterwards). In a process group the test samples are
        split across ranks (see :mod:`xprune.distributed`).
    checkpoint : str or path, optional
        A JSON file where the accuracy at each rate is saved (atomically) as
        soon as it is measured, so an interrupted curve can be resumed.
    resume : bool
        Continue the curve saved in ``checkpoint``: the rates already measured
        are skipped (the settings must match; scoring is deterministic on the
        CPU, so the result equals an uninterrupted run). Without ``resume`` an
        existing checkpoint is an error, never overwritten.
    **options :
        Passed to :func:`xprune.score` (criterion options, ``target``, ``normalize``).
    """
    rates = [float(r) for r in rates]
    if not rates or any(not 0 <= r < 1 for r in rates):
        raise XpruneError(f"rates must be numbers in [0, 1), got {rates}")
    ckpt = _CurveCheckpoint(
        checkpoint,
        resume,
        criterion,
        scores,
        units=units,
        scope=scope,
        mode=mode,
        classes=None if classes is None else [int(c) for c in classes],
        fine_tune=fine_tune is not None,
        options=options,
    )
    with distributed.on_device(model, device):
        if scores is None and not ckpt.complete(rates):
            if classes is not None:
                _check_reference_classes(reference, classes)
            with warnings.catch_warnings():
                if classes is not None:  # a domain restriction: classes outside it are meant to be missing
                    warnings.filterwarnings("ignore", message="the reference samples cover")
                scores = score(model, reference, criterion, units, **options)
        if scores is not None:
            ckpt.meta = {
                "name": scores.criterion if not isinstance(criterion, str) else criterion,
                "units": scores.kind,
                "total": scores.total,
            }
        inexact = inexact_masks(model, scores) if mode == "mask" and scores is not None else {}
        if inexact:  # kept with the checkpoint, for a resumed curve that needs no scores
            ckpt.meta["inexact_mask"] = blamed_modules(inexact)
        name = ckpt.meta["name"]
        accs, removed, modes = [], [], []
        iterator: Iterable[float] = rates
        if progress and distributed.is_main():
            from ._progress import track

            iterator = track(rates, f"curve ({name})", unit="rates")
        for r in iterator:
            if r in ckpt.done:
                acc, n_removed, used = ckpt.done[r]
            else:
                assert scores is not None  # only a complete checkpoint skips the scoring
                plan = select(scores, r, scope=scope, warn=False)  # a sweep runs to ruinous rates on purpose
                used = evaluation_mode(mode, plan, inexact) if plan.n_removed else None
                # an empty plan still copies when fine-tuning follows: the caller's model must not change
                pruned = apply(model, plan, used or mode) if plan.n_removed or fine_tune is not None else model
                if fine_tune is not None:
                    tuned = fine_tune(pruned)
                    pruned = tuned if tuned is not None else pruned
                acc, n_removed = accuracy(pruned, test, classes=classes), plan.n_removed
                ckpt.record(r, acc, n_removed, used)
            accs.append(acc)
            removed.append(n_removed)
            modes.append(used)
    meta = {
        "units": ckpt.meta["units"],
        "scope": scope,
        "total": ckpt.meta["total"],
        **evaluation_meta(modes, mode, ckpt.meta.get("inexact_mask")),
    }
    return Curve(name, rates, accs, removed, meta)


def _check_reference_classes(reference: Any, classes: Sequence[int]) -> None:
    """Refuse a domain restriction naming classes the reference samples do not contain."""
    seen: set[int] = set()
    for _, y in _inputs.batches(reference, 1024):
        seen.update(torch.as_tensor(y).reshape(-1).tolist())
    missing = sorted({int(c) for c in classes} - seen)
    if missing:
        raise DataError(
            f"the domain restriction names classes {missing} but the reference samples hold none "
            "of them, so their relevance cannot be measured; draw reference samples of those "
            "classes, e.g. xprune.data.reference_samples(split, n_per_class, classes=classes)"
        )


class _CurveCheckpoint:
    """Per-rate results of :func:`curve` saved to a JSON file (atomically, on rank 0) as they come."""

    def __init__(self, path, resume, criterion, scores, **settings):
        import json
        from pathlib import Path

        self.path = None if path is None else Path(path)
        self.done: dict[float, tuple[float, int, str | None]] = {}
        self.meta: dict[str, Any] = {}
        crit = (
            scores.criterion
            if scores is not None
            else (criterion if isinstance(criterion, str) else type(criterion).__name__)
        )
        settings["options"] = json.loads(json.dumps(settings["options"], default=repr))
        self.settings = {"criterion": crit, **settings}
        if self.path is None:
            if resume:
                raise XpruneError("resume=True needs the checkpoint= file of the curve to continue")
            return
        if not self.path.exists():
            return
        if not resume:
            raise XpruneError(
                f"{self.path} holds a curve in progress; pass resume=True (CLI: --resume) to "
                "continue it, or delete it to start afresh"
            )
        try:
            saved = json.loads(self.path.read_text())
            if saved.get("xprune") != "curve-checkpoint":
                raise ValueError("not a curve checkpoint")
            diff = {k: (saved["settings"].get(k), v) for k, v in self.settings.items() if saved["settings"].get(k) != v}
            # (accuracy, units removed, mode used); checkpoints of older versions lack the mode
            done = {float(r): (float(v[0]), int(v[1]), v[2] if len(v) > 2 else None) for r, v in saved["done"].items()}
            meta = dict(saved["meta"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise XpruneError(
                f"curve checkpoint {self.path} cannot be read ({e}): it is damaged or not "
                "xprune's; delete it to start afresh"
            ) from e
        if diff:
            raise XpruneError(
                f"the curve in {self.path} was made with other settings (saved, given): {diff}; "
                "resume with the same settings or use another checkpoint"
            )
        self.done, self.meta = done, meta

    def complete(self, rates) -> bool:
        return bool(self.meta) and all(r in self.done for r in rates)

    def record(self, rate: float, acc: float, n_removed: int, mode: str | None = None) -> None:
        import json

        from ._io import atomic_write

        self.done[rate] = (acc, n_removed, mode)
        if self.path is not None and distributed.is_main():
            atomic_write(
                self.path,
                json.dumps(
                    {
                        "xprune": "curve-checkpoint",
                        "settings": self.settings,
                        "meta": self.meta,
                        "done": {repr(r): v for r, v in self.done.items()},
                    },
                    indent=1,
                ),
            )
