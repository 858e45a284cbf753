"""The transfer setting of Pruning by Explaining (Yeom et al., 2021): pretrain on some classes, adapt to others.

:func:`transfer` pretrains on source classes (cached like
:func:`~xprune.models.pretrained`), then adapts a fresh output layer to the
target classes from ``n_per_class`` labelled samples each.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data import Dataset, Split, _class_ids, load, reference_indices, reference_samples, split_classes
from .cache import _data_id, _defaults_name, _resolve_cache, _train_cached, training_config
from .heads import replace_head
from .train import accuracy, fine_tune

__all__ = ["transfer", "TransferResult"]


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
    data_id.update(
        name=f"{data_id['name']}-c{'_'.join(map(str, _class_ids(source_classes, full.classes)))}",
        source_classes=list(source_classes),
        max_per_class=max_per_class,
    )
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
            model,
            reference,
            steps=head_steps,
            lr=head_lr,
            batch_size=batch,
            seed=seed,
            params=head.parameters(),
            bn_eval=True,
            progress=progress,
        )
    }
    if full_steps:
        history["full"] = fine_tune(
            model,
            reference,
            steps=full_steps,
            lr=full_lr,
            batch_size=batch,
            seed=seed + 1,
            bn_eval=True,
            progress=progress,
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
