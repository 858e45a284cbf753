"""A :class:`Plan`: exactly which units go, JSON-serialisable, printed as a per-layer table."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import XpruneError

__all__ = ["Plan", "check_ratio"]


@dataclass
class Plan:
    """Which units to remove.

    Attributes
    ----------
    kind : str
        Unit kind the plan removes.
    remove : dict
        Group name -> sorted list of unit indices to remove (every group
        appears, possibly with an empty list).
    sizes : dict
        Group name -> number of units before pruning.
    members, roots : dict
        Coupled layers of each group and the layer it is pruned through.
    example : dict
        Shapes/dtypes of example inputs (to rebuild the dependency graph).
    meta : dict
        How the plan was made (criterion, ratio, scope, ...).
    """

    kind: str
    remove: dict[str, list[int]]
    sizes: dict[str, int]
    members: dict[str, list[str]] = field(default_factory=dict)
    roots: dict[str, str] = field(default_factory=dict)
    example: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        return sum(len(v) for v in self.remove.values())

    @property
    def n_total(self) -> int:
        return sum(self.sizes.values())

    @property
    def ratio(self) -> float:
        """Fraction of units removed."""
        return self.n_removed / self.n_total if self.n_total else 0.0

    def warnings(self) -> list[str]:
        """What looks degenerate about the plan, one sentence each (empty when it looks sound).

        The messages :func:`xprune.select` recorded in ``meta["warnings"]`` (and
        emitted as :class:`~xprune.errors.DegenerateResult` warnings); for a plan
        without that record (built by hand or by other code) the checks of
        :func:`xprune.checks.plan_warnings` are run now. Nothing is emitted here.
        """
        if isinstance(self.meta.get("warnings"), list):
            return [str(m) for m in self.meta["warnings"]]
        from .checks import plan_warnings

        return plan_warnings(self)

    def keep(self, name: str) -> list[int]:
        """Indices of the units of group ``name`` that stay."""
        gone = set(self.remove[name])
        return [i for i in range(self.sizes[name]) if i not in gone]

    def to_dict(self) -> dict[str, Any]:
        return {
            "xprune": "plan",
            "kind": self.kind,
            "remove": self.remove,
            "sizes": self.sizes,
            "members": self.members,
            "roots": self.roots,
            "example": self.example,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        if d.get("xprune") != "plan":
            raise XpruneError("not an xprune plan (missing 'xprune': 'plan')")
        return cls(
            d["kind"],
            {k: list(map(int, v)) for k, v in d["remove"].items()},
            {k: int(v) for k, v in d["sizes"].items()},
            d.get("members", {}),
            d.get("roots", {}),
            d.get("example"),
            d.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON (atomically)."""
        from ._io import atomic_write

        atomic_write(path, json.dumps(self.to_dict(), indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.exists():
            raise XpruneError(f"no plan file at {path}")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise XpruneError(
                f"{path} is not a readable plan file (truncated or corrupt?): {e}; write it again with Plan.save"
            ) from e
        if not isinstance(d, dict):
            raise XpruneError(f"{path} is not an xprune plan (a JSON object written by Plan.save)")
        return cls.from_dict(d)

    def __str__(self) -> str:
        width = max([len(n) for n in self.sizes] + [5])
        lines = [
            f"Plan: remove {self.n_removed} of {self.n_total} {self.kind} ({100 * self.ratio:.1f}%)"
            + (f", criterion {self.meta['criterion']}" if self.meta.get("criterion") else ""),
            f"  {'layer':<{width}}  {'before':>7}  {'removed':>7}  {'after':>7}",
        ]
        for name, size in self.sizes.items():
            r = len(self.remove[name])
            lines.append(f"  {name:<{width}}  {size:>7}  {r:>7}  {size - r:>7}")
        return "\n".join(lines)


def check_ratio(ratio: float) -> None:
    """Raise :class:`XpruneError` unless ``ratio`` is a number in [0, 1)."""
    if not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise XpruneError(f"ratio must be a number in [0, 1), got {ratio!r}")
