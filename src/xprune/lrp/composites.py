"""Composites: which LRP rule each module of a model gets.

A :class:`Composite` maps modules to :mod:`~xprune.lrp.rules` by, in order of
precedence, (1) module name, (2) the *first layer* (the first module in
``named_modules()`` order matching a type of ``first_map``), (3) module type
(first matching entry of ``layer_map``), then (4) the base map shared by all
presets: gate activations (sigmoid, hard sigmoid) -> gate (identity, and the
uniform rule on the products they gate), other element-wise activations ->
pass, residual :class:`~xprune.layers.Add` and average pooling -> norm,
LayerNorm / GroupNorm (and norm modules known by class name) -> the identity
rule on their statistic, un-merged BatchNorm -> pass. Modules without a
rule (max pooling, flatten, dropout, ...) propagate the plain gradient, which
for max pooling is the winner-take-all rule.

Presets (same meaning as the composites of Anders et al., "Software for
dataset-wide XAI: from local explanations to global insights with Zennit,
CoRelAy, and ViRelAy", arXiv:2106.13200, 2021; Montavon et al. 2019 for the
layer-wise choice):

==========================  =================================================
``epsilon-plus``            conv: z+, linear: epsilon
``epsilon-plus-flat``       as above, first conv/linear layer: flat
``epsilon-alpha2-beta1``    conv: alpha2-beta1, linear: epsilon
``epsilon-alpha2-beta1-flat`` as above, first conv/linear layer: flat
``epsilon-gamma-box``       conv: gamma, linear: epsilon, first conv: z-box
                            (needs ``low=`` and ``high=``)
``epsilon``                 conv and linear: epsilon
``zplus``                   conv and linear: z+ (Yeom et al. 2021, VGG)
``gradient``                no rules at all (gradient x input)
==========================  =================================================

The *layer-group* composite of PXP (Hatefi et al. 2024) is built from a plain
dict, see :meth:`Composite.from_groups`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import XpruneError
from ..layers import Add
from .files import FORMAT_VERSION, is_composite_path, jsonable, read_composite, spec_from_json
from .rules import AlphaBeta, Epsilon, Flat, Gamma, Gate, LayerNormRule, Norm, Pass, Rule, ZBox, ZPlus, make_rule

__all__ = [
    "Composite",
    "GroupComposite",
    "composite",
    "register_composite",
    "save_composite",
    "load_composite",
    "PRESETS",
    "TYPE_GROUPS",
    "conv_groups",
]

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LINEAR = (nn.Linear,)
ACTIVATION = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.LogSigmoid, nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink,
)  # fmt: skip
AVGPOOL = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)  # fmt: skip
MAXPOOL = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)  # fmt: skip
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
GATE = (nn.Sigmoid, nn.Hardsigmoid)
NORM = (nn.LayerNorm, nn.GroupNorm)

TYPE_GROUPS: dict[str, tuple[type, ...]] = {
    "conv": CONV,
    "linear": LINEAR,
    "dense": CONV + LINEAR,
    "activation": ACTIVATION,
    "avgpool": AVGPOOL,
    "maxpool": MAXPOOL,
    "batchnorm": BATCHNORM,
    "gate": GATE,
    "norm": NORM,
    "add": (Add,),
}
"""Names usable instead of module types in ``layer_map``/``first_map``."""


def _types(key: Any) -> tuple[type, ...]:
    if isinstance(key, str):
        if key not in TYPE_GROUPS:
            raise XpruneError(f"unknown layer type group {key!r}; known: {', '.join(TYPE_GROUPS)}")
        return TYPE_GROUPS[key]
    if isinstance(key, type):
        return (key,)
    if isinstance(key, tuple) and all(isinstance(t, type) for t in key):
        return key
    raise XpruneError(f"layer_map keys are module types, tuples of types or one of {list(TYPE_GROUPS)}; got {key!r}")


def _pairs(mapping: Any) -> list[tuple[Any, Any]]:
    if mapping is None:
        return []
    if isinstance(mapping, Mapping):
        return list(mapping.items())
    return [tuple(p) for p in mapping]


def base_map(stabilizer: float = 1e-6) -> list[tuple[tuple[type, ...], Rule]]:
    """Rules shared by all presets.

    Gate activations (sigmoid, hard sigmoid): :class:`~xprune.lrp.rules.Gate`
    (identity, and the uniform rule on the products they gate); other
    activations pass; sums and average pooling norm; LayerNorm / GroupNorm
    the identity rule on their statistic; un-merged BatchNorm pass.
    """
    return [
        (GATE, Gate()),
        (ACTIVATION, Pass()),
        (NORM, LayerNormRule()),
        ((Add,), Norm(stabilizer)),
        (AVGPOOL, Norm(stabilizer)),
        (BATCHNORM, Pass()),
    ]


def _by_class_name(module: nn.Module) -> Rule | None:
    """Base rules for modules of other libraries, known by class (no import of those libraries here).

    Hugging Face activation modules (``transformers.activations``) pass;
    norm modules that are no ``nn.LayerNorm``/``nn.GroupNorm`` subclass
    (class names ending in ``LayerNorm``, ``GroupNorm`` or ``GRN``, e.g.
    ConvNeXt-V2's global response norm) get the identity rule on their statistic.
    """
    cls = type(module)
    if cls.__module__.startswith("transformers.activations"):
        return Pass()
    if cls.__name__.endswith(("LayerNorm", "GroupNorm", "GRN")):
        return LayerNormRule()
    return None


class Composite:
    """A mapping from modules to LRP rules.

    Parameters
    ----------
    layer_map : mapping or sequence of (type key, rule spec)
        Rules by module type; a key is a type, a tuple of types or a name in
        :data:`TYPE_GROUPS` (``"conv"``, ``"linear"``, ``"dense"``, ...). The
        first matching entry wins.
    name_map : mapping of str to rule spec, optional
        Rules by exact module name (highest precedence).
    first_map : mapping or sequence of (type key, rule spec), optional
        Rules for the first module (``named_modules()`` order) matching one
        of its types.
    base : bool
        Append :func:`base_map` (activations, sums, average pooling, BatchNorm).
    stabilizer : float
        Epsilon of the base map's norm rules.
    name : str, optional
        Shown in ``repr``.

    A rule spec is anything :func:`~xprune.lrp.rules.make_rule` accepts:
    a :class:`~xprune.lrp.rules.Rule`, a name or ``(name, kwargs)``.

    Examples
    --------
    >>> Composite({"conv": "zplus", "linear": ("epsilon", {"epsilon": 1e-6})},
    ...           name_map={"features.0": "flat"})  # doctest: +SKIP
    """

    def __init__(
        self,
        layer_map: Any = None,
        name_map: Mapping[str, Any] | None = None,
        first_map: Any = None,
        *,
        base: bool = True,
        stabilizer: float = 1e-6,
        name: str | None = None,
    ):
        self.layer_map = [(_types(k), make_rule(r)) for k, r in _pairs(layer_map)]
        self.name_map = {str(k): make_rule(r) for k, r in dict(name_map or {}).items()}
        self.first_map = [(_types(k), make_rule(r)) for k, r in _pairs(first_map)]
        if base:
            self.layer_map += base_map(stabilizer)
        self.base = bool(base)
        self.name = name

    def assign(self, model: nn.Module) -> dict[str, Rule]:
        """The rule of every module of ``model`` that gets one, by module name."""
        modules = dict(model.named_modules())
        unknown = sorted(set(self.name_map) - set(modules))
        if unknown:
            raise XpruneError(f"composite names modules the model does not have: {unknown}")
        rules: dict[str, Rule] = {}
        first_done = not self.first_map
        for name, module in modules.items():
            if name in self.name_map:
                rule = self.name_map[name]
                if rule is not None:
                    rules[name] = rule
                continue
            if not first_done:
                match = next(((r,) for types, r in self.first_map if isinstance(module, types)), None)
                if match is not None:  # the first module of a first_map type (its rule may be None: the default)
                    first_done = True
                    if match[0] is not None:
                        rules[name] = match[0]
                    continue
            rule = next((r for types, r in self.layer_map if isinstance(module, types)), None)
            if rule is None and self.base:
                rule = _by_class_name(module)
            if rule is not None:
                rules[name] = rule
        return rules

    def __repr__(self) -> str:
        if self.name:
            return f"Composite({self.name!r})"
        return f"Composite(layer_map={self.layer_map!r}, name_map={self.name_map!r}, first_map={self.first_map!r})"


def conv_groups(
    model: nn.Module, groups: Sequence[str] = ("low", "mid", "high"), fc: str | None = "fc"
) -> dict[str, list[str]]:
    """Split the conv layers of ``model`` into contiguous depth groups.

    Conv layers (``nn.Conv1d/2d/3d``) are taken in ``named_modules()`` order
    (registration order, which is depth order for the models of
    :mod:`xprune.models` and torchvision-style models) and split into
    ``len(groups)`` near-equal contiguous parts (earlier parts get the extra
    layer). ``nn.Linear`` layers form the group ``fc``.
    """
    convs = [n for n, m in model.named_modules() if isinstance(m, CONV)]
    parts = np.array_split(np.arange(len(convs)), len(groups)) if groups else []
    out = {g: [convs[i] for i in idx] for g, idx in zip(groups, parts, strict=True)}
    if fc is not None:
        out[fc] = [n for n, m in model.named_modules() if isinstance(m, LINEAR)]
    return out


class GroupComposite(Composite):
    """The layer-group composite of PXP (Hatefi et al. 2024): one rule per group of layers.

    Parameters
    ----------
    rules : mapping of group name to rule spec
        E.g. ``{"low": ("gamma", {"gamma": 0.25}), "mid": "alpha2-beta1",
        "high": "zplus", "fc": ("epsilon", {"epsilon": 1e-6})}``. The optional
        key ``"first"`` overrides the rule of the first conv/linear layer.
    groups : mapping of group name to module names, or callable, optional
        Group membership. Default :func:`conv_groups`: conv layers split in
        depth order into thirds ``low``/``mid``/``high``, linear layers
        ``fc``. A callable receives the model and returns such a mapping.
        Layers of groups without a rule keep the plain gradient.
    layer_map, base, stabilizer :
        As in :class:`Composite` (applied to modules outside the groups).
    """

    def __init__(
        self,
        rules: Mapping[str, Any],
        groups: Mapping[str, Iterable[str]] | Callable[[nn.Module], Mapping[str, Iterable[str]]] | None = None,
        *,
        layer_map: Any = None,
        base: bool = True,
        stabilizer: float = 1e-6,
    ):
        rules = dict(rules)
        first = rules.pop("first", None)
        super().__init__(
            layer_map,
            first_map=[(CONV + LINEAR, first)] if first is not None else None,
            base=base,
            stabilizer=stabilizer,
        )
        self.group_rules = {str(k): make_rule(v) for k, v in rules.items()}
        if groups is None:
            default = ("low", "mid", "high", "fc")
            unknown = sorted(set(self.group_rules) - set(default))
            if unknown:
                raise XpruneError(
                    f"unknown layer groups {unknown}; the default groups are {list(default)} "
                    "(and 'first'); pass groups= to define others"
                )
        self.groups = groups

    def membership(self, model: nn.Module) -> dict[str, list[str]]:
        """Group name -> module names, for ``model``."""
        groups: Mapping[str, Iterable[str]]
        if self.groups is None:
            groups = conv_groups(model)
        elif callable(self.groups):
            groups = self.groups(model)
        else:
            groups = self.groups
        out = {str(k): list(v) for k, v in dict(groups).items()}
        unknown = sorted(set(self.group_rules) - set(out))
        if unknown:
            raise XpruneError(f"rules given for undefined layer groups {unknown}; groups are {sorted(out)}")
        return out

    def assign(self, model: nn.Module) -> dict[str, Rule]:
        modules = dict(model.named_modules())
        rules = super().assign(model)
        first = None
        if self.first_map:  # the 'first' rule beats the group rule of that layer
            first = next((n for n, m in modules.items() if isinstance(m, CONV + LINEAR)), None)
        seen: dict[str, str] = {}
        for group, names in self.membership(model).items():
            for n in names:
                if n not in modules:
                    raise XpruneError(f"layer group {group!r} names {n!r}, which the model does not have")
                if n in seen:
                    raise XpruneError(f"module {n!r} is in two layer groups: {seen[n]!r} and {group!r}")
                seen[n] = group
                if n == first:
                    continue
                rule = self.group_rules.get(group)
                if rule is None:
                    rules.pop(n, None)
                else:
                    rules[n] = rule
        return rules

    def __repr__(self) -> str:
        return f"GroupComposite({self.group_rules!r}, groups={self.groups!r})"


# ----------------------------------------------------------------------------- presets


def _epsilon_plus(epsilon=1e-6, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("conv", ZPlus(stabilizer, zero_bias)), ("linear", Epsilon(epsilon, zero_bias))],
        name_map, stabilizer=stabilizer, name="epsilon-plus",
    )  # fmt: skip


def _epsilon_plus_flat(epsilon=1e-6, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("conv", ZPlus(stabilizer, zero_bias)), ("linear", Epsilon(epsilon, zero_bias))],
        name_map, first_map=[("dense", Flat(stabilizer))], stabilizer=stabilizer, name="epsilon-plus-flat",
    )  # fmt: skip


def _epsilon_alpha2_beta1(epsilon=1e-6, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("conv", AlphaBeta(2.0, 1.0, stabilizer, zero_bias)),
         ("linear", Epsilon(epsilon, zero_bias))],
        name_map, stabilizer=stabilizer, name="epsilon-alpha2-beta1",
    )  # fmt: skip


def _epsilon_alpha2_beta1_flat(epsilon=1e-6, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("conv", AlphaBeta(2.0, 1.0, stabilizer, zero_bias)),
         ("linear", Epsilon(epsilon, zero_bias))],
        name_map, first_map=[("dense", Flat(stabilizer))], stabilizer=stabilizer, name="epsilon-alpha2-beta1-flat",
    )  # fmt: skip


def _epsilon_gamma_box(
    low=None, high=None, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None
):
    if low is None or high is None:
        raise XpruneError(
            "composite 'epsilon-gamma-box' needs the input bounds: composite('epsilon-gamma-box', low=..., high=...) "
            "or ('epsilon-gamma-box', {'low': ..., 'high': ...}) (scalars or tensors broadcastable to the input)"
        )
    return Composite(
        [*_pairs(layer_map), ("conv", Gamma(gamma, stabilizer, zero_bias)), ("linear", Epsilon(epsilon, zero_bias))],
        name_map, first_map=[("conv", ZBox(low, high, stabilizer))], stabilizer=stabilizer, name="epsilon-gamma-box",
    )  # fmt: skip


def _epsilon(epsilon=1e-6, stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("dense", Epsilon(epsilon, zero_bias))], name_map, stabilizer=stabilizer, name="epsilon"
    )


def _zplus(stabilizer=1e-6, zero_bias=False, layer_map=None, name_map=None):
    return Composite(
        [*_pairs(layer_map), ("dense", ZPlus(stabilizer, zero_bias))], name_map, stabilizer=stabilizer, name="zplus"
    )


def _pbe(epsilon=1e-6, stabilizer=1e-9, zero_bias=True, linear="zplus", layer_map=None, name_map=None):
    """Pruning by Explaining (Yeom et al., Pattern Recognition 115, 2021, arXiv:1912.08881).

    z+ on conv layers: the rule with the weights clamped to w >= 0 that their code runs
    (github.com/seulkiyeom/LRP_Pruning, ``src/lrp.py``, branch ``'z'``), equal to alpha1-beta0 on the
    non-negative inputs after ReLU. Their code leaves the bias out of the denominators (``F.conv2d(x, w)``,
    ``F.linear(x, w)``: ``zero_bias=True``) and adds 1e-9 to them (``stabilizer``).

    ``linear="zplus"`` (default): the same rule on linear layers, as their VGG code and their toy-MLP code
    (LRP_Pruning_toy_example, ``modules/lrp.py``, where ``'epsilon'`` also selects the clamped rule) run it.
    ``linear="epsilon"``: epsilon (1e-6) on linear layers, their ResNet setting, where the only linear layer
    is the classifier. Not the default: with epsilon on *hidden* linear layers some relevance is negative,
    and the signed per-unit sum of Pruning by Explaining then ranks the units that speak against the true
    class lowest, so they are pruned first (see docs/pbe.md: on the toy MLPs it collapses a class).
    """
    if linear not in ("epsilon", "zplus"):
        raise XpruneError(f"composite 'pbe': linear must be 'epsilon' or 'zplus'; got {linear!r}")
    dense = Epsilon(epsilon, zero_bias) if linear == "epsilon" else ZPlus(stabilizer, zero_bias)
    return Composite(
        [*_pairs(layer_map), ("conv", ZPlus(stabilizer, zero_bias)), ("linear", dense)],
        name_map, stabilizer=1e-6, name="pbe" if linear == "zplus" else "pbe-epsilon",
    )  # fmt: skip


def _gradient(layer_map=None, name_map=None):
    return Composite(layer_map, name_map, base=False, name="gradient")


PRESETS: dict[str, Callable[..., Composite] | str] = {
    "epsilon-plus": _epsilon_plus,
    "epsilon-plus-flat": _epsilon_plus_flat,
    "epsilon-alpha2-beta1": _epsilon_alpha2_beta1,
    "epsilon-alpha2-beta1-flat": _epsilon_alpha2_beta1_flat,
    "epsilon-gamma-box": _epsilon_gamma_box,
    "epsilon": _epsilon,
    "zplus": _zplus,
    "pbe": _pbe,
    "gradient": _gradient,
    "attnlrp": "xprune.lrp.attention:preset_attnlrp",
    "cp-lrp": "xprune.lrp.attention:preset_cp_lrp",
}
"""Preset composite factories by name (or ``"module:attribute"``, loaded on first use); keyword arguments tune
their rules. Add your own with :func:`register_composite`."""


def register_composite(name: str, factory: Callable[..., Composite] | str) -> None:
    """Register a preset: ``factory(**kwargs) -> Composite``, or ``"module:attribute"`` naming one."""
    PRESETS[name.lower().replace("_", "-")] = factory


def _preset(key: str) -> Callable[..., Composite]:
    factory = PRESETS[key]
    if isinstance(factory, str):
        import importlib

        module, _, attr = factory.partition(":")
        factory = PRESETS[key] = getattr(importlib.import_module(module), attr)
    return factory


def composite(spec: Any = "epsilon-plus", **kwargs: Any) -> Composite:
    """Resolve a composite.

    Parameters
    ----------
    spec : str, path, (str, dict), dict or Composite
        A preset name from :data:`PRESETS` (``_`` and ``-`` are
        interchangeable), the path of a composite file (``*.json``, see
        :mod:`xprune.lrp.files`), a pair ``(preset name, kwargs)``, a dict of
        layer groups to rules (:class:`GroupComposite`), or a
        :class:`Composite` (returned as is).
    **kwargs
        Keyword arguments for the preset factory or :class:`GroupComposite`
        (e.g. ``epsilon=``, ``stabilizer=``, ``gamma=``, ``low=``/``high=``,
        ``groups=``).
    """
    if isinstance(spec, Composite):
        if kwargs:
            raise XpruneError("keyword arguments cannot be combined with a Composite instance")
        return spec
    if is_composite_path(spec):  # a composite file (e.g. written by xprune.tune)
        return load_composite(spec, **kwargs)
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return composite(spec[0], **{**spec[1], **kwargs})
    if isinstance(spec, Mapping):
        return GroupComposite(spec, **kwargs)
    if isinstance(spec, str):
        key = spec.lower().replace("_", "-")
        if key not in PRESETS:
            raise XpruneError(f"unknown LRP composite {spec!r}; known composites: {', '.join(PRESETS)}")
        try:
            return _preset(key)(**kwargs)
        except TypeError as e:
            raise XpruneError(f"bad parameters for composite {spec!r}: {e}") from None
    raise XpruneError(
        "a composite is a preset name, (name, kwargs), a dict of layer groups to rules, or a Composite; "
        f"got {type(spec).__name__}"
    )


# ----------------------------------------------------------------------------- composite files


def save_composite(
    path: str | os.PathLike,
    spec: Any,
    *,
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write a composite file (atomically) and return its path.

    The spec is resolved once before writing, so a file that is written can be loaded.
    """
    from .._io import atomic_write

    doc = {
        "xprune": "composite",
        "version": FORMAT_VERSION,
        "spec": jsonable(spec),
        "kwargs": jsonable(dict(kwargs or {})),
        "options": jsonable(dict(options or {})),
        "meta": jsonable(dict(meta or {})),
    }
    composite(spec_from_json(doc["spec"]), **doc["kwargs"])  # fail here, not at load time
    path = Path(path)
    atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_composite(path: str | os.PathLike, **kwargs: Any):
    """Resolve the composite stored in ``path``; ``kwargs`` override the file's resolver arguments."""
    doc = read_composite(path)
    spec = spec_from_json(doc["spec"])
    try:
        return composite(spec, **{**doc.get("kwargs", {}), **kwargs})
    except XpruneError as e:
        raise XpruneError(f"composite file {path}: {e}") from None
