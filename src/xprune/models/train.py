"""Training loops: full training, short fine-tuning, and accuracy.

* :func:`train` -- full training run (AdamW with a cosine learning-rate schedule).
* :func:`fine_tune` -- short fine-tune for pruning schedules (Adam, constant rate).
* :func:`accuracy` -- top-1 accuracy in eval mode under ``no_grad``.

The weights cache (:func:`pretrained`, :func:`cache_dir`) lives in
:mod:`xprune.models.cache`, the output-layer helpers (:func:`output_layer`,
:func:`replace_head`) in :mod:`xprune.models.heads` and the transfer setting
(:func:`transfer`, :class:`TransferResult`) in
:mod:`xprune.models.transfer_setting`; all their names stay importable from
here.

Determinism: model initialisation, shuffling and dropout draw from
``seed`` inside :func:`torch.random.fork_rng`, so results are reproducible on
CPU and the caller's global random state is left untouched. The number of
threads is never changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..data import Split
from ..errors import DataError, XpruneError
from ._common import _as_split, _model_device, _modes, _progress, _restore_modes, _seeded

__all__ = ["train", "fine_tune", "accuracy"]


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
        raise DataError("cannot train on an empty split")
    if epochs < 0:
        raise XpruneError(f"epochs must be >= 0; got {epochs}")
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
    with _seeded(seed), bar if bar is not None else nullcontext():
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
    if (steps is not None and steps < 0) or (epochs is not None and epochs < 0):
        raise XpruneError("steps and epochs must be >= 0")
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    if not params:
        raise XpruneError("fine_tune: no parameter requires grad")
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
    with _seeded(seed), bar if bar is not None else nullcontext():
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
def accuracy(model: nn.Module, data: Any, batch_size: int = 256, device: str | torch.device | None = None) -> float:
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
    from ..measure import accuracy as _accuracy

    if device is not None and _model_device(model) != torch.device(device):
        raise XpruneError(f"the model is on {_model_device(model)}, not {device}; move it first")
    return _accuracy(model, data, batch_size=batch_size)
