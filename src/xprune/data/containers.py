"""Data containers: :class:`Split` (inputs, labels, class names) and :class:`Dataset` (train / val / test).

Also holds the label checks and class-name resolution shared by the other
``xprune.data`` modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import _inputs
from ..errors import DataError, XpruneError
from .normalization import describe, record_from_stats

__all__ = ["Split", "Dataset"]


def _check_integral(y: torch.Tensor) -> None:
    """Refuse labels that are not class indices (fractional floats would be truncated silently)."""
    _inputs.integral_labels(y)


@dataclass
class Split:
    """One split of a dataset: inputs, labels and the dataset's class names.

    Parameters
    ----------
    X : torch.Tensor
        ``float32`` inputs, ``[N, C, H, W]`` for images or ``[N, F]`` for
        tabular data.
    y : torch.Tensor
        ``int64`` labels of shape ``[N]``; each is an index into ``classes``.
    classes : list of str
        Names of *all* classes of the dataset (not only those present in this
        split), so that ``y`` can be interpreted on its own.

    Notes
    -----
    Indexing (``split[i]``, ``split[a:b]``, ``split[index_tensor]``,
    ``split[bool_mask]``) always returns a :class:`Split`; an integer index
    keeps the batch dimension (a split of length one).
    """

    X: torch.Tensor
    y: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.X, torch.Tensor):
            self.X = torch.as_tensor(np.asarray(self.X))
        if not isinstance(self.y, torch.Tensor):
            self.y = torch.as_tensor(np.asarray(self.y))
        if self.X.dtype != torch.float32:  # integer pixels and other float widths alike
            self.X = self.X.float()
        if self.y.dtype != torch.int64:
            _check_integral(self.y)
            self.y = self.y.long()
        if self.y.dim() != 1:
            raise DataError(f"labels y must be one-dimensional [N]; got shape {tuple(self.y.shape)}")
        if len(self.X) != len(self.y):
            raise DataError(f"X holds {len(self.X)} samples but y holds {len(self.y)} labels; they must match")
        self.classes = [str(c) for c in self.classes]
        if not self.classes and len(self.y):
            self.classes = [str(i) for i in range(int(self.y.max()) + 1)]
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            raise DataError(
                f"labels must lie in 0..{len(self.classes) - 1} (one per class name); "
                f"got range {int(self.y.min())}..{int(self.y.max())}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes of the dataset (``len(classes)``), present here or not."""
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension."""
        return tuple(self.X.shape[1:])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: Any) -> Split:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        if isinstance(index, (list, np.ndarray)):
            index = torch.as_tensor(np.asarray(index))
        return Split(self.X[index], self.y[index], list(self.classes))

    def __repr__(self) -> str:
        return (
            f"Split(n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, device={self.X.device})"
        )

    def subset(self, indices: Any) -> Split:
        """Return the samples at ``indices``.

        Parameters
        ----------
        indices : sequence of int, numpy array, ``int64`` tensor or bool mask
            Positions to keep, in the order given.

        Returns
        -------
        Split
            A new split (tensors are copies when ``indices`` is not a slice).
        """
        return self[indices]

    def batches(
        self, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over ``(X, y)`` mini-batches.

        Parameters
        ----------
        batch_size : int, default 128
            Samples per batch; the last batch may be smaller.
        shuffle : bool, default False
            Visit the samples in a random order drawn from ``seed`` (the global
            random state is not touched).
        seed : int, default 0
            Seed of the shuffling order.

        Yields
        ------
        X : torch.Tensor
            ``float32`` batch of inputs, ``[B, *input_shape]``.
        y : torch.Tensor
            ``int64`` batch of labels, ``[B]``.
        """
        if batch_size < 1:
            raise XpruneError(f"batch_size must be >= 1; got {batch_size}")
        n = len(self)
        if shuffle:
            gen = torch.Generator().manual_seed(int(seed))
            order = torch.randperm(n, generator=gen).to(self.y.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                yield self.X[idx], self.y[idx]
        else:
            for start in range(0, n, batch_size):
                yield self.X[start : start + batch_size], self.y[start : start + batch_size]

    def to(self, device: torch.device | str) -> Split:
        """Return a copy of the split with ``X`` and ``y`` on ``device``."""
        return Split(self.X.to(device), self.y.to(device), list(self.classes))

    def class_counts(self) -> torch.Tensor:
        """Number of samples of each class, ``int64`` tensor of shape ``[num_classes]``."""
        return torch.bincount(self.y.cpu(), minlength=self.num_classes)


@dataclass
class Dataset:
    """A dataset split into ``train``, ``val`` and ``test``.

    Attributes
    ----------
    train, val, test : Split
        The three disjoint splits (``val`` may be empty when ``val_fraction=0``).
    name : str
        Name the dataset was loaded under.
    input_shape : tuple of int
        Shape of one sample without the batch dimension, e.g. ``(1, 28, 28)``.
    classes : list of str
        Names of all classes; labels index into this list.
    mean, std : torch.Tensor or None
        Per-channel (images, shape ``[C]``) or per-feature (tabular, shape
        ``[F]``) statistics the inputs were normalised with (``(x - mean) / std``),
        fitted on the train split or given; ``None`` when the data was not normalised.
    normalization : dict
        JSON-able record of what was applied to the inputs: ``{"method": "none"}``,
        ``{"method": "mean-std", "mean": [...], "std": [...], "fitted_on": "train split", ...}``
        or ``{"method": "given", "mean": [...], "std": [...], "source": ...}``; also
        ``"requested"`` (the ``normalize=`` asked for) and, when the stored values
        were rescaled on reading, ``"input_scaling"``. Derived from ``mean`` /
        ``std`` when not given. :func:`xprune.data.save_normalization` writes it
        for ``load(..., normalize=path)``.
    """

    train: Split
    val: Split
    test: Split
    name: str
    input_shape: tuple[int, ...]
    classes: list[str]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    normalization: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.normalization is None:
            self.normalization = record_from_stats(self.mean, self.std)

    def describe_normalization(self, *, cli: bool = False) -> str:
        """One line saying what was applied to the inputs and how to change it.

        Parameters
        ----------
        cli : bool, default False
            Name the command-line option (``--normalize none``) instead of the
            Python argument (``normalize='none'``).

        Returns
        -------
        str
            E.g. ``"inputs standardised with the train split's mean and std per
            channel (mean [0.3], std [0.4]); pass normalize='none' to feed them as stored"``.
        """
        return describe(self.normalization or {}, cli=cli)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    def splits(self) -> dict[str, Split]:
        """The splits as a ``{"train": ..., "val": ..., "test": ...}`` dict."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def _stat_shape(self, X: torch.Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (X.dim() - 2)

    def normalize(self, X: torch.Tensor) -> torch.Tensor:
        """Apply the dataset's normalisation to raw inputs ``X`` (``[N, *input_shape]``)."""
        if self.mean is None or self.std is None:
            return X
        shape = self._stat_shape(X)
        return (X - self.mean.to(X).view(shape)) / self.std.to(X).view(shape)

    def denormalize(self, X: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation, e.g. to display images (``[N, *input_shape]``)."""
        if self.mean is None or self.std is None:
            return X
        shape = self._stat_shape(X)
        return X * self.std.to(X).view(shape) + self.mean.to(X).view(shape)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )


def _class_ids(classes: Any, names: list[str]) -> list[int]:
    """Resolve class indices or names to a list of indices into ``names``."""
    if isinstance(classes, (int, str)):
        classes = [classes]
    out: list[int] = []
    for c in classes:
        if isinstance(c, torch.Tensor):
            c = c.item()
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise XpruneError(f"unknown class {c!r}; classes are {names}")
            out.append(names.index(c))
            continue
        if isinstance(c, str):
            c = names.index(c) if c in names else int(c)
        c = int(c)
        if not 0 <= c < len(names):
            raise XpruneError(f"class index {c} out of range 0..{len(names) - 1}")
        out.append(c)
    if len(set(out)) != len(out):
        raise XpruneError(f"classes contain duplicates: {list(classes)}")
    return out
