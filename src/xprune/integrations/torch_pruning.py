"""xprune criteria as a Torch-Pruning importance.

Torch-Pruning's pruners ask an *importance* for one score per channel of each
coupled group. :class:`XpruneImportance` answers with xprune's scores, so a
Torch-Pruning user switches to any xprune criterion with one line::

    import torch_pruning as tp
    from xprune.integrations.torch_pruning import XpruneImportance

    imp = XpruneImportance("lrp", (X_ref, y_ref), composite="zplus")   # was: tp.importance.TaylorImportance()
    pruner = tp.pruner.MetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.3,
                                  ignored_layers=[model.classifier])
    pruner.step()

Scores are computed once for the whole model and cached; they are recomputed
when the model changes (a parameter's shape or in-place version, e.g. after a
pruning step or an optimiser step). With ``global_pruning=True`` a pruner step
scores the model once; with local (per-layer) pruning Torch-Pruning removes
each group's channels before asking for the next group, so the model is
rescored for every group (each judged on the current model, at a cost).
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from .. import _inputs
from ..errors import XpruneError
from ..scores import Scores, score
from ..units import UnitSet, discover

__all__ = ["XpruneImportance"]


class XpruneImportance(tp.importance.Importance):
    """A Torch-Pruning importance computed by an xprune criterion.

    Parameters
    ----------
    criterion : str, Criterion class or instance, default "lrp"
        Any criterion of :func:`xprune.criteria.available` (``"lrp"``,
        ``"taylor"``, ``"singe"``, ...).
    data : data
        Reference samples the criterion sees: an ``(X, y)`` pair, an iterable
        of ``(inputs, labels)`` batches or an :class:`xprune.data.Split`. May be
        ``None`` for data-free criteria (``"weight"``, ``"l2"``, ``"random"``);
        then ``example_inputs`` is required.
    model : nn.Module, optional
        The model being pruned. Default: taken from the group's dependency
        graph (Torch-Pruning >= 1.2 records it).
    example_inputs : optional
        Inputs used to trace the model; default the first sample of ``data``.
    **options
        Passed to :func:`xprune.score` (``composite=``, ``target=``,
        ``normalize=``, ``n_steps=``, ``seed=`` ...).

    Notes
    -----
    ``imp(group)`` returns a 1-D float tensor with one score per index of
    ``group[0].idxs`` (channels of the group's root layer), higher meaning
    more important. Groups xprune does not prune (the output layer, layers
    its unit discovery leaves out) get ``None``, which Torch-Pruning's pruners
    skip; pass the classifier in ``ignored_layers`` as usual.
    """

    def __init__(
        self,
        criterion: Any = "lrp",
        data: Any = None,
        *,
        model: nn.Module | None = None,
        example_inputs: Any = None,
        **options: Any,
    ):
        if data is None and example_inputs is None:
            raise XpruneError("XpruneImportance needs reference data (or example_inputs for a data-free criterion)")
        self.criterion, self.data, self.model = criterion, data, model
        self.example_inputs, self.options = example_inputs, options
        self._key: Any = None
        self._scores: Scores | None = None
        self._units: UnitSet | None = None
        self._names: dict[nn.Module, str] = {}

    @staticmethod
    def _signature(model: nn.Module) -> tuple:
        return (id(model), *((n, tuple(p.shape), p._version) for n, p in model.named_parameters()))

    def scores(self, model: nn.Module) -> Scores:
        """xprune's scores of ``model`` (cached until the model changes)."""
        key = self._signature(model)
        if key != self._key or self._scores is None:
            example = self.example_inputs
            if example is None:
                x, _ = next(iter(_inputs.batches(self.data, 1)), (None, None))
                if x is None:
                    raise XpruneError("XpruneImportance: the reference data is empty")
                example = _inputs.first_sample(x)
            self._units = discover(model, example)
            self._scores = score(model, self.data, self.criterion, self._units, example_inputs=example, **self.options)
            self._names = {m: n for n, m in model.named_modules()}
            self._key = key
        return self._scores

    def _model_of(self, group) -> nn.Module:
        if self.model is not None:
            return self.model
        dg = getattr(group, "_DG", None)
        model = getattr(dg, "model", None)
        if model is None:
            raise XpruneError("cannot find the model from the Torch-Pruning group; pass model= to XpruneImportance")
        return model

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        model = self._model_of(group)
        scores = self.scores(model)
        dep, idxs = group[0].dep, [int(i) for i in group[0].idxs]
        name = self._names.get(dep.target.module)
        if name is None:
            return None
        assert self._units is not None  # set by self.scores(model) above
        for unit_group in self._units:
            if name in unit_group.producers:  # channel -> unit (mirrored grouped-conv units: channel % size)
                units = unit_group.units_of(name, dep.target.module.weight.shape[0])
            elif name == unit_group.root:
                units = torch.arange(unit_group.size)
            else:
                continue
            values = scores[unit_group.name].float()
            picked = units[idxs]
            if (picked < 0).any():
                raise XpruneError(f"channels {idxs} of {name!r} are not all units of xprune group {unit_group.name!r}")
            return values[picked].to(dep.target.module.weight.device)
        return None
