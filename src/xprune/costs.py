r"""Exact MACs and parameter counts of a model as a function of the units removed.

:class:`CostModel` traces the model once (Torch-Pruning's dependency graph,
with Torch-Pruning's operation counter run on every call of every counted
layer in the same forward pass) and records, for each counted quantity, how
it depends on the channels that stay:

- a convolution or linear layer costs
  :math:`A\,i\,o + B\,o` MACs (:math:`i, o` its kept input and output
  channels; :math:`B` the bias) and as many parameters (weight :math:`i\,o`,
  bias :math:`o`);
- a depthwise convolution, norm, activation, pooling or upsampling layer costs
  :math:`B\,c` (:math:`c` its kept channels), and so do the parameters of a
  norm or of a bare parameter pruned along one dimension;
- everything no unit reaches is a constant.

Each unit of each group removes known channels from each of these layers
(one channel of a conv, the :math:`h \cdot w` features it becomes after a
flatten, a slice of a concatenation), so the MACs and parameters after
removing any set of units are exact: the counter's figure for the pruned
model (1 multiply-add = 1 MAC). Removing a channel cuts the MACs of the layer
producing it *and* of the layer reading it; the bilinear terms count the
overlap once, which per-unit costs added up cannot (their sum over all units
is about twice the model's MACs).

Layers the counter counts but whose cost is not linear in their channels
(RNNs, attention modules) are modelled as linear in their kept channels when
a unit reaches them; :attr:`CostModel.exact` is then ``False``.

:func:`xprune.select` uses this model for ``by="macs"`` and ``by="params"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch_pruning.utils import op_counter as _counter

from . import _inputs
from .errors import XpruneError
from .units import _is_depthwise, build_graph

#: Quantities a :class:`CostModel` predicts.
METRICS = ("macs", "params")

_BILINEAR = (nn.modules.conv._ConvNd, nn.Linear)
_LINEAR_IN_CHANNELS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.ReLU,
    nn.PReLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.ReLU6,
    nn.GELU,
    nn.Upsample,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
)


def check_metric(by: str) -> None:
    if by not in METRICS:
        raise XpruneError(f"by must be 'macs' or 'params', got {by!r}")


class CostModel:
    """MACs and parameters of ``model`` after removing any units of its groups (see the module docs).

    Parameters
    ----------
    model : nn.Module
        The model the scores (or units, or plan) describe. Not modified.
    groups : Scores, UnitSet or Plan
        Which groups of units there are (names, sizes, roots, example inputs).
    example_inputs : optional
        One sample; default: zeros shaped as recorded in ``groups.example``.

    Attributes
    ----------
    base : dict
        ``{"macs": ..., "params": ...}`` of the full model (Torch-Pruning's counter).
    sizes : dict
        Group name -> number of units.
    exact : bool
        ``False`` when a counted layer whose cost is not linear in its channels
        (RNN, attention) is reached by a unit (then its cost is approximated).
    """

    def __init__(self, model: nn.Module, groups: Any, example_inputs: Any = None):
        kind = getattr(groups, "kind", "channels")
        if example_inputs is None:
            if getattr(groups, "example", None) is None:
                raise XpruneError("the scores record no example inputs; pass example_inputs=")
            example_inputs = _inputs.from_spec(groups.example)
        if hasattr(groups, "groups"):  # UnitSet
            self.sizes = {g.name: g.size for g in groups}
            roots = {g.name: g.root for g in groups}
        elif hasattr(groups, "remove"):  # Plan
            self.sizes = dict(groups.sizes)
            roots = dict(groups.roots)
        else:  # Scores
            self.sizes = {k: v.numel() for k, v in groups.items()}
            roots = dict(groups.roots)
        self.kind = kind
        self.exact = True
        # entries: in-side key, out-side key, I, O and per metric coefficients [A, B, C] of A*i*o + B*o + C*i
        self._entries: dict[tuple, dict] = {}
        self._const = {"macs": 0.0, "params": 0.0}
        if kind == "channels":
            self._trace(model, example_inputs, roots)
        elif kind == "weights":
            self._weights(model, example_inputs)
        else:
            raise XpruneError(
                f"MACs/parameter budgets support channels and single weights, not units of kind "
                f"{kind!r}; select by='units' for them"
            )
        self._finish()

    # ------------------------------------------------------------------ building
    def _trace(self, model: nn.Module, example: Any, roots: Mapping[str, str]) -> None:
        calls: list[tuple] = []
        handles = [m.register_forward_hook(self._count_hook(calls)) for m in _counted(model)]
        # Torch-Pruning first tries model(*inputs), which may run part of the model on a wrong split of
        # the inputs before it fails: count the calls of the last (the traced) forward pass only
        handles.append(model.register_forward_pre_hook(lambda module, args: calls.clear()))
        try:
            graph = build_graph(model, example)  # the one traced forward pass; the hooks count its calls
        finally:
            for h in handles:
                h.remove()
        batch = _batch_size(example)
        modules = dict(model.named_modules())
        # channels of each node (module, operation or bare parameter) that every unit takes with it, as
        # (unit, channel) index pairs: per node side and group, arrays of units and of channels
        owned: dict[tuple[int, str], dict[str, tuple[list, list]]] = {}
        conv_owned: set[int] = set()
        for name, size in self.sizes.items():
            root_name = roots.get(name, name)
            if root_name not in modules:
                raise XpruneError(
                    f"the scores name layer {root_name!r}, which this model does not have; "
                    "were they computed for another model?"
                )
            root = modules[root_name]
            pruner = graph.get_pruner_of_module(root)
            n_out = pruner.get_out_channels(root) if pruner is not None else None
            if n_out is None or not size or n_out % size:  # mirrored groups: n_out = size x blocks
                raise XpruneError(
                    f"layer {root_name!r} has {n_out} output channels but the scores expect {size}; "
                    "they were computed for another model (score this one again)"
                )
            conv = isinstance(root, nn.modules.conv._ConvNd)
            for item in graph.get_pruning_group(root, pruner.prune_out_channels, list(range(n_out))):
                key = id(item.dep.target.module)
                side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
                units, chans = owned.setdefault((key, side), {}).setdefault(name, ([], []))
                units.append(np.asarray(item.root_idxs, dtype=np.int64) % size)  # root channel -> its unit
                chans.append(np.asarray(item.idxs, dtype=np.int64))
                if conv:
                    conv_owned.add(key)
        for key, side in list(owned):  # "ch": channels of a layer whose inputs are its outputs
            for name, (units, chans) in owned[(key, side)].items():
                ch = owned.setdefault((key, "ch"), {}).setdefault(name, ([], []))
                ch[0].extend(units)
                ch[1].extend(chans)
        # per unit: the number of distinct channels of the node it takes; per node: the highest channel index
        self._owned: dict[Any, Any] = {}
        self._max_idx: dict[Any, int] = {}
        for k, v in owned.items():
            self._owned[k], top = {}, -1
            for name, (units, chans) in v.items():
                u, j = np.concatenate(units), np.concatenate(chans)
                pairs = np.unique(u * (int(j.max(initial=0)) + 1) + j)  # distinct (unit, channel) pairs
                self._owned[k][name] = np.bincount(
                    pairs // (int(j.max(initial=0)) + 1), minlength=self.sizes[name]
                ).astype(np.float64)
                top = max(top, int(j.max(initial=-1)))
            self._max_idx[k] = top
        op_of = {
            id(node.grad_fn): node.module
            for node in graph.module2node.values()
            if getattr(node, "grad_fn", None) is not None
        }
        in_graph = {id(m) for m in graph.module2node}

        for module, flops, bias, grad_fn, shape in calls:
            flops, bias = flops / batch, bias / batch
            key = id(module) if id(module) in in_graph else id(op_of.get(id(grad_fn)))
            if isinstance(module, _BILINEAR) and id(module) in in_graph and not _is_depthwise(module):
                i, o = _in_out(module)
                if (key, "in") in self._owned or (key, "out") in self._owned:
                    self._add((key, "in"), (key, "out"), i, o, "macs", (flops - bias) / (i * o), bias / o, 0.0)
                    continue
            elif (key, "ch") in self._owned and shape is not None:
                c = shape[1 if len(shape) >= 3 and key in conv_owned else -1]
                if c > self._max_idx[(key, "ch")]:
                    if not isinstance(module, _LINEAR_IN_CHANNELS) and not _is_depthwise(module):
                        self.exact = False
                    self._add(None, (key, "ch"), 1, c, "macs", 0.0, flops / c, 0.0)
                    continue
                self.exact = False
            self._const["macs"] += flops

        unwrapped = {id(u.parameters): u.pruning_dim for u in getattr(graph, "unwrapped_parameters", ())}
        seen: set[int] = set()
        for module in modules.values():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                self._param(module, pname, p, unwrapped, in_graph)

    def _param(self, module: nn.Module, pname: str, p: torch.Tensor, unwrapped: dict, in_graph: set) -> None:
        n = float(p.numel())
        key = id(module)
        if (
            key in in_graph
            and isinstance(module, _BILINEAR)
            and not _is_depthwise(module)
            and ((key, "in") in self._owned or (key, "out") in self._owned)
        ):
            i, o = _in_out(module)
            if pname == "weight":
                self._add((key, "in"), (key, "out"), i, o, "params", n / (i * o), 0.0, 0.0)
                return
            if pname == "bias":
                self._add(None, (key, "out"), 1, o, "params", 0.0, n / o, 0.0)
                return
        if id(p) in unwrapped and (id(p), "ch") in self._owned:
            c = p.shape[unwrapped[id(p)]]
            self._add(None, (id(p), "ch"), 1, c, "params", 0.0, n / c, 0.0)
            return
        if key in in_graph and (key, "ch") in self._owned and p.dim() >= 1:
            fits = [d for d in range(p.dim()) if p.shape[d] > self._max_idx[(key, "ch")]]
            if fits:
                c = p.shape[fits[-1]]
                self._add(None, (key, "ch"), 1, c, "params", 0.0, n / c, 0.0)
                return
        self._const["params"] += n

    def _weights(self, model: nn.Module, example: Any) -> None:
        from .measure import count

        totals = count(model, example)
        self._const["macs"] = float(totals["macs"])  # masking single weights changes no counted MAC
        self._owned = {}
        rest = float(totals["params"])
        for name, size in self.sizes.items():
            self._owned[(name, "ch")] = {name: np.ones(size)}
            self._add(None, (name, "ch"), 1, size, "params", 0.0, 1.0, 0.0)
            rest -= size
        self._const["params"] += rest

    def _add(self, s_in, s_out, i, o, metric, a, b, c) -> None:
        e = self._entries.setdefault((s_in, s_out, i, o), {m: [0.0, 0.0, 0.0] for m in METRICS})
        coef = e[metric]
        coef[0] += a
        coef[1] += b
        coef[2] += c

    @staticmethod
    def _count_hook(calls: list):
        def hook(module, args, out):
            had = "__flops__" in module.__dict__
            saved = module.__dict__.get("__flops__")
            module.__flops__ = 0
            try:
                counter = _counter.CUSTOM_MODULES_MAPPING.get(type(module)) or _counter.MODULES_MAPPING[type(module)]
                counter(module, args, out)
                flops = float(module.__flops__)
            finally:
                if had:
                    module.__flops__ = saved
                else:
                    del module.__flops__
            t = (
                out
                if isinstance(out, torch.Tensor)
                else next(
                    (o for o in (out if isinstance(out, (tuple, list)) else ()) if isinstance(o, torch.Tensor)), None
                )
            )
            bias = 0.0
            if getattr(module, "bias", None) is not None and t is not None:
                if isinstance(module, nn.modules.conv._ConvNd):
                    bias = float(t.numel())
                elif isinstance(module, nn.Linear):
                    bias = float(t.shape[-1])
            calls.append(
                (module, flops, bias, t.grad_fn if t is not None else None, tuple(t.shape) if t is not None else None)
            )

        return hook

    def _finish(self) -> None:
        keys = list(self._entries)
        self._I = np.array([k[2] for k in keys], dtype=np.float64)
        self._O = np.array([k[3] for k in keys], dtype=np.float64)
        self._coef = {
            m: np.array([self._entries[k][m] for k in keys], dtype=np.float64).reshape(-1, 3) for m in METRICS
        }
        # per group: (entry, removed inputs per unit or None, removed outputs per unit or None)
        self._terms: dict[str, list[tuple[int, Any, Any]]] = {n: [] for n in self.sizes}
        for e, (s_in, s_out, _, _) in enumerate(keys):
            names = set(self._owned.get(s_in, {})) | set(self._owned.get(s_out, {}))
            for n in names:
                din = self._owned.get(s_in, {}).get(n)
                dout = self._owned.get(s_out, {}).get(n)
                self._terms[n].append((e, din, dout))
        self._means: dict[
            str, tuple[Any, Any]
        ] = {}  # per group: channels the mean unit takes from each entry (inputs, outputs)
        for n, terms in self._terms.items():
            vin, vout = np.zeros(len(keys)), np.zeros(len(keys))
            for e, din, dout in terms:
                vin[e] = din.mean() if din is not None else 0.0
                vout[e] = dout.mean() if dout is not None else 0.0
            self._means[n] = (vin, vout)
        self.base = {m: self._value(np.zeros(len(keys)), np.zeros(len(keys)), m) for m in METRICS}

    # ------------------------------------------------------------------ evaluation
    def _value(self, ri: Any, ro: Any, metric: str) -> Any:
        a, b, c = self._coef[metric].T
        big_i, big_o = self._I, self._O
        like = ri if isinstance(ri, torch.Tensor) else ro if isinstance(ro, torch.Tensor) else None
        arrays: tuple[Any, ...] = (a, b, c, big_i, big_o)
        if like is not None:
            arrays = tuple(torch.from_numpy(x).to(like.device, like.dtype) for x in arrays)
        a, b, c, big_i, big_o = arrays
        i, o = big_i - ri, big_o - ro
        total = (a * i * o + b * o + c * i).sum() + self._const[metric]
        return total if like is not None else float(total)

    def _check_names(self, removed: Mapping[str, Any]) -> None:
        unknown = [n for n in removed if n not in self.sizes]
        if unknown:
            raise XpruneError(
                f"groups {unknown[:5]} are not in this cost model; it was built for other scores "
                "(build it again from the scores of this model)"
            )

    def value(self, removed: Mapping[str, Iterable[int]], by: str = "macs") -> float:
        """MACs (or parameters) after removing units ``removed[name]`` of each group (exact)."""
        check_metric(by)
        self._check_names(removed)
        ri, ro = np.zeros(len(self._I)), np.zeros(len(self._I))
        for name, idxs in removed.items():
            idx = np.asarray(list(idxs), dtype=np.int64)
            if not idx.size:
                continue
            for e, din, dout in self._terms[name]:
                if din is not None:
                    ri[e] += din[idx].sum()
                if dout is not None:
                    ro[e] += dout[idx].sum()
        return self._value(ri, ro, by)

    def of_plan(self, plan: Any, by: str = "macs") -> float:
        """MACs (or parameters) of the model pruned by ``plan``."""
        return self.value(plan.remove, by)

    def reduction(self, removed: Mapping[str, Iterable[int]], by: str = "macs") -> float:
        """Fraction of the model's MACs (or parameters) that removing ``removed`` saves."""
        base = self.base[by]
        return 1 - self.value(removed, by) / base if base else 0.0

    def of_counts(self, counts: Mapping[str, Any], by: str = "macs") -> Any:
        """MACs (or parameters) with ``counts[name]`` units removed from each group (numbers or tensors).

        Differentiable in tensor counts. Exact when every unit of a group
        removes as many channels from each layer as any other (true except for
        groups spanning the unequal branches of a concatenation, where the mean
        unit is used).
        """
        check_metric(by)
        self._check_names(counts)
        ri: Any = 0.0
        ro: Any = 0.0
        for name, r in counts.items():
            vin, vout = self._means[name]  # numpy arrays; tensors for tensor counts
            if isinstance(r, torch.Tensor):
                vin, vout = (torch.from_numpy(v).to(r.device, r.dtype) for v in (vin, vout))
            ri = ri + vin * r
            ro = ro + vout * r
        if not counts:
            ri = ro = np.zeros(len(self._I))
        return self._value(ri, ro, by)

    # ------------------------------------------------------------------ first and second order
    def marginal(self, name: str, unit: int, ri: np.ndarray, ro: np.ndarray, by: str = "macs") -> float:
        """Saving of removing ``unit`` of group ``name`` when ``ri``/``ro`` channels are already gone."""
        coef, total = self._coef[by], 0.0
        for e, din, dout in self._terms[name]:
            di = din[unit] if din is not None else 0.0
            do = dout[unit] if dout is not None else 0.0
            if not (di or do):
                continue
            a, b, c = coef[e]
            i, o = self._I[e] - ri[e], self._O[e] - ro[e]
            total += a * (i * o - (i - di) * (o - do)) + b * do + c * di
        return total

    def take(self, name: str, unit: int, ri: np.ndarray, ro: np.ndarray) -> None:
        """Record in ``ri``/``ro`` the channels that removing ``unit`` of ``name`` takes."""
        for e, din, dout in self._terms[name]:
            if din is not None:
                ri[e] += din[unit]
            if dout is not None:
                ro[e] += dout[unit]

    def empty(self) -> tuple[np.ndarray, np.ndarray]:
        """Removed-channel accumulators for :meth:`marginal` and :meth:`take` (nothing removed)."""
        return np.zeros(len(self._I)), np.zeros(len(self._I))

    def unit_costs(self, by: str = "macs") -> dict[str, float]:
        """Saving of removing one (mean) unit of each group from the full model; ``inf`` for one-unit groups.

        The first-order terms only: their sum over all units over-counts the
        saving of removing many (use :meth:`value`).
        """
        check_metric(by)
        out = {}
        for name, size in self.sizes.items():
            if size < 2:
                out[name] = float("inf")
                continue
            out[name] = self.base[by] - float(self.of_counts({name: 1.0}, by))
        return out

    def pairs(self, by: str = "macs") -> dict[tuple[str, str], float]:
        r""":math:`b_{nm}` of :math:`r_n r_m` for groups ``n`` before ``m`` sharing a layer (mean units)."""
        check_metric(by)
        a = self._coef[by][:, 0]
        names = list(self.sizes)
        means = {
            n: {
                e: (din.mean() if din is not None else 0.0, dout.mean() if dout is not None else 0.0)
                for e, din, dout in self._terms[n]
            }
            for n in names
        }
        out = {}
        for x, n in enumerate(names):
            for m in names[x + 1 :]:
                shared = set(means[n]) & set(means[m])
                v = sum(a[e] * (means[n][e][0] * means[m][e][1] + means[m][e][0] * means[n][e][1]) for e in shared)
                if v:
                    out[(n, m)] = float(v)
        return out


def _in_out(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    assert isinstance(module, nn.modules.conv._ConvNd)  # the cost model's producers: linear and conv layers
    return module.in_channels, module.out_channels


def _counted(model: nn.Module) -> list[nn.Module]:
    """The layers Torch-Pruning's counter adds up: supported ones not inside another supported one."""
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if _counter.is_supported_instance(m):
            out.append(m)
            return
        for child in m.children():
            walk(child)

    walk(model)
    return out


def _batch_size(example: Any) -> int:
    """The counter divides by the batch size of the first positional input."""
    if isinstance(example, torch.Tensor):
        return max(1, len(example))
    if isinstance(example, (tuple, list)) and example and isinstance(example[0], torch.Tensor):
        return max(1, len(example[0]))
    return 1


def budget_check(costs: Any, sizes: Mapping[str, int]) -> None:
    """Raise unless ``costs`` is a :class:`CostModel` built for groups of these ``sizes``."""
    if not isinstance(costs, CostModel):
        raise XpruneError(
            f"costs must be an xprune.costs.CostModel, got {type(costs).__name__}: per-unit costs (unit_costs) "
            "add up to about twice the model's MACs and over-prune; pass model=the_model to select, or "
            "costs=xprune.costs.CostModel(model, scores)"
        )
    wrong = {n: (costs.sizes.get(n), s) for n, s in sizes.items() if costs.sizes.get(n) != s}
    if wrong:
        raise XpruneError(
            f"the cost model does not fit these scores (group: cost model size, scores size) "
            f"{dict(list(wrong.items())[:5])}; build it from this model's scores"
        )


def unit_costs(model: nn.Module, scores_or_plan: Any, by: str = "macs", example_inputs: Any = None) -> dict[str, float]:
    """MACs (or parameters) saved by removing one unit of each group from the full model.

    First-order figures of :class:`xprune.costs.CostModel` (one trace of the
    model; ``inf`` for one-unit groups). Removing a channel saves MACs in the
    layer producing it and in the layer reading it, so these per-unit savings
    overlap between groups and their sum over all units is about twice the
    model's MACs: for budgets use ``select(..., by="macs", model=model)``,
    which counts exactly.
    """
    check_metric(by)
    return CostModel(model, scores_or_plan, example_inputs).unit_costs(by)
