"""Fast evaluation of a candidate composite: relevance scores and the validation accuracy-vs-rate curve.

:class:`Evaluator` prepares once what every trial of :func:`xprune.tune.tune`
reuses: the reference and validation data (on the model's device, checked to
be disjoint), the unit discovery, a working copy of the model with its
dependency graph (pruning is masking, restored before each rate), and a cache
of validation accuracies keyed by the set of removed units. Plans touching a
group whose masking would not equal its removal (a LayerNorm or GroupNorm
across its channels, see :func:`xprune.surgery.inexact_masks`) are evaluated
on a physically pruned copy instead; :attr:`Evaluator.inexact` lists those
groups and :attr:`Evaluator.modes` how each cached plan was evaluated. Parameters:
``model``, ``reference``, ``validation``, ``units``, ``classes`` (domain
restriction), ``rates`` (increasing, in [0, 1)), ``batch_size``, ``scope``
(ranking scope of the prunings), ``precision`` and ``options`` (fixed options
of the lrp criterion, and ``target``) of the scoring. Part of
:mod:`xprune.tune` (PXP, Hatefi et al. 2024, arXiv:2408.12568); see
``docs/tune.md``.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..evaluate import accuracy
from ..scores import Scores, score
from ..select import select

__all__ = ["Evaluator"]


def _resolve(spec: Any, kwargs: Mapping[str, Any]):
    """The composite of a sampled spec (a dict of layer groups, or ``["attnlrp" | "cp-lrp", kwargs]``)."""
    from ..lrp import composite
    from ..lrp.files import spec_from_json

    return composite(spec_from_json(spec), **kwargs)


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


class Evaluator:
    """Everything a trial reuses: data, units, a working copy of the model and an accuracy cache."""

    def __init__(
        self,
        model: nn.Module,
        reference: Any,
        validation: Any,
        units: str,
        classes,
        rates,
        batch_size: int = 256,
        *,
        scope: str = "global",
        precision: str | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        from ..surgery import inexact_masks
        from ..units import UnitSet, build_graph, discover

        if not isinstance(model, nn.Module):
            raise XpruneError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if scope not in ("global", "local"):
            raise XpruneError(f"scope must be 'global' or 'local', got {scope!r}")
        self.model = model
        self.scope, self.precision = scope, precision
        self.options = dict(options or {})
        searched = sorted({"composite", "aggregate", "normalize"} & set(self.options))
        if searched:
            raise XpruneError(f"options {searched} are what tuning searches; set their choices with space=")
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
        #: how each cached plan was evaluated: "mask" (the fast path) or "remove" (masking would not be exact)
        self.modes: dict[Any, str] = {}
        #: groups whose masking is not their removal, with the modules to blame (see xprune.surgery.inexact_masks)
        self.inexact = inexact_masks(model, self.units)
        self.work = None
        if self.kind == "channels":  # mask in place on one working copy with one dependency graph
            self.work = copy.deepcopy(model).eval()
            self.original = {k: v.detach().clone() for k, v in self.work.state_dict().items()}
            self.graph = build_graph(self.work, _inputs.to_device(_inputs.from_spec(self.units.example), self.device))

    def score(self, spec: Any, kwargs: Mapping[str, Any], aggregate: str, normalize: str) -> Scores:
        comp = _resolve(spec, kwargs)
        return score(
            self.model,
            self.reference,
            "lrp",
            self.units,
            composite=comp,
            aggregate=aggregate,
            normalize=None if normalize == "none" else normalize,
            precision=self.precision,
            **self.options,
        )

    def accuracies(self, scores: Scores):
        """Yield ``(rate, validation accuracy)`` for the nested prunings of ``scores``."""
        for rate in self.rates:
            plan = select(scores, rate, scope=self.scope, warn=False)  # ruinous rates on purpose: no warnings
            key = tuple((n, tuple(v)) for n, v in plan.remove.items() if v)
            if key not in self.cache:
                self.cache[key] = self._accuracy(plan, key)
            yield rate, self.cache[key]

    def _accuracy(self, plan, key=None) -> float:
        from ..surgery import apply, evaluation_mode, mask_groups

        if not plan.n_removed:
            return accuracy(self.model, self.validation, classes=self.classes)
        mode = self.modes[key] = evaluation_mode("mask", plan, self.inexact)
        if self.work is None or mode == "remove":
            return accuracy(apply(self.model, plan, mode), self.validation, classes=self.classes)
        with torch.no_grad():
            state = self.work.state_dict()
            for k, v in self.original.items():
                state[k].copy_(v)
            mask_groups(self.work, self.graph, plan, exact=False)  # exact: checked above against self.inexact
        return accuracy(self.work, self.validation, classes=self.classes)
