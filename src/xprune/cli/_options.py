"""Criterion options on the command line: ``--option KEY=VALUE`` (typed from the signature) and ``--composite``.

A criterion's options are the parameters of its class's ``__init__``. A value
is converted with the parameter's default and annotation: ``int``, ``float``,
``bool`` (true/false, yes/no, 1/0, on/off), ``str``, JSON for lists and dicts;
``none`` gives ``None``. ``normalize`` (none, l1, l2, max) is accepted for every
criterion: it is :func:`xprune.score`'s per-layer normalisation of the scores.

``--composite NAME|FILE`` is the option ``composite`` (lrp's rules). A
composite file written by ``xprune tune`` also carries the options it was
tuned with (``aggregate``, ``normalize``, ...): they apply unless an
``--option`` sets them.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import XpruneError

#: Options of xprune.score itself, accepted for every criterion.
SCORE_OPTIONS = {"normalize": ("none", "l1", "l2", "max", "mean")}
#: Options the command line sets itself, with the flag to use instead.
RESERVED = {"seed": "--seed (prune) or --seeds (curve, demo)"}


def criterion_class(name: str):
    """The registered class of criterion ``name`` (imported if registered lazily)."""
    from ..criteria import available
    from ..criteria.base import _load

    if name not in available():
        raise XpruneError(f"unknown criterion {name!r}; known criteria: {', '.join(available())}")
    return _load(name)


def parameters(cls) -> tuple[dict[str, inspect.Parameter], bool]:
    """The options of a criterion class (name -> parameter) and whether it takes more (``**options``)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return {}, False
    params, more = {}, False
    for p in list(sig.parameters.values())[1:]:
        if p.kind is p.VAR_KEYWORD:
            more = cls.__init__ is not _base_init()
        elif p.kind is not p.VAR_POSITIONAL:
            params[p.name] = p
    return params, more


def _base_init():
    from ..criteria.base import Criterion

    return Criterion.__init__


def _kinds(p: inspect.Parameter | None) -> list[str]:
    """The value types to try for a parameter, in order."""
    if p is None:
        return ["json", "str"]
    kinds: list[str] = []
    default = p.default
    if default is not p.empty and default is not None:
        kinds.append({bool: "bool", int: "int", float: "float", str: "str"}.get(type(default), "json"))
    note = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", str(p.annotation))
    if note is not p.empty:
        for token, kind in (
            ("bool", "bool"),
            ("int", "int"),
            ("float", "float"),
            ("str", "str"),
            ("list", "json"),
            ("dict", "json"),
            ("tuple", "json"),
            ("Sequence", "json"),
            ("Mapping", "json"),
        ):
            if token in str(note) and kind not in kinds:
                kinds.append(kind)
        if "Any" in str(note) and "json" not in kinds:
            kinds += ["json", "str"]
    return kinds or ["json", "str"]


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _convert(text: str, kind: str) -> Any:
    if kind == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError
    if kind == "int":
        return int(text)
    if kind == "float":
        value = float(text)
        if value != value:
            raise ValueError
        return value
    if kind == "json":
        return json.loads(text)
    return text


def convert(key: str, text: str, p: inspect.Parameter | None, owner: str) -> Any:
    """The value of ``--option key=text`` for parameter ``p`` of criterion ``owner``."""
    if text.lower() in ("none", "null"):
        return None
    kinds = _kinds(p)
    for kind in kinds:
        try:
            return _convert(text, kind)
        except (ValueError, TypeError):
            continue
    wanted = " or ".join(
        {"json": "JSON (a list or dict)"}.get(k, "true/false" if k == "bool" else k) for k in dict.fromkeys(kinds)
    )
    default = "" if p is None or p.default is p.empty else f" (default {p.default!r})"
    raise XpruneError(f"--option {key}={text}: {owner}'s option {key!r} takes {wanted}{default}; got {text!r}")


def describe(cls) -> str:
    """``key=default, ...`` of a criterion class, for ``xprune criteria``."""
    params, more = parameters(cls)
    parts = [k if p.default is p.empty else f"{k}={p.default!r}" for k, p in params.items()]
    if more:
        parts.append("... (more: see its documentation)")
    return ", ".join(parts) if parts else "no options"


class CriterionOptions:
    """The options of the chosen criteria: ``for_criterion(name)`` gives the keyword arguments of ``xprune.score``."""

    def __init__(
        self,
        criteria: Sequence[str],
        pairs: Iterable[tuple[str, str]] = (),
        composite: str | None = None,
        *,
        fixed: Sequence[str] = (),
    ):
        self.criteria = list(dict.fromkeys(criteria))
        self.classes = {name: criterion_class(name) for name in self.criteria}
        self.signatures = {name: parameters(cls) for name, cls in self.classes.items()}
        self.given: dict[str, str] = {}
        for key, value in pairs:
            if key in self.given:
                raise XpruneError(f"--option {key} is given twice; give each option once")
            self.given[key] = value
        self.composite = composite
        self.from_file: dict[str, Any] = {}
        self.source: str | None = None
        if composite is not None:
            self._composite(composite, fixed)
        for key in self.given:
            self._check_key(key, fixed)
        self.values = {name: self._resolve(name) for name in self.criteria}

    # the criteria that take an option
    def takers(self, key: str) -> list[str]:
        if key in SCORE_OPTIONS:
            return list(self.criteria)
        return [n for n in self.criteria if key in self.signatures[n][0] or self.signatures[n][1]]

    def _listing(self) -> str:
        return "; ".join(f"{n} takes {describe(self.classes[n])}" for n in self.criteria)

    def _check_key(self, key: str, fixed: Sequence[str]) -> None:
        if key in RESERVED:
            raise XpruneError(f"--option {key}: set it with {RESERVED[key]}")
        if key in fixed:
            flag = {"aggregate": "--aggregate", "normalize": "--score-normalize"}.get(key, "the tune flags")
            raise XpruneError(f"--option {key}: {key} is what tuning searches; set its choices with {flag}")
        if key == "composite":
            raise XpruneError("--option composite=...: use --composite NAME|FILE")
        if not self.takers(key):
            which = "criterion" if len(self.criteria) == 1 else "chosen criterion"
            raise XpruneError(
                f"--option {key}: no {which} takes it ({self._listing()}; every criterion takes "
                "normalize=none|l1|l2|max)"
            )

    def _composite(self, spec: str, fixed: Sequence[str]) -> None:
        from ..lrp import composite as resolve
        from ..lrp.files import is_composite_path, read_composite

        if not self.takers("composite"):
            raise XpruneError(
                f"--composite is an option of lrp; the chosen {'criteria' if len(self.criteria) > 1 else 'criterion'} "
                f"{', '.join(self.criteria)} take{'' if len(self.criteria) > 1 else 's'} no composite"
            )
        if is_composite_path(spec):
            doc = read_composite(spec)
            resolve(spec)  # a file that does not resolve fails here, in one line
            self.from_file = {k: v for k, v in dict(doc.get("options") or {}).items() if k not in fixed}
            self.source = spec
        else:
            resolve(spec)  # an unknown preset name fails here, listing the known ones

    def _resolve(self, name: str) -> dict[str, Any]:
        params, more = self.signatures[name]
        out: dict[str, Any] = {}
        if self.composite is not None and ("composite" in params or more):
            out["composite"] = self.composite
            for key, value in self.from_file.items():  # the options the composite was tuned with
                if key in SCORE_OPTIONS or key in params or more:
                    out[key] = value
        for key, text in self.given.items():
            if key in SCORE_OPTIONS:
                value = None if text.lower() in ("none", "null") else text
                if value is not None and value not in SCORE_OPTIONS[key]:
                    raise XpruneError(f"--option {key}={text}: choose among {', '.join(SCORE_OPTIONS[key])}")
                out[key] = value
            elif key in params or more:
                out[key] = convert(key, text, params.get(key), name)
        return out

    def for_criterion(self, name: str) -> dict[str, Any]:
        """Keyword arguments of ``xprune.score`` / ``curve`` for criterion ``name`` (checked by building it)."""
        return dict(self.values.get(name, {}))

    def check(self) -> None:
        """Build each criterion once with its options: a bad value fails now, in one line, before any work."""
        from ..criteria import get

        for name in self.criteria:
            opts = {k: v for k, v in self.values[name].items() if k not in SCORE_OPTIONS}
            try:
                get(name, **opts)
            except XpruneError as e:
                raise XpruneError(f"criterion {name!r} refuses its options: {e}") from None
            except TypeError as e:
                raise XpruneError(
                    f"criterion {name!r} refuses its options ({e}); its options: {describe(self.classes[name])}"
                ) from None

    def summary(self) -> str | None:
        """One line saying which options apply (``None`` when none were given)."""
        parts = []
        for name in self.criteria:
            opts = self.values[name]
            if opts:
                shown = ", ".join(f"{k}={v!r}" for k, v in opts.items())
                parts.append(f"{name}: {shown}")
        if not parts:
            return None
        origin = f" (aggregate/normalize from {self.source} unless --option sets them)" if self.from_file else ""
        return "criterion options: " + "; ".join(parts) + origin
