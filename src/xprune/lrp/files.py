"""Composite files: an LRP composite saved as JSON, accepted wherever a composite is.

A composite file stores the *specification* that :func:`xprune.lrp.composite`
resolves, never Python objects, so it is readable, diffable and safe to load::

    {
      "xprune": "composite",
      "version": 1,
      "spec": {"low": ["gamma", {"gamma": 0.31}], "mid": ["zplus", {}],
               "high": ["epsilon", {"epsilon": 0.002}], "fc": ["epsilon", {"epsilon": 1e-06}]},
      "kwargs": {"groups": {"low": ["features.0"], "mid": ["features.4"],
                            "high": ["features.8"], "fc": ["classifier.0", "classifier.2"]}},
      "options": {"aggregate": "pxp", "normalize": null},
      "meta": {...}
    }

``spec`` is anything the resolver accepts that JSON can hold (a preset name,
``[name, kwargs]``, or a dict of layer groups to rules, rules written as
``[name, kwargs]``); ``kwargs`` are the resolver's keyword arguments (for a
layer-group composite, ``groups`` pins the exact layers of each group, so the
file assigns the same rules even if the automatic split changes). ``options``
and ``meta`` are not used to build the composite: ``options`` records the
criterion/scoring options it was tuned with (see :func:`xprune.tune`),
``meta`` anything else.

Use: ``xprune.score(model, data, "lrp", composite="best_composite.json")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import XpruneError

__all__ = ["read_composite", "is_composite_path", "spec_from_json", "jsonable", "FORMAT_VERSION"]

FORMAT_VERSION = 1


def is_composite_path(spec: Any) -> bool:
    """Whether ``spec`` names a composite file (a path ending in ``.json``)."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).lower().endswith(".json")


def read_composite(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed content of a composite file (checked), without resolving it."""
    path = Path(path)
    if not path.exists():
        raise XpruneError(f"no composite file at {path}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise XpruneError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("xprune") != "composite" or "spec" not in doc:
        raise XpruneError(f"{path} is not an xprune composite file (expected 'xprune': 'composite' and a 'spec')")
    if int(doc.get("version", 1)) > FORMAT_VERSION:
        raise XpruneError(
            f"{path} has composite file version {doc['version']}; this xprune reads up to {FORMAT_VERSION}"
        )
    return doc


def spec_from_json(spec: Any) -> Any:
    # JSON has no tuples: a top-level [name, kwargs] pair is the (name, kwargs) form
    if isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return (spec[0], spec[1])
    return spec


def jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    raise XpruneError(
        f"a composite file stores specs made of names, numbers, lists and dicts; got {type(x).__name__} "
        f"({x!r}); write rules as [name, kwargs]"
    )
