"""Checks that flag degenerate results: a plan that removes nothing or leaves a bottleneck, an accuracy at chance.

Each check returns its findings as one-sentence messages (what, why, what to
do), so they can be stored (``Plan.meta["warnings"]``, a results JSON), and the
``warn_*`` functions also emit them as :class:`xprune.errors.DegenerateResult`
warnings. :func:`xprune.select` runs :func:`plan_warnings` on every plan it
makes; the command line and the demo call :func:`warn_if_chance` after measuring.

Thresholds (module constants):

* ``CHANCE_MARGIN = 0.1``: an accuracy is *at chance* when it closes less than a
  tenth of the gap from chance to perfect, i.e. ``accuracy <= c + 0.1 * (1 - c)``
  with ``c = max(1 / n_classes, majority-class rate)`` (0.19 for 10 balanced
  classes, 0.55 for 2);
* ``BOTTLENECK_MIN_SIZE = 8``, ``BOTTLENECK_MAX_LEFT = 2``: a group of at least
  8 units left with 1 or 2 is a bottleneck.

Sits on floor 2 of docs/architecture.md, beside ``plan``: it imports nothing of
xprune but the errors (a plan is read through its attributes), so that
``select`` and ``Plan.warnings`` can use it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .errors import DegenerateResult, XpruneError

__all__ = [
    "CHANCE_MARGIN",
    "BOTTLENECK_MIN_SIZE",
    "BOTTLENECK_MAX_LEFT",
    "chance_level",
    "is_at_chance",
    "warn_if_chance",
    "keep_floor",
    "plan_warnings",
    "warn_plan",
]

CHANCE_MARGIN = 0.1
BOTTLENECK_MIN_SIZE = 8
BOTTLENECK_MAX_LEFT = 2
_LISTED = 5  # groups named in one message


# ----------------------------------------------------------------------------- accuracy at chance


def chance_level(labels: Any) -> float:
    """Accuracy of always predicting the most frequent class: the majority-class frequency.

    Parameters
    ----------
    labels : sequence of int, numpy array, tensor, or an object with ``.y`` (a ``Split``)
        Class indices of the data the accuracy is measured on.

    Returns
    -------
    float
        ``max_c count(c) / N`` (at least ``1 / n_classes`` for balanced data).

    Raises
    ------
    XpruneError
        No labels, or labels that are not integer class indices.
    """
    y = getattr(labels, "y", labels)
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        raise XpruneError("chance_level needs at least one label; got none")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y))):
            raise XpruneError(
                f"chance_level expects integer class indices; got {y.dtype} values such as {y.tolist()[0]!r}"
            )
        y = y.astype(np.int64)
    _, counts = np.unique(y, return_counts=True)
    return float(counts.max() / y.size)


def _chance(n_classes: int, chance: float | None) -> tuple[float, float]:
    """(chance level, threshold) for ``n_classes`` and an optional majority-class rate."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise XpruneError(f"n_classes must be a positive int; got {n_classes!r}")
    level = 1.0 / int(n_classes)
    if chance is not None:
        if not isinstance(chance, (int, float)) or not 0 <= chance <= 1:
            raise XpruneError(f"chance must be a rate in [0, 1] (e.g. chance_level(labels)); got {chance!r}")
        level = max(level, float(chance))
    return level, level + CHANCE_MARGIN * (1.0 - level)


def _rate(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating, np.integer))
        or not 0 <= float(value) <= 1
    ):
        raise XpruneError(f"{name} must be a number in [0, 1] (the fraction of correct predictions); got {value!r}")
    return float(value)


def is_at_chance(accuracy: float, n_classes: int, *, chance: float | None = None) -> bool:
    """Whether ``accuracy`` is at chance level: ``<= c + CHANCE_MARGIN * (1 - c)``, ``c = max(1/n_classes, chance)``."""
    return _rate(accuracy, "accuracy") <= _chance(n_classes, chance)[1]


def warn_if_chance(
    accuracy: float,
    n_classes: int,
    *,
    what: str = "the pruned model",
    before: float | None = None,
    chance: float | None = None,
    stacklevel: int = 2,
) -> str | None:
    """Warn (:class:`~xprune.errors.DegenerateResult`) when an accuracy is at chance level.

    Parameters
    ----------
    accuracy : float
        The measured accuracy, in [0, 1].
    n_classes : int
        Number of classes the model chooses from.
    what : str, default "the pruned model"
        What was measured, for the message.
    before : float, optional
        The accuracy before pruning. When given, the warning fires only if it
        was clearly above chance (above the threshold): a model that was at
        chance before pruning is another problem (check it with
        ``what="the model before pruning"`` and no ``before``).
    chance : float, optional
        The majority-class rate of the evaluation labels (:func:`chance_level`);
        the chance level is ``max(1 / n_classes, chance)``.
    stacklevel : int, default 2
        Passed to :func:`warnings.warn` (2: the caller's line).

    Returns
    -------
    str or None
        The message warned, or ``None`` when the accuracy is above chance (or
        ``before`` was not above it). The threshold is
        ``c + CHANCE_MARGIN * (1 - c)``: 0.19 for 10 balanced classes.
    """
    acc = _rate(accuracy, "accuracy")
    prior = None if before is None else _rate(before, "before")
    level, threshold = _chance(n_classes, chance)
    if acc > threshold or (prior is not None and prior <= threshold):
        return None
    basis = f"1/{int(n_classes)} classes" if level == 1.0 / int(n_classes) else "the majority-class rate"
    if before is None:
        advice = (
            "check that the data matches the model (the same input normalisation as in training, "
            "e.g. --normalize / normalize=, and the same label order)"
        )
        drop = ""
    else:
        advice = "prune less (a lower ratio), fine-tune after pruning, or try another criterion"
        drop = f", down from {before:.4f}"
    msg = (
        f"{what} has accuracy {acc:.4f}{drop}, which is at chance level ({level:.4f}, {basis}): it predicts "
        f"no better than guessing; {advice}."
    )
    warnings.warn(msg, DegenerateResult, stacklevel=stacklevel)
    return msg


# ----------------------------------------------------------------------------- plans


def keep_floor(size: int, min_keep: int | float) -> int:
    """Units a group of ``size`` keeps at least under ``min_keep`` (a count, or a fraction in (0, 1)); never below 1."""
    k = math.ceil(min_keep * size) if isinstance(min_keep, float) and 0 < min_keep < 1 else int(min_keep)
    return min(size, max(1 if size else 0, k))


def _listing(items: list[str]) -> str:
    more = len(items) - _LISTED
    return ", ".join(items[:_LISTED]) + (f" and {more} more" if more > 0 else "")


def _call(meta: Mapping[str, Any]) -> str:
    parts = [f"ratio={meta.get('ratio')}"]
    for key, default in (("scope", "global"), ("by", "units"), ("min_keep", 1), ("round_to", None)):
        if key in meta and meta[key] != default:
            parts.append(f"{key}={meta[key]!r}")
    return f"select({', '.join(parts)})"


def _why_nothing(plan: Any) -> str:
    """Why a plan with ``ratio > 0`` removes no unit, read from its sizes and ``meta``, with the fix."""
    meta, sizes = plan.meta, plan.sizes
    ratio = float(meta.get("ratio", 0))
    min_keep = meta.get("min_keep", 1)
    caps = {n: s - keep_floor(s, min_keep) for n, s in sizes.items()}
    largest = max(sizes.values())
    if not any(caps.values()):
        if largest <= 1:
            return "every group has a single unit, which is never removed; prune another unit kind or more layers"
        return f"min_keep={min_keep!r} keeps every unit of every group (the largest has {largest}); lower min_keep"
    if meta.get("by", "units") == "units":
        if meta.get("scope") == "local":
            if all(math.floor(ratio * s + 1e-9) == 0 for n, s in sizes.items() if caps[n]):
                return (
                    f"{ratio} of each group's units rounds down to 0 in every group (the largest has {largest} "
                    f"units); use scope='global', or a ratio >= {1 / largest:.3g} (one unit of the largest group)"
                )
        elif ratio * sum(sizes.values()) < 1:
            total = sum(sizes.values())
            return f"{ratio} of the {total} units is less than one unit; use a ratio >= {1 / total:.3g}"
    if meta.get("round_to"):
        return (
            f"round_to={meta['round_to']} rounded every pruned group back to its full size; "
            "use a larger ratio or a smaller round_to"
        )
    return (
        "no unit could be removed within the constraints (min_keep, concatenated branches that keep one unit "
        "each); use a larger ratio"
    )


def _achieved(plan: Any) -> tuple[float, str]:
    """The fraction the plan removes of what ``meta["ratio"]`` is a fraction of, and the name of that."""
    by = plan.meta.get("by", "units")
    if by != "units" and isinstance(plan.meta.get(f"{by}_reduction"), (int, float)):
        return float(plan.meta[f"{by}_reduction"]), f"the model's {by}"
    return plan.ratio, "the units"


def _why_short(plan: Any) -> str:
    """Why a plan removes less than half of ``meta["ratio"]``, with the fix."""
    meta, sizes = plan.meta, plan.sizes
    ratio, total = float(meta["ratio"]), sum(sizes.values())
    min_keep = meta.get("min_keep", 1)
    capacity = sum(s - keep_floor(s, min_keep) for s in sizes.values()) / total
    by = meta.get("by", "units")
    if by == "units" and capacity < ratio:
        return f"min_keep={min_keep!r} lets only {capacity:.3g} of the units go; lower min_keep or accept less"
    if (
        by == "units"
        and meta.get("scope") == "local"
        and sum(math.floor(ratio * s + 1e-9) for s in sizes.values()) / total < ratio / 2
    ):
        return (
            "each group's share rounds down to whole units in these small groups; use scope='global' or a larger ratio"
        )
    if meta.get("round_to"):
        return f"round_to={meta['round_to']} rounds the kept counts back up; use a smaller round_to"
    if min_keep != 1:
        return f"min_keep={min_keep!r} keeps the rest; lower min_keep or accept less"
    return "the groups' floors and concatenated branches keep the rest; accept less or use a larger ratio"


def plan_warnings(plan: Any, *, cause: str | None = None) -> list[str]:
    """Messages about a degenerate plan (empty list when it looks sound).

    Checks (each gives at most one message, naming the groups):

    * the plan removes nothing although ``plan.meta["ratio"] > 0`` (says why:
      local rounding, ``min_keep``, ``round_to``, a budget below one unit), or
      less than half of that ratio (``min_keep`` or rounding ate the rest);
    * a group keeps fewer units than the plan's ``meta["min_keep"]`` allows
      (default 1: no group may be emptied);
    * a group of at least ``BOTTLENECK_MIN_SIZE`` units keeps only 1 to
      ``BOTTLENECK_MAX_LEFT``: a bottleneck that usually ruins accuracy.

    Parameters
    ----------
    plan : Plan
        Any plan (from :func:`xprune.select` or built otherwise).
    cause : str, optional
        Why nothing was removed, when the caller knows better than the plan's
        ``meta`` tells (``select`` passes it for MAC / parameter budgets).

    Returns
    -------
    list of str
        One sentence each: what, why, what to do.
    """
    out: list[str] = []
    sizes = dict(plan.sizes)
    if not sizes:
        return out
    meta = plan.meta or {}
    ratio = meta.get("ratio")
    if isinstance(ratio, (int, float)) and ratio > 0 and plan.n_removed == 0:
        out.append(f"{_call(meta)} removes nothing: {cause or _why_nothing(plan)}.")
    elif isinstance(ratio, (int, float)) and ratio > 0:
        achieved, of = _achieved(plan)
        if achieved < ratio / 2:
            out.append(
                f"{_call(meta)} removes only {achieved:.3g} of {of}, less than half of the ratio asked: "
                f"{_why_short(plan)}."
            )
    min_keep = meta.get("min_keep", 1)
    if not isinstance(min_keep, (int, float)) or isinstance(min_keep, bool):
        min_keep = 1
    under, narrow = [], []
    for name, size in sizes.items():
        kept = size - len(set(plan.remove.get(name, ())))
        floor = keep_floor(size, min_keep)
        if kept < floor:
            under.append((name, kept, size, floor))
        elif size >= BOTTLENECK_MIN_SIZE and kept <= BOTTLENECK_MAX_LEFT:
            narrow.append((name, kept, size))
    if len(under) == 1:
        name, kept, size, floor = under[0]
        out.append(
            f"the plan leaves group {name!r} with {kept} of its {size} units, fewer than min_keep={min_keep!r} "
            f"allows ({floor}); rebuild it with xprune.select(..., min_keep=...) rather than apply it."
        )
    elif under:
        out.append(
            f"the plan leaves {len(under)} groups with fewer units than min_keep={min_keep!r} allows: "
            f"{_listing([f'{n} ({k} of {s}, at least {f})' for n, k, s, f in under])}; rebuild it with "
            "xprune.select(..., min_keep=...) rather than apply it."
        )
    fix = "keep a share of every group (e.g. min_keep=0.1), use scope='local', or lower the ratio"
    if len(narrow) == 1:
        name, kept, size = narrow[0]
        out.append(
            f"the plan leaves group {name!r} with {kept} of its {size} units, a bottleneck that usually "
            f"ruins accuracy; {fix}."
        )
    elif narrow:
        out.append(
            f"the plan leaves {len(narrow)} groups with only 1-{BOTTLENECK_MAX_LEFT} of their "
            f"{BOTTLENECK_MIN_SIZE}+ units, bottlenecks that usually ruin accuracy: "
            f"{_listing([f'{n} ({k} of {s})' for n, k, s in narrow])}; {fix}."
        )
    return out


def warn_plan(messages: Iterable[str], *, stacklevel: int = 2) -> None:
    """Emit each message (from :func:`plan_warnings`) as a :class:`~xprune.errors.DegenerateResult` warning."""
    for msg in messages:
        warnings.warn(msg, DegenerateResult, stacklevel=stacklevel + 1)
