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
gamma two (four). The backward pass is a single ordinary autograd pass (no
forward re-computation inside backward hooks), and ``torch.autograd.grad``
with only the tensors of interest skips all weight gradients.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from .canonizers import Canonizer, RuleAssignment, default_canonizers
from .composites import Composite, composite as resolve_composite
from .calls import _PARAMETRIC, LayerCall
from .rules import Gradient, Pass, Rule

__all__ = ["Attribution", "attribution", "relevance", "explain", "weight_relevance", "start_seed"]


def _merged_params(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm):
    """Effective (detached) weight and bias of ``bn(layer(x))`` and the per-channel scale/shift."""
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    w = layer.weight.detach()
    w = w * scale.view(-1, *([1] * (w.dim() - 1))).to(w)
    b = shift.to(w) if layer.bias is None else layer.bias.detach() * scale.to(w) + shift.to(w)
    return w, b


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

    Notes
    -----
    All hooks are registered with ``prepend=True``: hooks that others add to
    the same modules (e.g. a criterion capturing layer outputs) see the
    attributed outputs. Under ``torch.no_grad()`` the model computes its
    normal outputs (BatchNorm merged) without any modified terms.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Any = "epsilon-plus",
        canonizers: Sequence[Canonizer] | None = None,
        *,
        weight_relevance: bool | Iterable[str] = False,
    ):
        self.model = model
        self.composite: Composite = resolve_composite(composite)
        self.canonizers = list(default_canonizers() if canonizers is None else canonizers)
        for c in self.canonizers:
            if not isinstance(c, Canonizer):
                raise XpruneError(f"canonizers must be xprune.lrp.Canonizer instances; got {c!r}")
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
        self._pending: dict[nn.Module, torch.Tensor] = {}
        self._root_inputs: list[torch.Tensor] = []
        self._carriers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.weight_leaves: list[tuple[str, torch.Tensor]] = []

    def reset(self) -> None:
        """Forget the tensors recorded by previous forward passes (call between batches)."""
        self._reset_state()

    # ------------------------------------------------------------------ enter / exit
    def __enter__(self) -> "Attribution":
        if self._active:
            raise XpruneError("this Attribution is already active; create a new one")
        try:
            self._register()
        except BaseException:
            self._remove()
            raise
        self._active = True
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

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
        self._handles.append(model.register_forward_pre_hook(self._root_pre_hook, prepend=True))
        merged_bns = set(self._bn_of.values())
        for name, module in modules.items():
            rule = plan.rules.get(name)
            merged = module in self._bn_of
            if module in merged_bns:  # the identity while merged: no rule of its own
                continue
            if not merged and not self._needs_hook(name, module, rule):
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook, prepend=True))
            self._handles.append(module.register_forward_hook(self._forward_hook, prepend=True))
        for bn in self._bn_of.values():
            self._handles.append(bn.register_forward_hook(self._bn_hook, prepend=True))

    def _needs_hook(self, name: str, module: nn.Module, rule: Rule | None) -> bool:
        if rule is None or type(rule) is Gradient:  # plain gradient: hook only to record weight leaves
            return self.weight_relevance and self._weight_leaf_wanted(name) and isinstance(module, _PARAMETRIC)
        if type(rule) is Pass and isinstance(module, Pass._GRADIENT_EQUIVALENT):
            return False
        return True

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False
        self._reset_state()

    # ------------------------------------------------------------------ hooks
    def _root_pre_hook(self, module, args):
        self._root_inputs = [a for a in args if isinstance(a, torch.Tensor)]

    def _pre_hook(self, module, args):
        self._stash.setdefault(module, []).append(args)
        if getattr(module, "inplace", False):  # keep the original input intact for the rule
            return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
        return None

    def _forward_hook(self, module, args, output):
        stack = self._stash.get(module)
        inputs = stack.pop() if stack else args
        name = self._names[module]
        if not isinstance(output, torch.Tensor):
            raise XpruneError(f"LRP rules need modules with one tensor output; {name!r} returned {type(output).__name__}")
        bn = self._bn_of.get(module)
        weight = getattr(module, "weight", None)
        bias = getattr(module, "bias", None)
        weight = weight.detach() if isinstance(weight, torch.Tensor) else None
        bias = bias.detach() if isinstance(bias, torch.Tensor) else None
        if bn is not None:
            weight, bias = _merged_params(module, bn)
            output = F.batch_norm(
                output, bn.running_mean, bn.running_var,
                None if bn.weight is None else bn.weight.detach(),
                None if bn.bias is None else bn.bias.detach(),
                False, 0.0, bn.eps,
            )  # fmt: skip
        if torch.is_grad_enabled():
            rule = self.plan.rules.get(name) or Gradient()
            output = rule(LayerCall(module, name, tuple(inputs), output, weight, bias, self))
        if bn is not None:
            self._pending[bn] = output
        return output

    def _bn_hook(self, bn, args, output):
        expected = self._pending.pop(bn, None)
        if expected is None or not args or args[0] is not expected:
            layer = next((self._names[m] for m, b in self._bn_of.items() if b is bn), "?")
            raise XpruneError(
                f"BatchNorm {self._names[bn]!r} was merged into {layer!r} (the module registered before it), "
                "but its input is not that layer's output. Pass MergeBatchNorm(pairs={bn_name: layer_name}) "
                "with the right pairs, or canonizers=[] to keep BatchNorm as a layer."
            )
        return args[0]

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
            raise XpruneError(
                f"the rule of {call.name!r} (flat / w-square / z-box) needs the model input as the layer's input: "
                "its input relevance is not input x gradient and cannot be passed further down. "
                "Use it on the first layer only."
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
        for c, g in zip(carriers, grads[1:]):
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
        for (name, leaf), g in zip(self.weight_leaves, grads):
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
) -> Attribution:
    """Context manager applying ``composite`` (and canonizers) to ``model``; see :class:`Attribution`."""
    return Attribution(model, composite, canonizers, weight_relevance=weight_relevance)


def start_seed(output: torch.Tensor, target: Any = None, start: str = "onehot") -> torch.Tensor:
    r"""Gradient seed for ``output`` that starts LRP at the target logit.

    Parameters
    ----------
    output : Tensor ``[N, C]``
        Model output (logits) of the attributed forward pass.
    target : None, int, sequence/LongTensor ``[N]`` or float Tensor ``[N, C]``
        Class to explain (``None``: the predicted class). A float tensor of
        the output's shape is taken as the starting relevance itself.
    start : {"onehot", "logit"}
        ``"onehot"``: relevance 1 at the target logit (seed ``1 / logit``,
        0 where the logit is exactly 0); ``"logit"``: relevance = the logit
        value (seed = one-hot, i.e. the gradient of the logit).
    """
    if start not in ("onehot", "logit"):
        raise XpruneError(f"start must be 'onehot' or 'logit'; got {start!r}")
    if output.dim() != 2:
        raise XpruneError(f"LRP starts from a [N, C] output; got shape {tuple(output.shape)}")
    out = output.detach()
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        if target.shape != out.shape:
            raise XpruneError(f"a float target is the starting relevance and needs shape {tuple(out.shape)}")
        rel = target.to(out)
        return torch.where(out == 0, torch.zeros_like(out), rel / torch.where(out == 0, torch.ones_like(out), out))
    if target is None:
        classes = out.argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full((out.shape[0],), target, dtype=torch.long, device=out.device)
    else:
        classes = torch.as_tensor(target, device=out.device).long().reshape(-1)
    if classes.numel() != out.shape[0] or (classes.numel() and (classes.min() < 0 or classes.max() >= out.shape[1])):
        raise XpruneError(f"target must give one class in [0, {out.shape[1] - 1}] per sample ({out.shape[0]} samples)")
    seed = torch.zeros_like(out)
    seed[torch.arange(out.shape[0], device=out.device), classes] = 1.0
    if start == "onehot":
        seed = seed * torch.where(out == 0, torch.zeros_like(out), 1.0 / torch.where(out == 0, torch.ones_like(out), out))
    return seed


def _sum_calls(name: str, tensors: list[torch.Tensor], grads: list) -> torch.Tensor | None:
    rels = [t.detach() * (torch.zeros_like(t) if g is None else g) for t, g in zip(tensors, grads)]
    if not rels:
        return None
    if any(r.shape != rels[0].shape for r in rels):
        raise XpruneError(f"module {name!r} is called several times with different output shapes; read it by hand")
    return sum(rels[1:], rels[0])


def relevance(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    layers: Iterable[str] = (),
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LRP relevance at the input and at the outputs of ``layers``.

    Parameters
    ----------
    model : nn.Module
        Classifier mapping ``x`` to ``[N, C]`` logits (use ``model.eval()``).
    x : Tensor
        Input batch.
    target, start :
        The starting relevance, see :func:`start_seed`.
    composite, canonizers :
        Rules and canonizers, see :class:`Attribution`.
    layers : iterable of str
        Module names whose output relevance to return (for a layer merged with
        its BatchNorm: after the BatchNorm). A module called several times
        gets the sum over its calls.

    Returns
    -------
    input_relevance : Tensor, shape of ``x``
    layer_relevance : dict of name to Tensor, shape of each layer's output
    """
    layers = list(layers)
    with attribution(model, composite, canonizers) as attr, torch.enable_grad():
        store = attr.tap(layers)
        x = x.detach().requires_grad_(True)
        output = model(x)
        seed = start_seed(output, target, start)
        outs = [t for n in layers for t in store[n]]
        carriers = attr.carriers(x)
        wanted = [x, *carriers, *outs]
        grads = torch.autograd.grad(output, wanted, seed, allow_unused=True)
        r_in = attr.input_relevance(x, grads[: 1 + len(carriers)])
        layer_grads = list(grads[1 + len(carriers) :])
        result: dict[str, torch.Tensor] = {}
        for n in layers:
            k = len(store[n])
            r = _sum_calls(n, store[n], layer_grads[:k])
            layer_grads = layer_grads[k:]
            if r is None:
                raise XpruneError(f"module {n!r} was not called in the forward pass")
            result[n] = r
    return r_in.detach(), result


def explain(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> torch.Tensor:
    """Input relevance (heatmap) of ``model`` for ``x``; see :func:`relevance`."""
    return relevance(model, x, target, composite, canonizers=canonizers, start=start)[0]


def weight_relevance(
    model: nn.Module,
    x: torch.Tensor,
    target: Any = None,
    composite: Any = "epsilon-plus",
    layers: Iterable[str] | None = None,
    *,
    canonizers: Sequence[Canonizer] | None = None,
    start: str = "onehot",
) -> dict[str, torch.Tensor]:
    r"""Relevance of single weights, summed over the batch.

    The relevance flowing through weight :math:`w_{ij}` is its share of the
    message from input :math:`j` to output :math:`i`, e.g.
    :math:`x_j w_{ij} R_i / \operatorname{stab}(z_i)` for epsilon, computed as
    :math:`\sum_k W_k \odot \partial / \partial W_k` over the rule's modified
    weights :math:`W_k` (for a conv: summed over positions). Summed over
    :math:`i` and :math:`j` it is the layer's output relevance minus the
    bias share. BatchNorm-merged layers report the merged weights'
    relevance (same shape as the layer's weight). Layers with the flat rule
    get no weight relevance.

    Returns
    -------
    dict of layer name to Tensor of the layer's weight shape.
    """
    names = None if layers is None else list(layers)
    with attribution(model, composite, canonizers, weight_relevance=True if names is None else names) as attr:
        with torch.enable_grad():
            output = model(x)
            seed = start_seed(output, target, start)
            leaves = [leaf for _, leaf in attr.weight_leaves]
            grads = torch.autograd.grad(output, leaves, seed, allow_unused=True) if leaves else []
        rel = attr.weight_relevance_from(grads)
    modules = dict(model.named_modules())
    wanted = names if names is not None else [n for n, m in modules.items() if isinstance(getattr(m, "weight", None), torch.Tensor) and n in rel]
    return {n: rel.get(n, torch.zeros_like(modules[n].weight.detach())).detach() for n in wanted}
