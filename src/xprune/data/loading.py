"""``load``: fetch a named dataset or a data file, split it stratified into train / val / test, normalise as asked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, XpruneError
from . import normalization as _norm
from .builtin import _FILE_SUFFIXES, _ROOT_DATASETS, DATASETS, _no_kwargs, _Raw, available
from .containers import Dataset, Split
from .files import _read_file

#: Named datasets whose inputs ``normalize="auto"`` standardises (not ``"folder"``: user images).
_STANDARDISED_BY_DEFAULT = frozenset(DATASETS) - {"folder"}

__all__ = ["load"]


def _stratified_split(y: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(y)-1`` into (rest, held-out) stratified by ``y``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    if not 0 < fraction < 1:
        raise XpruneError(f"{what} must be in [0, 1); got {fraction}")
    counts = np.bincount(y)
    stratify = y if (counts[counts > 0] >= 2).all() else None
    try:
        rest, held = train_test_split(idx, test_size=fraction, stratify=stratify, random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot carve a stratified {what}={fraction} out of {len(y)} samples "
            f"of {len(counts[counts > 0])} classes ({exc}); use a larger fraction or more data"
        ) from None
    return np.sort(rest), np.sort(held)


def load(
    name: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float | None = None,
    normalize: Any = "auto",
    **kwargs: Any,
) -> Dataset:
    """Load a dataset and split it into train / val / test.

    Parameters
    ----------
    name : str or path-like
        One of :func:`available` (``"digits"``, ``"mnist"``,
        ``"fashion-mnist"``, ``"circles"``, ``"moons"``, ``"blobs"``,
        ``"folder"``) or the path of a ``.npz`` / ``.pt`` / ``.pth`` file (see
        :func:`load_file`).
    root : str or path-like, optional
        Data folder: required for ``"folder"``; for ``"fashion-mnist"`` it
        overrides the environment variable ``XPRUNE_FASHION_MNIST`` and the
        default ``/usr/share/datasets/fashion-mnist``.
    seed : int, default 0
        Seed of the stratified splits (and of the toy data generators).
    val_fraction : float, default 0.1
        Fraction of the whole dataset used for validation (0 gives an empty
        ``val`` split). For datasets with an official test split
        (``fashion-mnist``) it is the fraction of the official train split.
    test_fraction : float, optional
        Fraction of the whole dataset held out for testing. ``None`` means the
        official test split where there is one (Fashion-MNIST: 10000 images)
        and 0.2 otherwise. A float for Fashion-MNIST pools its train and test
        images and re-splits them.
    normalize : str, dict, path-like or bool, default "auto"
        What to do to the inputs after splitting (recorded in
        ``Dataset.normalization``, described by ``Dataset.describe_normalization()``):

        * ``"auto"``: ``"mean-std"`` for the built-in named datasets (digits,
          mnist, fashion-mnist, circles, moons, blobs), as xprune's built-in
          models (:func:`xprune.models.pretrained`) are trained on them
          standardised; ``"none"`` for ``.npz`` / ``.pt`` files and image
          folders, which are fed to the model as stored.
        * ``"mean-std"`` (or ``True``): subtract the per-channel (images) /
          per-feature (tabular) mean of the **train split** and divide by its
          std (unbiased, as ``torch.std``; a constant channel keeps std 1),
          for all three splits.
        * ``"none"`` (or ``False`` / ``None``): inputs as stored.
        * a dict ``{"mean": [...], "std": [...]}``: apply these statistics (one
          value per channel or feature, or one number for all), e.g. the ones
          an image model was trained with.
        * the path of a JSON file holding such a dict, e.g. written by
          :func:`save_normalization`.

        ``Dataset.mean`` / ``Dataset.std`` hold the statistics applied (``None`` for none).
    **kwargs
        Loader options: ``n_samples``, ``noise`` for the toy sets (plus
        ``factor`` for circles and ``centers`` for blobs, default 4 classes);
        ``image_size``, ``grayscale`` for ``"folder"``.

    Returns
    -------
    Dataset
        With ``float32`` inputs (images ``[N, C, H, W]``, tabular ``[N, F]``)
        and ``int64`` labels; the three splits are disjoint and identical for
        the same arguments.

    Raises
    ------
    XpruneError
        Unknown dataset name (the message lists the known ones), or a bad
        ``normalize`` (unknown method, std <= 0, unreadable JSON); a ``ValueError``.
    DataError
        Given statistics whose number of values does not match the data's channels.
    FileNotFoundError
        Missing data files (the message says how to install or point to them).
    """
    key = os.fspath(name)
    choice = _norm.parse(normalize, builtin=key in _STANDARDISED_BY_DEFAULT)
    if key in DATASETS:
        loader = DATASETS[key]
        opts = dict(kwargs)
        if key in _ROOT_DATASETS:
            opts["root"] = root
        elif root is not None:
            raise XpruneError(f"dataset {key!r} takes no root= (only {', '.join(sorted(_ROOT_DATASETS))} do)")
        if getattr(loader, "_wants_seed", False):
            opts["seed"] = seed
        raw = loader(**opts)
        display = key
    elif key.lower().endswith(_FILE_SUFFIXES) or Path(key).is_file():
        _no_kwargs(key, kwargs)
        whole, scaling = _read_file(key)
        raw = _Raw(whole.X.numpy(), whole.y.numpy(), whole.classes, input_scaling=scaling)
        display = Path(key).name
    else:
        raise XpruneError(
            f"unknown dataset {key!r}; known datasets: {', '.join(available())}, "
            "or the path of a .npz / .pt / .pth file"
        )

    X, y = raw.X, raw.y
    if raw.X_test is not None and test_fraction is None:
        train_pool, val_idx = _stratified_split(y, val_fraction, seed, "val_fraction")
        parts = {
            "train": (X[train_pool], y[train_pool]),
            "val": (X[val_idx], y[val_idx]),
            "test": (raw.X_test, raw.y_test),
        }
    else:
        if raw.X_test is not None:
            X = np.concatenate([X, raw.X_test])
            y = np.concatenate([y, raw.y_test])
        tf = 0.2 if test_fraction is None else float(test_fraction)
        if tf + val_fraction >= 1:
            raise XpruneError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {tf}")
        pool, test_idx = _stratified_split(y, tf, seed, "test_fraction")
        # val_fraction is relative to the whole dataset, so rescale it for the remaining pool.
        rel = val_fraction / (1.0 - tf) if val_fraction > 0 else 0.0
        tr, va = _stratified_split(y[pool], rel, seed, "val_fraction")
        train_idx, val_idx = pool[tr], pool[va]
        parts = {
            "train": (X[train_idx], y[train_idx]),
            "val": (X[val_idx], y[val_idx]),
            "test": (X[test_idx], y[test_idx]),
        }

    # Fancy indexing above copied the cached raw arrays, so splits never share their memory.
    tensors = {
        k: (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)), torch.from_numpy(b.astype(np.int64)))
        for k, (a, b) in parts.items()
    }
    tensors, mean, std, record = _norm.apply(tensors, choice, raw.input_scaling)

    classes = list(raw.classes)
    splits = {k: Split(a, b, list(classes)) for k, (a, b) in tensors.items()}
    return Dataset(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        name=display,
        input_shape=tuple(tensors["train"][0].shape[1:]),
        classes=classes,
        mean=mean,
        std=std,
        normalization=record,
    )
