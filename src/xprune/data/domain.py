"""Class subsets: domain restriction of splits and models, and class-based pretrain / task splits.

Domain restriction follows Hatefi et al. (2024), "Pruning by Explaining
Revisited": :func:`restrict` keeps only the samples of a few task classes and
:class:`RestrictedModel` masks the logits of every other class, so a model
trained on all classes can be pruned and evaluated for a sub-task.
:func:`split_classes` cuts a dataset by class for the transfer setting of
Yeom et al. (2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError
from .containers import Dataset, Split, _class_ids

__all__ = ["restrict", "RestrictedModel", "restrict_model", "split_classes"]


def restrict(split: Split, classes: Sequence[int | str]) -> Split:
    """Keep only the samples whose label is in ``classes``.

    Parameters
    ----------
    split : Split
        Split to filter.
    classes : sequence of int or str
        Class indices or names of the task.

    Returns
    -------
    Split
        The matching samples in their original order. Labels are unchanged
        (still indices into the full ``split.classes``), so a model trained
        on all classes can be evaluated directly, e.g. through
        :class:`RestrictedModel`.
    """
    ids = torch.tensor(_class_ids(classes, split.classes), dtype=torch.int64, device=split.y.device)
    return split[torch.isin(split.y, ids)]


class RestrictedModel(nn.Module):
    """Wrap a classifier so that it can only predict a subset of its classes.

    The forward pass returns the wrapped model's logits with the logit of
    every class *not* in ``classes`` replaced by a large negative constant,
    ``torch.finfo(dtype).min / 2`` (half the most negative finite value, so
    sums and softmax stay finite and free of NaN). ``argmax`` therefore only
    chooses among ``classes``, and a softmax puts (numerically) zero mass on
    the others. Output shape is unchanged: ``[B, num_classes]``.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``[B, num_classes]``.
    classes : sequence of int
        Indices of the task classes.

    Attributes
    ----------
    model : nn.Module
        The wrapped model (its parameters are shared, not copied).
    classes : tuple of int
        The task classes, sorted.
    """

    def __init__(self, model: nn.Module, classes: Sequence[int]):
        super().__init__()
        ids = sorted(int(c) for c in (classes.tolist() if isinstance(classes, torch.Tensor) else classes))
        if not ids:
            raise XpruneError("RestrictedModel needs at least one class")
        if ids[0] < 0 or len(set(ids)) != len(ids):
            raise XpruneError(f"classes must be distinct non-negative indices; got {list(classes)}")
        self.model = model
        self.classes = tuple(ids)

    def mask(self, num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask ``[num_classes]`` that is True for the task classes."""
        if self.classes[-1] >= num_classes:
            raise XpruneError(f"RestrictedModel classes {list(self.classes)} exceed the model's {num_classes} outputs")
        m = torch.zeros(num_classes, dtype=torch.bool, device=device)
        m[list(self.classes)] = True
        return m

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        logits = self.model(*args, **kwargs)
        fill = torch.finfo(logits.dtype).min / 2
        return logits.masked_fill(~self.mask(logits.shape[-1], logits.device), fill)

    def extra_repr(self) -> str:
        return f"classes={list(self.classes)}"


def restrict_model(model: nn.Module, classes: Sequence[int]) -> RestrictedModel:
    """Return ``RestrictedModel(model, classes)``; see :class:`RestrictedModel`."""
    return RestrictedModel(model, classes)


# --------------------------------------------------------------------------- transfer splits


def _select_remap(split: Split, ids: list[int], names: list[str]) -> Split:
    mask = torch.isin(split.y, torch.tensor(ids, dtype=torch.int64, device=split.y.device))
    lookup = torch.full((split.num_classes,), -1, dtype=torch.int64, device=split.y.device)
    lookup[ids] = torch.arange(len(ids), device=split.y.device)
    return Split(split.X[mask], lookup[split.y[mask]], list(names))


def split_classes(
    dataset: Dataset, pretrain_classes: Sequence[int | str], task_classes: Sequence[int | str]
) -> tuple[Dataset, Dataset]:
    """Cut a dataset into a pretraining dataset and a task dataset by class.

    Used for the transfer setting of Pruning by Explaining (Yeom et al.,
    2021), e.g. Fashion-MNIST classes 0-4 to pretrain and 5-9 as the task.

    Parameters
    ----------
    dataset : Dataset
        Source dataset (already split and normalised).
    pretrain_classes, task_classes : sequence of int or str
        Disjoint class indices or names.

    Returns
    -------
    (Dataset, Dataset)
        Pretraining and task datasets. In each, labels are **remapped** to
        ``0..k-1`` in the order the classes are given (so
        ``task_classes=(5, 6, 7)`` turns label 5 into 0, 6 into 1, 7 into 2),
        and ``classes`` holds the corresponding names. Splits, normalisation
        statistics and ``input_shape`` are those of ``dataset``; names get the
        suffix ``[pretrain]`` / ``[task]``.
    """
    pre = _class_ids(pretrain_classes, dataset.classes)
    task = _class_ids(task_classes, dataset.classes)
    overlap = set(pre) & set(task)
    if overlap:
        raise XpruneError(f"pretrain_classes and task_classes overlap in {sorted(overlap)}")

    def make(ids: list[int], tag: str) -> Dataset:
        names = [dataset.classes[i] for i in ids]
        return Dataset(
            train=_select_remap(dataset.train, ids, names),
            val=_select_remap(dataset.val, ids, names),
            test=_select_remap(dataset.test, ids, names),
            name=f"{dataset.name}[{tag}]",
            input_shape=dataset.input_shape,
            classes=names,
            mean=dataset.mean,
            std=dataset.std,
            normalization=dict(dataset.normalization or {}),
        )

    return make(pre, "pretrain"), make(task, "task")
