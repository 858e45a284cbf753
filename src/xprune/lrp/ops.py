r"""LRP inside a module's own forward: the functional calls the rules act on.

A rule needs the *linear map* of its layer (the convolution or matrix
product, with the weight actually used). For ``nn.Linear`` / ``nn.Conv*d``
whose ``forward`` is the base class's, that map is known without looking
(``F.linear`` / ``module._conv_forward`` on the module's effective weight,
parametrizations included). A subclass with its own ``forward`` (padding
inside ``forward`` as in TensorFlow "same" ports, weight standardisation,
fake-quantised weights) computes something else; there the engine watches
the module's forward with a :class:`torch.overrides.TorchFunctionMode` and
applies the rule to the one ``conv``/``linear`` call it makes, with that
call's input (e.g. the padded tensor), weight (e.g. the standardised one)
and other arguments. The rest of the forward (padding, standardisation)
passes relevance by the plain gradient, which for padding is exact.

The same mechanism gives two rules that cannot be written on a module's
input and output alone:

- :class:`ConstantStatistics`: the normalising statistic of a norm layer is
  a constant (AttnLRP's identity rule on :math:`\sigma`, Achtibat et al.
  2024), whatever the layer computes it with: ``layer_norm``,
  ``group_norm`` and ``rms_norm`` calls get a constant variance; the results
  of ``sqrt``, ``rsqrt``, ``var``, ``std`` and vector norms computed inside
  the module are constants (custom LayerNorm, RMSNorm, ConvNeXt-V2's GRN).
- :class:`GatingProducts`: the product of a signal with a gate (the output
  of a module with the :class:`~xprune.lrp.rules.Gate` rule, e.g. the sigmoid
  of a squeeze-excitation block), wherever in the forward it is taken.

and :class:`MergedBatchNorm` makes a BatchNorm merged into the layer before it
the identity inside its own forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from .calls import reroute

__all__ = [
    "standard_forward",
    "OpCapture",
    "ConstantStatistics",
    "GatingProducts",
    "MergedBatchNorm",
    "bind",
    "call_bound",
]

_LINEAR_FUNCS = {F.linear}
_CONV_FUNCS = {torch.conv1d, torch.conv2d, torch.conv3d}

# canonical argument order and defaults of the functional calls the engine rewrites
_SIGNATURES: dict[Any, tuple[tuple[str, ...], tuple[Any, ...]]] = {
    F.linear: (("input", "weight", "bias"), (None,)),
    **dict.fromkeys(_CONV_FUNCS,
                    (("input", "weight", "bias", "stride", "padding", "dilation", "groups"), (None, 1, 0, 1, 1))),
    F.layer_norm: (("input", "normalized_shape", "weight", "bias", "eps"), (None, None, 1e-5)),
    torch.layer_norm: (("input", "normalized_shape", "weight", "bias", "eps"), (None, None, 1e-5)),
    F.group_norm: (("input", "num_groups", "weight", "bias", "eps"), (None, None, 1e-5)),
    torch.group_norm: (("input", "num_groups", "weight", "bias", "eps"), (None, None, 1e-5)),
}  # fmt: skip
if hasattr(F, "rms_norm"):
    for _f in {F.rms_norm, getattr(torch, "rms_norm", F.rms_norm)}:
        _SIGNATURES[_f] = (("input", "normalized_shape", "weight", "eps"), (None, None))

_BASES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def bind(func: Any, args: tuple, kwargs: dict | None) -> dict[str, Any]:
    """The arguments of a call of ``func`` (one of the rewritten functional calls) by name, defaults filled in."""
    names, defaults = _SIGNATURES[func]
    out = dict(zip(names, args, strict=False))  # the positional arguments given: a prefix of names
    out.update(kwargs or {})
    for n, d in zip(names[len(names) - len(defaults) :], defaults, strict=True):
        out.setdefault(n, d)
    return out


def call_bound(func: Any, bound: dict[str, Any]) -> torch.Tensor:
    """Call ``func`` with the arguments of :func:`bind`."""
    names, _ = _SIGNATURES[func]
    return func(*[bound[n] for n in names])


def standard_forward(module: nn.Module) -> bool:
    """Whether a Linear/Conv module computes exactly its base class's map (no own ``forward``/``_conv_forward``)."""
    for base in _BASES:
        if isinstance(module, base):
            cls = type(module)
            if cls.forward is not base.forward:
                return False
            return base is nn.Linear or getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)
    return True


class _HookedMode(torch.overrides.TorchFunctionMode):
    """A function mode entered in a module's forward pre-hook and left in its forward hook."""

    def enter(self) -> _HookedMode:
        self.__enter__()
        return self

    def leave(self) -> None:
        self.__exit__(None, None, None)


class MergedBatchNorm(_HookedMode):
    """Inside the forward of a BatchNorm merged into the layer before it: the normalisation is the identity.

    The layer's output already is the BatchNorm's; what else the module does
    (an activation of a BatchNorm-activation module) still runs. The identity
    returns a copy, so that in-place operations on the BatchNorm's output
    (``x += residual``) leave the layer's output, where relevance is read, as it was.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.batch_norm, torch.batch_norm):
            x = args[0] if args else kwargs["input"]
            return x.clone()
        return func(*args, **(kwargs or {}))


class OpCapture(_HookedMode):
    """Applies ``apply(func, bound, output)`` to the one linear/conv call of a module's own forward.

    ``apply`` returns the replacement of the call's output (the rule's
    rerouted tensor). A second such call in the same forward raises: the
    rule would not know which one is the layer.
    """

    def __init__(self, name: str, module: nn.Module, apply: Callable[[Any, dict, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.name, self.module, self.apply = name, module, apply
        self.funcs = _LINEAR_FUNCS if isinstance(module, nn.Linear) else _CONV_FUNCS
        self.result: torch.Tensor | None = None
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in self.funcs:
            return func(*args, **(kwargs or {}))
        self.calls += 1
        if self.calls > 1:
            raise XpruneError(
                f"LRP: module {self.name!r} ({type(self.module).__name__}) computes {func.__name__} twice in its "
                "forward, so its rule cannot tell which call is the layer; give it no rule "
                f"(composite name_map={{{self.name!r}: None}}) or split it into one module per call"
            )
        bound = bind(func, args, kwargs)
        out = call_bound(func, bound)
        self.result = self.apply(func, bound, out)
        return self.result

    def check(self, output: Any) -> None:
        """Raise unless the forward made its linear/conv call."""
        if self.calls == 0:
            kind = "linear" if isinstance(self.module, nn.Linear) else "conv"
            raise XpruneError(
                f"LRP: module {self.name!r} ({type(self.module).__name__}) has its own forward, in which no "
                f"torch.nn.functional.{kind} call was seen to apply its rule to; give it no rule (composite "
                f"name_map={{{self.name!r}: None}}) or compute the layer with torch.nn.functional.{kind}"
            )


def _constant_layer_norm(x, normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    mean = x.mean(dims, keepdim=True)
    var = x.detach().var(dims, unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.detach()
    if bias is not None:
        y = y + bias.detach()
    return y


def _constant_group_norm(x, num_groups, weight, bias, eps):
    g = x.reshape(x.shape[0], num_groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = g.detach().var(-1, unbiased=False, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.detach().reshape(shape)
    if bias is not None:
        y = y + bias.detach().reshape(shape)
    return y


def _constant_rms_norm(x, normalized_shape, weight, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    if eps is None:
        eps = torch.finfo(x.dtype).eps
    y = x * torch.rsqrt(x.detach().pow(2).mean(dims, keepdim=True) + eps)
    return y if weight is None else y * weight.detach()


_NORMS: dict[Any, Callable] = {}
for _f, _g in (
    (F.layer_norm, _constant_layer_norm),
    (torch.layer_norm, _constant_layer_norm),
    (F.group_norm, _constant_group_norm),
    (torch.group_norm, _constant_group_norm),
):
    _NORMS[_f] = _g
if hasattr(F, "rms_norm"):
    _NORMS[F.rms_norm] = _constant_rms_norm
    if hasattr(torch, "rms_norm"):
        _NORMS[torch.rms_norm] = _constant_rms_norm

# statistics computed inside a norm module: their results are constants under the rule
_STATISTICS = {torch.sqrt, torch.rsqrt, torch.Tensor.sqrt, torch.Tensor.rsqrt, torch.var, torch.std,
               torch.Tensor.var, torch.Tensor.std, torch.var_mean, torch.std_mean, torch.linalg.vector_norm,
               torch.linalg.norm, torch.norm, torch.Tensor.norm}  # fmt: skip


class ConstantStatistics(_HookedMode):
    """Inside a norm module's forward: the normalising statistics are constants (value unchanged).

    ``layer_norm``/``group_norm``/``rms_norm`` calls keep their exact value and
    get the gradient of the same normalisation with a constant variance; other
    statistics (``sqrt``, ``rsqrt``, ``var``, ``std``, norms) are detached.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _NORMS:
            bound = bind(func, args, kwargs)
            x = bound.pop("input")
            if not (isinstance(x, torch.Tensor) and x.requires_grad and torch.is_grad_enabled()):
                return func(*args, **(kwargs or {}))
            with torch.no_grad():  # the exact value; the gradient goes through the constant-statistic twin
                out = func(*args, **(kwargs or {}))
            return reroute(out, [(_NORMS[func](x, **bound), 1.0)])
        out = func(*args, **(kwargs or {}))
        if func in _STATISTICS:
            if isinstance(out, torch.Tensor):
                return out.detach()
            if isinstance(out, tuple):
                return tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in out)
        return out


_PRODUCTS = {torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}
_INPLACE_PRODUCTS = {torch.Tensor.mul_, torch.Tensor.__imul__}
# shape-only operations: a view/copy of a gate is still the gate
_SHAPE_OPS = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unsqueeze, torch.unsqueeze,
              torch.Tensor.expand, torch.Tensor.expand_as, torch.Tensor.__getitem__, torch.Tensor.flatten,
              torch.flatten, torch.Tensor.squeeze, torch.squeeze, torch.Tensor.permute, torch.permute,
              torch.Tensor.transpose, torch.transpose, torch.Tensor.contiguous, torch.Tensor.to,
              torch.Tensor.view_as, torch.Tensor.reshape_as, torch.Tensor.type_as}  # fmt: skip


class _ScaleGradInplace(torch.autograd.Function):
    """``x`` unchanged (in place); the gradient passing through it is multiplied by ``c``."""

    @staticmethod
    def forward(ctx, x, c):
        ctx.mark_dirty(x)
        ctx.c = c
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.c, None


class GatingProducts(torch.overrides.TorchFunctionMode):
    r"""Over a whole forward pass: element-wise products of a signal with a gate get the gate rule.

    ``share="uniform"``: each factor gets half of the product's relevance
    (the gradient arriving at the product is halved and then split by the
    product rule: :math:`R_x = R_s = R_{xs}/2`). ``share="signal"``: the gate is
    a constant, the signal gets all (:math:`R_x = R_{xs}`, :math:`R_s = 0`).
    """

    def __init__(self, gates: dict[int, tuple[torch.Tensor, str]]):
        super().__init__()
        self.gates = gates  # id -> (tensor, share); the tensor is kept so that the id stays its own

    def _gate(self, t: Any) -> str | None:
        hit = self.gates.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SHAPE_OPS:
            out = func(*args, **kwargs)
            share = self._gate(args[0]) if args else None
            if share is not None and isinstance(out, torch.Tensor):
                self.gates[id(out)] = (out, share)
            return out
        inplace = func in _INPLACE_PRODUCTS
        if not (inplace or func in _PRODUCTS) or len(args) != 2 or kwargs:
            return func(*args, **kwargs)
        shares = [self._gate(a) for a in args]
        if (shares[0] is None) == (shares[1] is None):  # no gate, or a gate times a gate
            return func(*args, **kwargs)
        if inplace and shares[0] is not None:  # the gate itself is overwritten: an ordinary product
            return func(*args, **kwargs)
        share = shares[0] or shares[1]
        if share == "signal":
            return func(*(a.detach() if s is not None else a for a, s in zip(args, shares, strict=True)), **kwargs)
        out = func(*args, **kwargs)
        if not (torch.is_grad_enabled() and isinstance(out, torch.Tensor) and out.requires_grad):
            return out
        if inplace:
            return _ScaleGradInplace.apply(out, 0.5)
        return reroute(out, [(out, 0.5)])
