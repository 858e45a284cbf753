r"""The LRP engine: attach rules, run one forward and one backward pass, read relevance anywhere.

Usage::

    from xprune import lrp

    # one call: relevance at the input and at named layers' outputs
    R_in, R_layers = lrp.relevance(model, x, target=y, composite="epsilon-plus",
                                   layers=["features.3", "classifier.0"])

    # or by hand, inside the context (hooks are removed on exit, even on error)
    with lrp.attribution(model, "epsilon-alpha2-beta1") as attr:
        x.requires_grad_(True)
        out = model(x)
        seed = lrp.start_seed(out, target=y)          # relevance 1 at the target logit
        (g,) = torch.autograd.grad(out, x, seed)
        R_in = x * g                                  # relevance = tensor * modified gradient

The relevance of *any* tensor of the attributed forward pass is that tensor
times the gradient arriving at it (hook a layer's output, ``retain_grad()`` or
``torch.autograd.grad``, multiply). The only exception is the input relevance
under the flat / w-square / z-box rules, which :func:`relevance` and
:meth:`Attribution.input_relevance` add from the rules' carrier tensors.

Cost: epsilon / pass / norm / gradient rules add no forward work; z+ adds one
forward of the layer (two for inputs with negative values), alpha-beta and
gamma two (four). These terms are evaluated when the backward pass reaches the
layer, from the layer input that is kept anyway (``defer=True``), so the
forward pass stores no coefficient tensor or term graph. Layers whose rule
does not use their own output's graph run without one, the others with their
parameters frozen: no rule needs parameter gradients, so none are prepared.

Modules are attributed as they compute: a Linear/Conv subclass with its own
forward (padding inside it, weight standardisation, fake quantisation) gets
its rule on the one ``conv``/``linear`` call of that forward; norm layers get
a constant statistic inside their forward; products of gates (sigmoid outputs)
with signals get the gate rule wherever they are taken (see :mod:`.ops`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from ..layers import is_conv1d
from .calls import _PARAMETRIC, LayerCall
from .canonizers import Canonizer, RuleAssignment, default_canonizers
from .composites import Composite, composite as resolve_composite
from .ops import ConstantStatistics, GatingProducts, MergedBatchNorm, OpCapture, call_bound, standard_forward
from .rules import Gate, Gradient, Pass, Rule

__all__ = ["Attribution", "attribution"]


def _merged_params(weight: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm):
    """Effective (detached) weight and bias of ``bn(layer(x))`` for a layer with ``weight`` and ``bias``."""
    if bn.running_var is None or bn.running_mean is None:
        raise XpruneError(f"{bn!r} keeps no running statistics (track_running_stats=False): it cannot be merged")
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    w = weight.detach()
    w = w * scale.view(-1, *([1] * (w.dim() - 1))).to(w)
    b = shift.to(w) if bias is None else bias.detach() * scale.to(w) + shift.to(w)
    return w, b


def _apply_bn(output: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    return F.batch_norm(
        output, bn.running_mean, bn.running_var,
        None if bn.weight is None else bn.weight.detach(),
        None if bn.bias is None else bn.bias.detach(),
        False, 0.0, bn.eps,
    )  # fmt: skip


def _detached(t: Any) -> torch.Tensor | None:
    return t.detach() if isinstance(t, torch.Tensor) else None


class Attribution:
    """Context manager attaching LRP rules and canonizers to a model.

    Parameters
    ----------
    model : nn.Module
        The model; its parameters, buffers and hooks are unchanged after exit.
    composite : str, dict, (str, dict) or Composite
        Which rule each module gets (see :func:`xprune.lrp.composite`).
    canonizers : list of Canonizer, optional
        Default ``[MergeBatchNorm(), ResidualNorm()]``; ``[]`` for none.
    weight_relevance : bool or iterable of str
        Record the modified weights of the (named) layers as leaf tensors, so
        that :meth:`weight_relevance` can split relevance onto single weights.
    defer : bool
        Compute the extra terms of z+ / alpha-beta / gamma in the backward
        pass from the saved layer input (default): the same work, but the
        forward pass keeps no coefficient tensor or term graph per layer.
        ``False``: compute them in the forward pass.

    Notes
    -----
    All hooks are registered with ``prepend=True``: hooks that others add to
    the same modules (e.g. a criterion capturing layer outputs) see the
    attributed outputs. Under ``torch.no_grad()`` the model computes its
    normal outputs (BatchNorm merged) without any modified terms. While a
    layer with a rule runs its forward, its parameters do not require
    grad (restored right after): LRP needs no parameter gradient.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Any = "epsilon-plus",
        canonizers: Sequence[Canonizer] | None = None,
        *,
        weight_relevance: bool | Iterable[str] = False,
        defer: bool = True,
    ):
        self.model = model
        self.defer = bool(defer)
        self.composite: Composite = resolve_composite(composite)
        self.canonizers = list(default_canonizers() if canonizers is None else canonizers)
        for c in self.canonizers:
            if not isinstance(c, Canonizer):
                raise XpruneError(f"canonizers must be xprune.lrp.Canonizer instances; got {c!r}")
        self._weight_layers: set[str] | None
        if isinstance(weight_relevance, bool):
            self._weight_layers = None if weight_relevance else set()
        else:
            self._weight_layers = set(weight_relevance)
        self.plan: RuleAssignment | None = None
        self._handles: list = []
        self._active = False
        self._reset_state()

    # ------------------------------------------------------------------ state
    @property
    def weight_relevance(self) -> bool:
        return self._weight_layers is None or bool(self._weight_layers)

    def _reset_state(self) -> None:
        self._stash: dict[nn.Module, list] = {}
        self._modes: dict[nn.Module, list] = {}
        self._gates: dict[int, tuple[torch.Tensor, str]] = {}
        self._gate_mode: GatingProducts | None = None
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._root_inputs: list[torch.Tensor] = []
        self._carriers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight_leaves: list[tuple[str, torch.Tensor]] = []

    def reset(self) -> None:
        """Forget the tensors recorded by previous forward passes (call between batches)."""
        self._reset_state()

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> Attribution:
        if self._active:
            raise XpruneError("this Attribution is already active; create a new one")
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _register(self) -> None:
        model = self.model
        plan = RuleAssignment(rules=dict(self.composite.assign(model)))
        for c in self.canonizers:
            c.prepare(model, plan)
        self.plan = plan
        modules = dict(model.named_modules())
        self._names = {m: n for n, m in modules.items()}
        self._bn_of: dict[nn.Module, nn.Module] = {}
        for layer, bn in plan.merges.items():
            if modules[bn].training:
                raise XpruneError(
                    f"BatchNorm {bn!r} is in training mode; LRP merges BatchNorm with its running statistics, "
                    "call model.eval() first (or pass canonizers=[] to keep BatchNorm as a layer)"
                )
            self._bn_of[modules[layer]] = modules[bn]
        merged_bns = set(self._bn_of.values())
        self._gating = False
        self._rule_of: dict[nn.Module, Rule] = {}
        hooks: list[tuple[nn.Module, Callable[..., Any], Callable[..., Any]]] = []
        for name, module in modules.items():
            rule = plan.rules.get(name)
            merged = module in self._bn_of
            if module in merged_bns:  # the identity while merged: no rule of its own
                continue
            if rule is not None and rule.intercept == "statistics" and not merged:
                hooks.append((module, self._stats_pre_hook, self._mode_hook))
                continue
            self._rule_of[module] = rule or Gradient()
            if not merged and not self._needs_hook(name, module, rule):
                continue
            if isinstance(module, _PARAMETRIC) and not standard_forward(module):
                hooks.append((module, self._op_pre_hook, self._op_hook))  # the rule goes inside its forward
                continue
            self._gating = self._gating or isinstance(rule, Gate)
            hooks.append((module, self._pre_hook, self._forward_hook))
        self._handles.append(model.register_forward_pre_hook(self._root_pre_hook, prepend=True, with_kwargs=True))
        self._handles.append(model.register_forward_hook(self._root_hook, prepend=True, always_call=True))
        for module, pre, post in hooks:
            plain = pre == self._pre_hook
            self._handles.append(module.register_forward_pre_hook(pre, prepend=True, with_kwargs=plain))
            self._handles.append(module.register_forward_hook(post, prepend=True, always_call=True))
        for bn_module in self._bn_of.values():
            self._handles.append(bn_module.register_forward_pre_hook(self._bn_pre_hook, prepend=True))
            self._handles.append(bn_module.register_forward_hook(self._bn_hook, prepend=True, always_call=True))

    def _needs_hook(self, name: str, module: nn.Module, rule: Rule | None) -> bool:
        if rule is None or type(rule) is Gradient:  # plain gradient: hook only to record weight leaves
            weighted = isinstance(module, _PARAMETRIC) or is_conv1d(module)
            return self.weight_relevance and self._weight_leaf_wanted(name) and weighted
        return not (type(rule) is Pass and isinstance(module, Pass._GRADIENT_EQUIVALENT))

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False
        for stack in self._modes.values():  # left behind by a forward that raised
            while stack:
                mode, state = stack.pop()
                mode.leave()
                self._restore(state)
        if self._gate_mode is not None:
            self._gate_mode.__exit__(None, None, None)
        self._reset_state()

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self, module, args, kwargs):
        self._root_inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        self._pending.clear()
        self._gates.clear()
        if self._gating and self._gate_mode is None:  # products of gates, wherever the forward takes them
            self._gate_mode = GatingProducts(self._gates)
            self._gate_mode.__enter__()

    def _root_hook(self, module, args, output):
        if self._gate_mode is not None:
            self._gate_mode.__exit__(None, None, None)
            self._gate_mode = None
        self._gates.clear()
        pending, self._pending = self._pending, {}
        if pending and output is not None:
            bn = next(iter(pending))
            raise XpruneError(
                f"LRP: BatchNorm {self._names[bn]!r} is merged into {self._layer_of(bn)!r}, but that layer's output "
                "never reached it; pass MergeBatchNorm(pairs=...) without this pair, or canonizers=[]"
            )

    def _pre_hook(self, module, args, kwargs):
        if not args:  # the input passed by keyword
            args, kwargs = tuple(v for v in kwargs.values() if isinstance(v, torch.Tensor))[:1], None
        self._stash.setdefault(module, []).append((args, self._lighten(module, args)))
        if kwargs is not None and getattr(module, "inplace", False):  # keep the original input for the rule
            return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args), kwargs
        return None

    def _lighten(self, module, args, graph: bool | None = None):
        """Make the module's own forward cheap when relevance flows into it: what to undo after it.

        No rule needs parameter gradients, and rules whose terms are their own
        (z+, alpha-beta, gamma, pass on a smooth activation) do not use the graph
        of the module's output at all: such a module runs without a graph;
        the others run with their parameters frozen (no weight-gradient
        bookkeeping, inputs not saved for it). Where no input carries a graph
        (the first layer) nothing changes: the parameters are then the graph's root.
        """
        if not (torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)):
            return None
        if graph is None:
            graph = self._rule_of[module].uses_output_graph(module) or any(True for _ in module.children())
        if not graph:
            torch.set_grad_enabled(False)
            return True
        frozen = [p for p in module.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        return frozen

    @staticmethod
    def _restore(state) -> None:
        if state is True:
            torch.set_grad_enabled(True)
        elif state:
            for p in state:
                p.requires_grad_(True)

    def _forward_hook(self, module, args, output):
        inputs, state = self._stash[module].pop()
        self._restore(state)
        if output is None:  # the forward raised
            return None
        name = self._names[module]
        if not isinstance(output, torch.Tensor):
            raise XpruneError(
                f"LRP rules need modules with one tensor output; {name!r} returned {type(output).__name__}"
            )
        return self._ruled(
            module,
            tuple(inputs),
            output,
            _detached(getattr(module, "weight", None)),
            _detached(getattr(module, "bias", None)),
        )

    def _ruled(self, module, inputs, output, weight, bias, op=None):
        """``output`` of one call of ``module`` with its BatchNorm merged (if any) and its rule attached."""
        name = self._names[module]
        bn = self._bn_of.get(module)
        params = None
        if bn is not None:
            params = functools.partial(_merged_params, weight, bias, bn)
            weight, bias = params()
            output = _apply_bn(output, bn)
        if torch.is_grad_enabled():
            rule = self.plan.rules.get(name) or Gradient()
            output = rule(LayerCall(module, name, inputs, output, weight, bias, self, op=op, params=params))
        if bn is not None:
            self._set_pending(bn, module, output)
        return output

    def _set_pending(self, bn, module, output) -> None:
        if bn in self._pending:
            raise XpruneError(
                f"LRP: {self._names[module]!r} is called again before BatchNorm {self._names[bn]!r}, which is merged "
                "into it, read its output; pass MergeBatchNorm(pairs=...) without this pair, or canonizers=[]"
            )
        self._pending[bn] = output

    def _layer_of(self, bn) -> str:
        return next((self._names[m] for m, b in self._bn_of.items() if b is bn), "?")

    def _bn_pre_hook(self, bn, args):
        self._push(bn, MergedBatchNorm())

    def _bn_hook(self, bn, args, output):
        self._pop(bn)
        expected = self._pending.pop(bn, None)
        if output is None:  # the forward raised
            return None
        x = args[0] if args else None
        # the layer's output, or a copy of it (a hook after the layer's may continue with a copy, e.g. the
        # signals of a criterion when an in-place op follows: xprune.units.Signals.keep)
        same = x is expected or (
            isinstance(x, torch.Tensor)
            and isinstance(expected, torch.Tensor)
            and x.shape == expected.shape
            and x.dtype == expected.dtype
            and torch.equal(x, expected)
        )
        if expected is None or not same:
            raise XpruneError(
                f"BatchNorm {self._names[bn]!r} was merged into {self._layer_of(bn)!r} (the module registered before "
                "it), but its input is not that layer's output. Pass MergeBatchNorm(pairs={bn_name: layer_name}) "
                "with the right pairs, or canonizers=[] to keep BatchNorm as a layer."
            )
        return output  # the module's forward with the normalisation as the identity (see ops.MergedBatchNorm)

    # modules whose rule acts inside their own forward (see .ops)
    def _push(self, module, mode, state=None) -> None:
        self._modes.setdefault(module, []).append((mode.enter(), state))

    def _pop(self, module):
        mode, state = self._modes[module].pop()
        mode.leave()
        self._restore(state)
        return mode

    def _stats_pre_hook(self, module, args):
        self._push(module, ConstantStatistics(), self._lighten(module, args, graph=True))

    def _mode_hook(self, module, args, output):
        self._pop(module)

    def _op_pre_hook(self, module, args):
        mode = OpCapture(self._names[module], module, lambda f, b, o, m=module: self._op_rule(m, f, b, o))
        self._push(module, mode, self._lighten(module, args, graph=True))

    def _op_hook(self, module, args, output):
        mode = self._pop(module)
        if output is None:  # the forward raised
            return
        mode.check(output)
        bn = self._bn_of.get(module)
        if bn is not None and output is not mode.result:
            raise XpruneError(
                f"LRP: {self._names[module]!r} has its own forward, whose output is not its "
                f"{'linear' if isinstance(module, nn.Linear) else 'conv'} call's, so BatchNorm {self._names[bn]!r} "
                "cannot be merged into it; pass MergeBatchNorm(pairs=...) without this pair, or canonizers=[]"
            )

    def _op_rule(self, module, func, bound, output):
        rest = {k: v for k, v in bound.items() if k not in ("input", "weight", "bias")}

        def op(x, weight, bias):
            return call_bound(func, {**rest, "input": x, "weight": weight, "bias": bias})

        return self._ruled(module, (bound["input"],), output, _detached(bound["weight"]), _detached(bound["bias"]), op)

    def _mark_gate(self, t: torch.Tensor, share: str) -> None:
        self._gates[id(t)] = (t, share)

    # ------------------------------------------------------------------ rule services
    def _weight_leaf_wanted(self, name: str) -> bool:
        return self._weight_layers is None or name in self._weight_layers

    def _weight_mode(self, name: str) -> bool:
        return self.weight_relevance and self._weight_leaf_wanted(name) and torch.is_grad_enabled()

    def _weight_leaf(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        if not self._weight_leaf_wanted(name) or not torch.is_grad_enabled():
            return weight
        leaf = weight.detach().requires_grad_(True)
        self.weight_leaves.append((name, leaf))
        return leaf

    def _carrier(self, call: LayerCall, value: torch.Tensor) -> torch.Tensor:
        if not any(call.input is r for r in self._root_inputs):
            why = (
                f"{call.name!r} changes its input in its own forward (e.g. padding), so give it another rule "
                f"(composite name_map={{{call.name!r}: 'zplus'}})"
                if call.op is not None
                else "use it on the first layer only, on the model input itself (no padding module before it)"
            )
            raise XpruneError(
                f"the rule of {call.name!r} (flat / w-square / z-box) needs the model input as the layer's input: "
                f"its input relevance is not input x gradient and cannot be passed further down; {why}"
            )
        carrier = value.detach().clone().requires_grad_(True)
        self._carriers.append((call.input, carrier))
        return carrier

    # ------------------------------------------------------------------ reading relevance
    def carriers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Carrier tensors attached to input ``x`` by flat / w-square / z-box rules."""
        return [c for inp, c in self._carriers if inp is x]

    def input_relevance(self, x: torch.Tensor, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Relevance at input ``x`` from the gradients of ``[x] + self.carriers(x)``."""
        carriers = self.carriers(x)
        if len(grads) != 1 + len(carriers):
            raise XpruneError("input_relevance needs the gradients of [x] + carriers(x)")
        r = torch.zeros_like(x) if grads[0] is None else x.detach() * grads[0]
        for c, g in zip(carriers, grads[1:], strict=True):
            if g is not None:
                r = r + c.detach() * g
        return r

    def tap(self, names: Iterable[str]) -> dict[str, list[torch.Tensor]]:
        """Capture the (attributed) outputs of the named modules; a list per module (one per call)."""
        modules = dict(self.model.named_modules())
        store: dict[str, list[torch.Tensor]] = {}
        for n in names:
            if n not in modules:
                raise XpruneError(f"the model has no module {n!r}; some of its modules: {list(modules)[1:12]}")
            store[n] = []
            self._handles.append(modules[n].register_forward_hook(lambda m, a, o, n=n: store[n].append(o)))
        return store

    def weight_relevance_from(self, grads: Sequence[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Relevance of single weights, ``sum_k W_k * dW_k`` over the recorded modified weights."""
        out: dict[str, torch.Tensor] = {}
        for (name, leaf), g in zip(self.weight_leaves, grads, strict=True):
            if g is None:
                continue
            r = leaf.detach() * g
            out[name] = out[name] + r if name in out else r
        return out


def attribution(
    model: nn.Module,
    composite: Any = "epsilon-plus",
    canonizers: Sequence[Canonizer] | None = None,
    *,
    weight_relevance: bool | Iterable[str] = False,
    defer: bool = True,
) -> Attribution:
    """Context manager applying ``composite`` (and canonizers) to ``model``; see :class:`Attribution`."""
    return Attribution(model, composite, canonizers, weight_relevance=weight_relevance, defer=defer)
