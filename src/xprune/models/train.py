"""Training, evaluation, a weights cache, and the transfer setting of Pruning by Explaining.

* :func:`train` -- full training run (AdamW with a cosine learning-rate schedule).
* :func:`fine_tune` -- short fine-tune for pruning schedules (Adam, constant rate).
* :func:`accuracy` -- top-1 accuracy in eval mode under ``no_grad``.
* :func:`pretrained` -- build + train a reference model for a dataset, cached on disk.
* :func:`transfer` -- pretrain on some classes, adapt to others with few samples
  (Yeom et al., 2021).

Determinism: model initialisation, shuffling and dropout draw from
``seed`` inside :func:`torch.random.fork_rng`, so results are reproducible on
CPU and the caller's global random state is left untouched. The number of
threads is never changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import time
import uuid
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from .. import _inputs
from .._io import atomic_write
from ..data import Dataset, Split, _class_ids, load, reference_indices, reference_samples, split_classes

__all__ = [
    "train",
    "fine_tune",
    "accuracy",
    "pretrained",
    "transfer",
    "TransferResult",
    "cache_dir",
    "output_layer",
    "replace_head",
    "DEFAULT_TRAINING",
    "FORMAT_VERSION",
]

#: Version of the cache format; part of every cache key.
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- helpers


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run a block with the global CPU RNG seeded, restoring the caller's state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _as_split(data: Any, what: str) -> Split:
    if isinstance(data, Split):
        return data
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[0], torch.Tensor)
        and isinstance(data[1], torch.Tensor)
    ):
        return Split(data[0], data[1])
    raise TypeError(f"{what} must be an xprune.data.Split or an (X, y) tensor pair; got {type(data).__name__}")


def _modes(model: nn.Module) -> dict[nn.Module, bool]:
    """The train/eval flag of every submodule (restored exactly by :func:`_restore_modes`)."""
    return {m: m.training for m in model.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, flag in modes.items():
        m.training = flag


def _progress(enabled: bool):
    """A rich progress bar (or a no-op stand-in when disabled)."""
    if not enabled:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        transient=False,
    )


# --------------------------------------------------------------------------- train / fine-tune / accuracy


def train(
    model: nn.Module,
    train_split: Split,
    *,
    val: Split | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device = "cpu",
    warmup: float = 0.0,
    label_smoothing: float = 0.0,
) -> dict[str, Any]:
    """Train a classifier with AdamW and a per-step cosine learning-rate schedule.

    Parameters
    ----------
    model : nn.Module
        Classifier mapping ``[B, *input_shape]`` to logits ``[B, num_classes]``;
        moved to ``device`` and trained in place.
    train_split : Split or (X, y)
        Training data (``float32`` inputs, ``int64`` labels).
    val : Split, optional
        Validation data; its accuracy is recorded (and shown) after each epoch.
    epochs : int, default 10
        Passes over ``train_split`` (shuffled each epoch).
    lr : float, default 1e-3
        Peak learning rate; decays to 0 along a cosine over all steps.
    batch_size : int, default 64
    weight_decay : float, default 1e-4
        Decoupled (AdamW) weight decay.
    seed : int, default 0
        Seeds shuffling and dropout (global RNG state restored afterwards).
    progress : bool, default True
        Show a rich progress bar with epoch, loss and validation accuracy.
    device : str or torch.device, default "cpu"
    warmup : float, default 0.0
        Fraction of the steps with a linear learning-rate warm-up (helps ViTs).
    label_smoothing : float, default 0.0
        Passed to :func:`torch.nn.functional.cross_entropy`.

    Returns
    -------
    dict
        ``loss`` (mean training loss per epoch), ``train_accuracy`` (running
        accuracy per epoch), ``val_accuracy`` (per epoch, empty without
        ``val``), ``epochs``, ``steps`` and ``seconds``.

    Notes
    -----
    The train/eval mode of every submodule is restored at the end.
    """
    split = _as_split(train_split, "train_split")
    if len(split) == 0:
        raise ValueError("cannot train on an empty split")
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0; got {epochs}")
    modes = _modes(model)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(split) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    n_warm = int(warmup * total)

    def lr_factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        t = (step - n_warm) / max(1, total - n_warm)
        return 0.5 * (1.0 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    history: dict[str, Any] = {"loss": [], "train_accuracy": [], "val_accuracy": []}
    start = time.perf_counter()
    bar = _progress(progress)
    with _seeded(seed), (bar if bar is not None else nullcontext()):
        task = bar.add_task(f"train {type(model).__name__}", total=total, status="") if bar else None
        for epoch in range(epochs):
            model.train()
            loss_sum, correct, seen = 0.0, 0, 0
            for X, y in split.batches(batch_size, shuffle=True, seed=seed * 100_003 + epoch):
                X, y = X.to(device), y.to(device)
                out = model(X)
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.item() * len(y)
                correct += (out.argmax(-1) == y).sum().item()
                seen += len(y)
                if bar is not None:
                    bar.update(task, advance=1, status=f"epoch {epoch + 1}/{epochs} loss {loss_sum / seen:.4f}")
            history["loss"].append(loss_sum / seen)
            history["train_accuracy"].append(correct / seen)
            status = f"epoch {epoch + 1}/{epochs} loss {loss_sum / seen:.4f}"
            if val is not None and len(val):
                acc = accuracy(model, val, device=device)
                history["val_accuracy"].append(acc)
                status += f" val acc {acc:.3f}"
            if bar is not None:
                bar.update(task, status=status)
    history["epochs"] = epochs
    history["steps"] = epochs * steps_per_epoch
    history["seconds"] = time.perf_counter() - start
    _restore_modes(modes)
    return history


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fine_tune(
    model: nn.Module,
    data: Any,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float = 1e-4,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    seed: int = 0,
    params: Iterable[nn.Parameter] | None = None,
    bn_eval: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Briefly fine-tune a (pruned) classifier with Adam at a constant learning rate.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits; trained in place.
    data : Split, (X, y) pair or iterable of (x, y) batches
        A :class:`~xprune.data.Split` is shuffled each pass (seeded); an
        iterable (e.g. a DataLoader) is used as it comes. A one-shot iterator
        is consumed at most once.
    steps : int, optional
        Number of optimiser steps; passes over the data are repeated as needed.
    epochs : int, optional
        Number of passes over the data (ignored when ``steps`` is given).
        With neither, one pass is made.
    lr : float, default 1e-4
    batch_size : int, default 64
        Batch size for a Split or (X, y) pair.
    weight_decay : float, default 0.0
    seed : int, default 0
        Seeds shuffling and dropout (global RNG state restored afterwards).
    params : iterable of nn.Parameter, optional
        Parameters to update (e.g. only the output layer); default all that
        require grad.
    bn_eval : bool, default False
        Keep BatchNorm layers in eval mode (running statistics frozen); advisable
        with tiny data such as few-shot reference samples.
    device : str or torch.device, optional
        Defaults to the device of the model's parameters.
    progress : bool, default False
        Show a rich progress bar.

    Returns
    -------
    dict
        ``loss`` (per step), ``steps`` (steps taken) and ``seconds``.

    Notes
    -----
    The train/eval mode of every submodule is restored at the end.
    """
    if steps is not None and steps < 0 or epochs is not None and epochs < 0:
        raise ValueError("steps and epochs must be >= 0")
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise ValueError("fine_tune: no parameter requires grad")
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    modes = _modes(model)
    split = _as_split(data, "data") if isinstance(data, (Split, tuple, list)) and not _is_batch_list(data) else None
    one_shot = split is None and iter(data) is data
    limit = steps if steps is not None else None
    passes = None if steps is not None else (1 if epochs is None else epochs)
    history: dict[str, Any] = {"loss": []}
    start = time.perf_counter()
    bar = _progress(progress)
    taken = 0
    with _seeded(seed), (bar if bar is not None else nullcontext()):
        task = bar.add_task("fine-tune", total=limit, status="") if bar else None
        model.train()
        if bn_eval:
            _set_bn_eval(model)
        p = 0
        while (passes is None or p < passes) and (limit is None or taken < limit):
            if split is not None:
                it = split.batches(batch_size, shuffle=True, seed=seed * 100_003 + p)
            else:
                it = _inputs.batches(data, batch_size)
            any_batch = False
            for x, y in it:
                any_batch = True
                x, y = _inputs.to_device(x, device), y.to(device)
                out = _inputs.logits(_inputs.call(model, x))
                loss = loss_fn(out, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                taken += 1
                history["loss"].append(loss.item())
                if bar is not None:
                    bar.update(task, advance=1, status=f"loss {loss.item():.4f}")
                if limit is not None and taken >= limit:
                    break
            p += 1
            if not any_batch or one_shot:
                break
    history["steps"] = taken
    history["seconds"] = time.perf_counter() - start
    _restore_modes(modes)
    return history


def _is_batch_list(data: Any) -> bool:
    """True for a list/tuple of (x, y) batches rather than one (X, y) pair."""
    if isinstance(data, Split):
        return False
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return False
    return isinstance(data, (tuple, list))


@torch.no_grad()
def accuracy(
    model: nn.Module, data: Any, batch_size: int = 256, device: str | torch.device | None = None
) -> float:
    """Top-1 accuracy of a classifier, in eval mode under ``no_grad``.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``[B, num_classes]``.
    data : Split, (X, y) pair or iterable of (x, y) batches
    batch_size : int, default 256
        Batch size for a Split or (X, y) pair.
    device : str or torch.device, optional
        Defaults to the device of the model's parameters.

    Returns
    -------
    float
        Fraction of correctly classified samples in ``[0, 1]``.

    Raises
    ------
    ValueError
        The data holds no sample.

    Notes
    -----
    The train/eval mode of every submodule is restored afterwards.
    """
    from ..evaluate import accuracy as _accuracy

    if device is not None and _model_device(model) != torch.device(device):
        raise ValueError(f"the model is on {_model_device(model)}, not {device}; move it first")
    return _accuracy(model, data, batch_size=batch_size)


def output_layer(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """Find the output layer: the last ``nn.Linear`` registered in ``model``.

    Returns
    -------
    (parent, name, layer)
        The module holding the layer, its attribute name there, and the layer.
    """
    found = None
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = qualified
    if found is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
    parent_name, _, name = found.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, name, getattr(parent, name)


def replace_head(model: nn.Module, num_classes: int, *, seed: int = 0) -> nn.Linear:
    """Replace the output layer with a freshly initialised ``Linear(in_features, num_classes)``.

    Also updates ``model.config["num_classes"]`` when the model has a config.

    Parameters
    ----------
    model : nn.Module
        Modified in place.
    num_classes : int
        Outputs of the new layer.
    seed : int, default 0
        Seeds the new layer's initialisation.

    Returns
    -------
    nn.Linear
        The new layer (on the old layer's device and dtype).
    """
    parent, name, old = output_layer(model)
    with _seeded(seed):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    new.to(device=old.weight.device, dtype=old.weight.dtype)
    if isinstance(parent, nn.Sequential) or name.isdigit():
        parent[int(name)] = new  # type: ignore[index]
    else:
        setattr(parent, name, new)
    if isinstance(getattr(model, "config", None), dict) and "num_classes" in model.config:
        model.config["num_classes"] = num_classes
    return new


# --------------------------------------------------------------------------- cache


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
            raise ValueError("metadata does not belong to this cache key")
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            raise ValueError("weights file does not match its recorded hash (partial or corrupt)")
        state = load(payload)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # any damage means: retrain and overwrite
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
    key = _cache_key(arch, data_id, seed, model.config, train_cfg)
    if cache is not None:
        meta = _load_cached(model, cache, key)
        if meta is not None:
            if progress:
                from rich import print as rprint

                rprint(
                    f"[bold]{arch}[/] on {data.name}: loaded {cache / key}.safetensors "
                    f"(test accuracy {meta.get('test_accuracy', float('nan')):.4f})"
                )
            return model.eval(), meta
    history = train(model, data.train, val=data.val if len(data.val) else None, seed=seed, progress=progress, **train_cfg)
    model.eval()
    test_acc = accuracy(model, data.test)
    meta = {
        "arch": arch,
        "config": model.config,
        "data": data_id,
        "seed": seed,
        "train": train_cfg,
        "test_accuracy": test_acc,
        "val_accuracy": history["val_accuracy"][-1] if history["val_accuracy"] else None,
        "seconds": history["seconds"],
        "torch": torch.__version__,
    }
    if progress:
        from rich import print as rprint

        rprint(f"[bold]{arch}[/] on {data.name}: test accuracy {test_acc:.4f} ({history['seconds']:.1f} s)")
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
        The trained model in eval mode on CPU, and the dataset it was trained on.

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


# --------------------------------------------------------------------------- transfer


@dataclass
class TransferResult:
    """Outcome of :func:`transfer`.

    Unpacks as ``model, dataset, reference = transfer(...)``.

    Attributes
    ----------
    model : nn.Module
        The adapted model (eval mode), ``len(target_classes)`` outputs.
    dataset : Dataset
        The target task: only ``target_classes``, labels remapped to ``0..k-1``.
    reference : Split
        The ``n_per_class`` labelled target samples per class used for the
        adaptation (from ``dataset.train``); also the natural reference set
        for explanation-based pruning.
    source_model : nn.Module
        The model pretrained on ``source_classes`` (eval mode, cached).
    source_accuracy : float
        Test accuracy of ``source_model`` on the source classes.
    target_accuracy : float
        Test accuracy of ``model`` on ``dataset.test``.
    history : dict
        Fine-tuning histories of the adaptation phases.
    """

    model: nn.Module
    dataset: Dataset
    reference: Split
    source_model: nn.Module
    source_accuracy: float
    target_accuracy: float
    history: dict[str, Any] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.dataset, self.reference))


def _cap_per_class(split: Split, max_per_class: int | None, seed: int) -> Split:
    if max_per_class is None:
        return split
    counts = split.class_counts()
    present = counts[counts > 0]
    n = int(min(max_per_class, int(present.min())))
    idx = reference_indices(split, n, seed=seed)
    return split[idx.sort().values]


def transfer(
    arch: str,
    *,
    source: str = "fashion-mnist",
    source_classes: Sequence[int] = (0, 1, 2, 3, 4),
    target_classes: Sequence[int] = (5, 6, 7, 8, 9),
    n_per_class: int = 10,
    seed: int = 0,
    max_per_class: int | None = 1000,
    pretrain_epochs: int | None = None,
    head_steps: int = 300,
    head_lr: float = 1e-2,
    full_steps: int = 0,
    full_lr: float = 1e-4,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
    data_kwargs: dict[str, Any] | None = None,
    **arch_kwargs: Any,
) -> TransferResult:
    """Pretrain on some classes and adapt to others from a few labelled samples.

    The transfer setting of Pruning by Explaining (Yeom et al., 2021): a model
    pretrained on a source task is adapted to a related target task for which
    only ``n_per_class`` labelled samples per class exist; those samples are
    then the reference data for explanation-based pruning.

    Steps: load ``source``, cut it with :func:`xprune.data.split_classes`,
    pretrain ``arch`` on the source classes (cached like :func:`pretrained`),
    draw ``n_per_class`` target training samples per class, replace the output
    layer by a fresh ``Linear(…, len(target_classes))`` and train it alone for
    ``head_steps`` full-batch Adam steps, then optionally the whole network
    for ``full_steps`` steps. BatchNorm statistics stay frozen during
    adaptation.

    Parameters
    ----------
    arch : str
        ``"mlp"``, ``"vgg"``, ``"resnet"`` or ``"vit"``.
    source : str, default "fashion-mnist"
        Dataset name (``"fashion-mnist"``, ``"mnist"``, ``"digits"``, ...).
    source_classes, target_classes : sequence of int
        Disjoint class indices of ``source``.
    n_per_class : int, default 10
        Labelled target samples per class.
    seed : int, default 0
        Seeds data split, subsampling, training and the reference draw.
    max_per_class : int or None, default 1000
        Pretrain on at most this many training images per source class
        (``None``: all). Keeps pretraining short: a Fashion-MNIST epoch of a
        small CNN over all 54000 images takes ~17 s on 2 CPU cores; with the
        default 1000 x 5 classes and 3 epochs pretraining takes seconds.
    pretrain_epochs : int, optional
        Override the default pretraining epochs (``DEFAULT_TRAINING``).
    head_steps, head_lr : int, float
        Output-layer adaptation (default 300 steps at 1e-2).
    full_steps, full_lr : int, float
        Optional whole-network fine-tune afterwards (default off).
    cache_dir, use_cache, progress, data_kwargs, **arch_kwargs
        As in :func:`pretrained`.

    Returns
    -------
    TransferResult
        Unpacks to ``(model, dataset, reference)``; also carries the source
        model and the accuracies.
    """
    data_kwargs = dict(data_kwargs or {})
    full = load(source, seed=seed, **data_kwargs)
    src, tgt = split_classes(full, source_classes, target_classes)
    src.train = _cap_per_class(src.train, max_per_class, seed)
    train_cfg = training_config(arch, _defaults_name(full.name), epochs=pretrain_epochs)
    data_id = _data_id(source, data_kwargs)
    data_id.update(name=f"{data_id['name']}-c{'_'.join(map(str, _class_ids(source_classes, full.classes)))}",
                   source_classes=list(source_classes), max_per_class=max_per_class)
    source_model, meta = _train_cached(
        arch,
        src,
        data_id,
        seed=seed,
        train_cfg=train_cfg,
        cache=_resolve_cache(cache_dir) if use_cache else None,
        progress=progress,
        arch_kwargs=arch_kwargs,
    )
    source_acc = float(meta.get("test_accuracy", accuracy(source_model, src.test)))

    reference = reference_samples(tgt.train, n_per_class, seed=seed)
    model = copy.deepcopy(source_model)
    head = replace_head(model, tgt.num_classes, seed=seed)
    batch = len(reference)
    history = {
        "head": fine_tune(
            model, reference, steps=head_steps, lr=head_lr, batch_size=batch, seed=seed,
            params=head.parameters(), bn_eval=True, progress=progress,
        )
    }
    if full_steps:
        history["full"] = fine_tune(
            model, reference, steps=full_steps, lr=full_lr, batch_size=batch, seed=seed + 1,
            bn_eval=True, progress=progress,
        )
    model.eval()
    target_acc = accuracy(model, tgt.test)
    if progress:
        from rich import print as rprint

        rprint(
            f"[bold]transfer[/] {arch}: source acc {source_acc:.4f}, target acc {target_acc:.4f} "
            f"({n_per_class} samples/class)"
        )
    return TransferResult(model, tgt, reference, source_model, source_acc, target_acc, history)

