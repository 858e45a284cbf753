r"""The PXP search space: layer groups, rule choices, and the design that resolves a space for a model.

:class:`Space` holds what is searched (rules per layer group with their
parameters, aggregation, normalisation, softmax rule); :func:`default_groups`
derives the layer groups from depth; :class:`Design` resolves a space for one
model and samples a composite from an optuna trial. Part of :mod:`xprune.tune`
(Hatefi et al. 2024, arXiv:2408.12568); the search space is described in
``docs/tune.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import nn

from ..errors import XpruneError
from ..layers import is_conv1d
from ..lrp.composites import CONV, LINEAR, conv_groups

__all__ = ["Space", "Design", "default_groups", "RULE_CHOICES", "TRANSFORMER_KINDS"]

RULE_CHOICES = ("epsilon", "zplus", "alpha-beta", "gamma")
"""The rules searched per layer group (canonical names of :data:`xprune.lrp.RULES`)."""

TRANSFORMER_KINDS = ("heads", "neurons")
"""Unit kinds pruned with the attention composites (AttnLRP / CP-LRP)."""

_NORMALIZE = ("none", "l1", "l2", "max")


@dataclass
class Space:
    """The search space of :func:`xprune.tune.tune` (the defaults' meaning: ``docs/tune.md``).

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
        Layer groups; default derived from depth (:func:`default_groups`).

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
    def coerce(cls, space: Space | Mapping[str, Any] | None) -> Space:
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
        d["rules"] = (
            {k: list(v) for k, v in self.rules.items()} if isinstance(self.rules, Mapping) else list(self.rules)
        )
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

        dense = [n for n, m in model.named_modules() if isinstance(m, CONV + LINEAR) or is_conv1d(m)]
        parts = np.array_split(np.arange(len(dense)), 3)
        groups = {g: [dense[i] for i in idx] for g, idx in zip(("low", "mid", "high"), parts, strict=True)}
    else:
        groups = conv_groups(model)
    return {g: names for g, names in groups.items() if names}


class Design:
    """A :class:`Space` resolved for one model: concrete groups and per-group rule choices."""

    def __init__(self, space: Space, model: nn.Module, kind: str):
        space.check()
        self.space = space
        self.kind = kind
        self.attention = kind in TRANSFORMER_KINDS
        groups: Mapping[str, Sequence[str]]
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
                raise XpruneError(
                    f"Space.rules must name exactly the layer groups {sorted(self.groups)}; "
                    f"missing {missing}, unknown {extra}"
                )
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
