"""Reading user data: ``.npz`` / ``.pt`` / ``.pth`` files and folders of images (one sub-folder per class)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, XpruneError, XpruneTypeError
from .containers import Split

__all__ = ["load_file", "load_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


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
    raise DataError(f"{source}: X must be [N, F], [N, H, W], [N, C, H, W] or [N, H, W, C]; got shape {X.shape}")


def _labels_and_classes(y: np.ndarray, classes: Any, source: str) -> tuple[np.ndarray, list[str]]:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{source}: y must be one-dimensional [N]; got shape {y.shape}")
    if classes is not None:
        classes = (
            [str(c) for c in np.asarray(classes).tolist()]
            if not isinstance(classes, list)
            else [str(c) for c in classes]
        )
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
    return _read_file(path)[0]


#: What :func:`load_file` does to ``uint8`` inputs, as recorded in ``Dataset.normalization["input_scaling"]``.
UINT8_SCALING = "uint8 values divided by 255 (to [0, 1])"


def _read_file(path: str | os.PathLike) -> tuple[Split, str | None]:
    """:func:`load_file`, plus how the stored values were rescaled (``None``: kept as stored)."""
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
        raise DataError(f"{path}: unsupported data file type {suffix!r}; use .npz, .pt or .pth")
    X = np.asarray(X)
    scaling = None
    if X.dtype == np.uint8:
        X = X.astype(np.float32) / 255.0
        scaling = UINT8_SCALING
    X = _as_images_or_table(X.astype(np.float32), str(path))
    y, classes = _labels_and_classes(y, classes, str(path))
    if len(X) != len(y):
        raise DataError(f"{path}: X holds {len(X)} samples but y holds {len(y)} labels")
    return Split(torch.from_numpy(np.ascontiguousarray(X)), torch.from_numpy(y), classes), scaling


def _parse_size(image_size: Any) -> tuple[int, int] | None:
    """``image_size`` as ``(H, W)``: an int, a pair of ints, or a string ``"32"`` / ``"32x24"`` (height x width)."""
    if image_size is None:
        return None
    size: Any = image_size
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        size = [p.strip() for p in parts] if len(parts) in (1, 2) else None
        try:
            size = [int(p) for p in size] if size else None
        except ValueError:
            size = None
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = [int(size)]
    elif (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)
    ):
        size = [int(v) for v in size]
    else:
        size = None
    if not size or any(v < 1 for v in size):
        raise XpruneError(
            f"image_size must be a positive int or (height, width) (on the command line: "
            f"--image-size 32 or 32x24); got {image_size!r}"
        )
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


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
    image_size : int, (int, int) or str, optional
        Resize every image to ``(H, W)`` (bilinear); an int gives a square, a
        string ``"32"`` or ``"32x24"`` (height x width) is read as such. When
        omitted all images must already share one size.
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
    XpruneError
        ``image_size`` that is not a positive size, ``grayscale`` that is not a bool.
    """
    from PIL import Image, UnidentifiedImageError

    size = _parse_size(image_size)
    if not isinstance(grayscale, (bool, np.bool_)):
        raise XpruneTypeError(f"grayscale must be True or False; got {type(grayscale).__name__} {grayscale!r}")
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
    mode = "L" if grayscale else "RGB"
    images: list[np.ndarray] = []
    labels: list[int] = []
    first: tuple[Path, tuple[int, int]] | None = None
    for label, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
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
                        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {file}: {exc}") from None
            hw = arr.shape[:2]
            if first is None:
                first = (file, hw)
            elif hw != first[1]:
                raise DataError(
                    f"image {file} has size {hw[0]}x{hw[1]} but {first[0]} has "
                    f"{first[1][0]}x{first[1][1]}; pass image_size= (--image-size on the command line) "
                    "to resize all images to one size"
                )
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    X = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels, dtype=torch.int64)
    return Split(X, y, [p.name for p in class_dirs])
