"""Reference sets: exactly ``n_per_class`` random samples of each class (e.g. pruning reference data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import DataError, XpruneError
from .containers import Split, _class_ids

__all__ = ["reference_indices", "reference_samples"]


def reference_indices(
    split: Split, n_per_class: int, *, seed: int = 0, classes: Sequence[int | str] | None = None
) -> torch.Tensor:
    """Positions of exactly ``n_per_class`` random samples of each class.

    Parameters
    ----------
    split : Split
        Split to draw from.
    n_per_class : int
        Samples per class (>= 1).
    seed : int, default 0
        Seed of the draw; the global random state is not touched.
    classes : sequence of int or str, optional
        Classes to draw (indices or names); default all classes present in
        ``split``, in increasing label order.

    Returns
    -------
    torch.Tensor
        ``int64`` positions into ``split``, shape ``[len(classes) * n_per_class]``,
        grouped by class in the order of ``classes``.

    Raises
    ------
    DataError
        A class has fewer than ``n_per_class`` samples (names the class and
        the available count); a ``ValueError``.
    """
    if n_per_class < 1:
        raise XpruneError(f"n_per_class must be >= 1; got {n_per_class}")
    y = split.y.cpu()
    ids = sorted(torch.unique(y).tolist()) if classes is None else _class_ids(classes, split.classes)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in ids:
        pos = torch.nonzero(y == c).flatten()
        if len(pos) < n_per_class:
            raise DataError(
                f"class {c} ({split.classes[c]!r}) has only {len(pos)} samples, "
                f"fewer than n_per_class={n_per_class}; lower n_per_class or use a larger split"
            )
        perm = torch.randperm(len(pos), generator=gen)[:n_per_class]
        chosen.append(pos[perm])
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    return torch.cat(chosen)


def reference_samples(
    split: Split, n_per_class: int, *, seed: int = 0, classes: Sequence[int | str] | None = None
) -> Split:
    """Exactly ``n_per_class`` random samples of each class (e.g. pruning reference data).

    Parameters
    ----------
    split : Split
        Split to draw from (typically ``dataset.train``).
    n_per_class : int
        Samples per class.
    seed : int, default 0
        Seed of the draw: the same seed gives the same samples.
    classes : sequence of int or str, optional
        Classes to draw; default all classes present in ``split``.

    Returns
    -------
    Split
        ``len(classes) * n_per_class`` samples grouped by class; labels and
        class names unchanged. See :func:`reference_indices` for the positions.

    Raises
    ------
    DataError
        A class has fewer than ``n_per_class`` samples (a ``ValueError``).
    """
    return split[reference_indices(split, n_per_class, seed=seed, classes=classes).to(split.y.device)]
