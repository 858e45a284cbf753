"""Trained reference models, cached on disk: default training settings, cache keys and the weights cache.

:func:`pretrained` builds an architecture, trains it on a dataset with the
settings of ``DEFAULT_TRAINING`` and stores the weights (safetensors) plus a
JSON record under :func:`cache_dir`; later calls load them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..data import Dataset, load
from ..errors import XpruneError
from ._common import _seeded
from .train import accuracy, train

__all__ = ["pretrained", "cache_dir", "training_config", "DEFAULT_TRAINING", "FORMAT_VERSION"]

#: Version of the cache format; part of every cache key.
FORMAT_VERSION = 1


#: Default training settings by (architecture, dataset); ``("*", dataset)`` and
#: ``(arch, "*")`` are fall-backs. Tuned to train in seconds to ~1 min on 2 CPU
#: cores: digits >= 0.95 test accuracy (mlp/vgg/resnet), >= 0.85 (vit).
DEFAULT_TRAINING: dict[tuple[str, str], dict[str, Any]] = {
    ("*", "*"): {"epochs": 10, "lr": 1e-3, "batch_size": 64, "weight_decay": 1e-4, "warmup": 0.0},
    ("mlp", "*"): {"epochs": 20},
    ("vit", "*"): {"epochs": 20, "lr": 2e-3, "warmup": 0.05, "weight_decay": 0.05},
    ("*", "digits"): {"epochs": 15},
    ("mlp", "digits"): {"epochs": 30},
    ("vit", "digits"): {"epochs": 20},
    ("*", "mnist"): {"epochs": 10},
    ("vit", "mnist"): {"epochs": 20},
    ("resnet", "mnist"): {"epochs": 5},
    ("*", "fashion-mnist"): {"epochs": 3, "batch_size": 128},
    ("vit", "fashion-mnist"): {"epochs": 5, "batch_size": 128},
    ("resnet", "fashion-mnist"): {"epochs": 2, "batch_size": 128},
    ("*", "circles"): {"epochs": 30, "lr": 3e-3, "batch_size": 32},
    ("*", "moons"): {"epochs": 30, "lr": 3e-3, "batch_size": 32},
    ("*", "blobs"): {"epochs": 30, "lr": 3e-3, "batch_size": 32},
}


def training_config(arch: str, dataset: str, **overrides: Any) -> dict[str, Any]:
    """Default training settings for ``arch`` on ``dataset`` (see ``DEFAULT_TRAINING``), with overrides."""
    cfg: dict[str, Any] = {}
    for key in (("*", "*"), (arch, "*"), ("*", dataset), (arch, dataset)):
        cfg.update(DEFAULT_TRAINING.get(key, {}))
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The weights cache folder: ``path``, else ``$XPRUNE_CACHE``, else ``~/.cache/xprune``."""
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("XPRUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "xprune"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "data"


def _cache_key(arch: str, data_id: dict[str, Any], seed: int, model_config: dict, train_cfg: dict) -> str:
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "arch": arch,
            "data": data_id,
            "seed": seed,
            "model": model_config,
            "train": train_cfg,
        },
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return f"{arch}-{_slug(str(data_id.get('name', 'data')))}-seed{seed}-v{FORMAT_VERSION}-{digest}"


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` atomically (see :func:`xprune._io.atomic_write`)."""
    atomic_write(path, payload)


def _save_cached(model: nn.Module, folder: Path, key: str, meta: dict[str, Any]) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    payload = save(state, metadata={"key": key, "format": str(FORMAT_VERSION)})
    meta = dict(meta, key=key, format=FORMAT_VERSION, sha256=hashlib.sha256(payload).hexdigest())
    # Weights first, metadata last: the JSON (with the weights' hash) marks a complete entry.
    _atomic_write(folder / f"{key}.safetensors", payload)
    _atomic_write(folder / f"{key}.json", json.dumps(meta, indent=2, sort_keys=True, default=str).encode())


def _load_cached(model: nn.Module, folder: Path, key: str) -> dict[str, Any] | None:
    """Load cached weights into ``model``; ``None`` (with a warning if damaged) when unusable."""
    from safetensors.torch import load

    meta_path, weights_path = folder / f"{key}.json", folder / f"{key}.safetensors"
    if not meta_path.is_file() and not weights_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        payload = weights_path.read_bytes()
        if meta.get("key") != key or meta.get("format") != FORMAT_VERSION:
            raise XpruneError("metadata does not belong to this cache key")
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise XpruneError("weights file does not match its recorded hash (partial or corrupt)")
        state = load(payload)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - any damage means: retrain and overwrite
        warnings.warn(f"ignoring unusable cache entry {folder / key}.*: {exc}; retraining", stacklevel=3)
        return None
    return meta


def _train_cached(
    arch: str,
    data: Dataset,
    data_id: dict[str, Any],
    *,
    seed: int,
    train_cfg: dict[str, Any],
    cache: Path | None,
    progress: bool,
    arch_kwargs: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    from . import build

    with _seeded(seed):
        model = build(arch, input_shape=data.input_shape, num_classes=data.num_classes, **arch_kwargs)
    key = _cache_key(arch, data_id, seed, model.config, train_cfg)  # type: ignore[arg-type]  # the config dict of xprune.models
    if cache is not None:
        meta = _load_cached(model, cache, key)
        if meta is not None:
            if progress:
                from rich.console import Console

                Console(soft_wrap=True).print(  # a path is not wrapped when the output is piped
                    f"[bold]{arch}[/] on {data.name}: loaded {cache / key}.safetensors "
                    f"(test accuracy {meta.get('test_accuracy', float('nan')):.4f})"
                )
            return model.eval(), meta
    history = train(
        model, data.train, val=data.val if len(data.val) else None, seed=seed, progress=progress, **train_cfg
    )
    model.eval()
    test_acc = accuracy(model, data.test)
    meta = {
        "arch": arch,
        "config": model.config,
        "data": data_id,
        "seed": seed,
        "train": train_cfg,
        "normalization": data.normalization,  # what the inputs it was trained on went through
        "test_accuracy": test_acc,
        "val_accuracy": history["val_accuracy"][-1] if history["val_accuracy"] else None,
        "seconds": history["seconds"],
        "torch": torch.__version__,
    }
    if progress:
        from rich.console import Console

        Console(soft_wrap=True).print(
            f"[bold]{arch}[/] on {data.name}: test accuracy {test_acc:.4f} ({history['seconds']:.1f} s)"
        )
    if cache is not None:
        _save_cached(model, cache, key, meta)
        meta = dict(meta, key=key)
    return model, meta


def _data_id(name: str, data_kwargs: dict[str, Any]) -> dict[str, Any]:
    ident: dict[str, Any] = {"name": str(name), **data_kwargs}
    path = Path(str(name))
    if path.suffix.lower() in (".npz", ".pt", ".pth") and path.is_file():
        st = path.stat()  # a changed file gets a new key
        ident.update(name=path.name, path=str(path.resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)
    if "normalize" not in data_kwargs and (str(name) == "folder" or "path" in ident):
        # files and folders are fed as stored by default (they were standardised before): a key of their own,
        # so weights cached for standardised inputs are never loaded for raw ones
        ident["normalize"] = "none"
    return ident


def pretrained(
    arch: str,
    dataset_name: str = "digits",
    *,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
    data_kwargs: dict[str, Any] | None = None,
    **arch_kwargs: Any,
) -> tuple[nn.Module, Dataset]:
    """A trained reference model for a dataset, loaded from or saved to the weights cache.

    Parameters
    ----------
    arch : str
        ``"mlp"``, ``"vgg"``, ``"resnet"`` or ``"vit"``.
    dataset_name : str, default "digits"
        Any name or file accepted by :func:`xprune.data.load`.
    seed : int, default 0
        Seeds the data split, the initialisation and the training.
    epochs, lr, batch_size : optional
        Override the defaults of ``DEFAULT_TRAINING`` for this arch/dataset.
    cache_dir : str or path-like, optional
        Cache folder; default ``$XPRUNE_CACHE`` or ``~/.cache/xprune``.
    use_cache : bool, default True
        ``False`` always trains and writes nothing.
    progress : bool, default True
        Show training progress and the resulting test accuracy.
    data_kwargs : dict, optional
        Extra arguments of :func:`xprune.data.load` (e.g. ``root``, ``n_samples``).
    **arch_kwargs
        Architecture arguments (e.g. ``hidden=(1000, 1000, 1000)``); the
        input size and ``num_classes`` come from the dataset.

    Returns
    -------
    (nn.Module, Dataset)
        The trained model in eval mode on CPU, and the dataset it was trained
        on, normalised as the model expects: :func:`xprune.data.load`'s default
        ``normalize="auto"`` standardises the built-in datasets with their train
        split's mean and std and keeps files and image folders as stored
        (``data_kwargs={"normalize": ...}`` chooses otherwise). What was
        applied is ``dataset.normalization``, also stored in the cache entry's JSON.

    Notes
    -----
    Cache entries are ``<key>.safetensors`` (weights) plus ``<key>.json``
    (config, data, training settings, test accuracy, hash of the weights). The
    key is ``{arch}-{dataset}-seed{seed}-v{format}-{hash}`` with a hash of
    the format version, full model config, data arguments and training
    settings. Both files are written atomically (temporary file, then
    ``os.replace``) and the JSON is written last and carries the weights'
    SHA-256, so an interrupted or corrupted entry is never loaded: it is
    reported with a warning and retrained.
    """
    data_kwargs = dict(data_kwargs or {})
    data = load(dataset_name, seed=seed, **data_kwargs)
    train_cfg = training_config(arch, _defaults_name(data.name), epochs=epochs, lr=lr, batch_size=batch_size)
    model, _ = _train_cached(
        arch,
        data,
        _data_id(dataset_name, data_kwargs),
        seed=seed,
        train_cfg=train_cfg,
        cache=_resolve_cache(cache_dir) if use_cache else None,
        progress=progress,
        arch_kwargs=arch_kwargs,
    )
    return model, data


def _defaults_name(name: str) -> str:
    """The dataset name to look up in ``DEFAULT_TRAINING`` (``"*"`` for files and folders)."""
    from ..data import DATASETS

    return name if name in DATASETS else "*"


def _resolve_cache(path: str | os.PathLike | None) -> Path:
    return cache_dir(path)
