"""Small, offline datasets for experiments, plus reference sampling and domain restriction.

:func:`load` returns a :class:`Dataset` (stratified ``train`` / ``val`` /
``test`` :class:`Split` s) for a built-in name (``digits``, ``mnist``,
``fashion-mnist``, ``circles``, ``moons``, ``blobs``, ``folder``; see
:func:`available`) or a ``.npz`` / ``.pt`` / ``.pth`` file.
:func:`reference_samples` draws ``n_per_class`` samples per class;
:func:`restrict` / :class:`RestrictedModel` restrict data and models to task
classes (Hatefi et al., 2024, "Pruning by Explaining Revisited");
:func:`split_classes` cuts a dataset by class for the transfer setting
(Yeom et al., 2021).

Inputs are normalised as ``load(..., normalize=)`` asks: by default
(``"auto"``) the built-in named datasets are standardised with their train
split's mean and std, files and image folders are kept as stored; what was
applied is recorded in ``Dataset.normalization`` and :func:`save_normalization`
writes it for reuse. The table of datasets, the conventions (shapes, dtypes,
stratified splits, normalisation) and the module map are in ``docs/data.md``.
"""

from __future__ import annotations

# Private names below are re-exported for the modules and tests that import them from xprune.data.
from .builtin import (  # noqa: F401 - re-exported, see above
    DATASETS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_ROOT,
    _digits_arrays,
    _mnist_arrays,
    available,
)
from .containers import Dataset, Split, _class_ids  # noqa: F401 - re-exported, see above
from .domain import RestrictedModel, restrict, restrict_model, split_classes
from .files import IMAGE_EXTENSIONS, load_file, load_folder  # noqa: F401 - re-exported, see above
from .loading import load
from .normalization import NORMALIZE_METHODS, save_normalization
from .reference import reference_indices, reference_samples

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "available",
    "load",
    "save_normalization",
    "NORMALIZE_METHODS",
    "load_folder",
    "load_file",
    "reference_indices",
    "reference_samples",
    "restrict",
    "RestrictedModel",
    "restrict_model",
    "split_classes",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_ROOT",
]
