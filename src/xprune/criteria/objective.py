"""What a criterion explains: the target of each sample or token, as classes and as the seed of the backward pass.

:class:`Objective` turns a model output, the batch's labels and the ``target=``
option (``"label"``, ``"predicted"``, ``"embedding"``, a class index or a
callable) into the explained positions, their classes, the scalar objective
and its gradient with respect to the output. Every criterion reads its target
through it, so per-token labels (``-100`` = not counted), padding and the
causal-LM shift are handled in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError

__all__ = ["Objective", "TARGETS", "resolve_target", "target_classes"]


def resolve_target(target: Any, output: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The class to explain for each sample, as a LongTensor ``[N]``.

    ``target`` is ``"label"`` (the true label, default), ``"predicted"`` (the
    model's top class), an int (the same class for every sample) or a callable
    ``target(output, labels) -> LongTensor[N]``. One class per sample (for
    ``[N, ..., C]`` outputs, the last position's); the criteria themselves
    use :class:`Objective`, which also takes labels per token and
    ``target="embedding"``.
    """
    n, n_classes = output.shape[0], output.shape[-1]
    if target == "label":
        if labels is None:
            raise DataError(_NO_LABELS)
        classes = torch.as_tensor(labels).to(output.device).long().reshape(-1)
    elif target == "predicted":
        classes = output.detach().reshape(n, -1, n_classes)[:, -1].argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full((n,), target, dtype=torch.long, device=output.device)
    elif callable(target):
        classes = torch.as_tensor(target(output, labels)).to(output.device).long().reshape(-1)
    else:
        raise XpruneError(f"target must be 'label', 'predicted', an int or a callable(output, labels); got {target!r}")
    if classes.numel() != n:
        raise DataError(f"got {classes.numel()} targets for a batch of {n} samples")
    if n and (classes.min() < 0 or classes.max() >= n_classes):
        raise DataError(
            f"target classes must lie in [0, {n_classes - 1}] (the model has {n_classes} outputs); "
            f"got values from {int(classes.min())} to {int(classes.max())}. Check the labels match the model."
        )
    return classes


_NO_LABELS = (
    "target='label' needs labels and the batch has none (a dict without 'labels', or inputs alone); "
    "add the labels to each batch, or pass target='predicted' (the model's top class) or, for an "
    "encoder without a head, target='embedding'"
)

TARGETS = ("label", "predicted", "embedding")


def _is(target: Any, name: str) -> bool:
    return isinstance(target, str) and target == name


def target_classes(
    target: Any, output: torch.Tensor, labels: Any = None, *, inputs: Any = None, model: Any = None
) -> torch.Tensor:
    """The class explained at each position of ``output`` ``[N, ..., C]``: LongTensor ``output.shape[:-1]``, or -100.

    The positions are those of the labels (:func:`xprune._inputs.explained_labels`:
    every row of ``[N, C]`` outputs; one label per sample on ``[N, T, C]``:
    the last token that is not padding; labels per token: every labelled
    token, shifted by one for causal language models), or without labels
    every row / the last token. ``target`` picks the class there: ``"label"``,
    ``"predicted"`` (the top class), an int, or a callable ``target(output,
    labels)`` returning one class per sample ``[N]`` (placed like labels per
    sample) or one per position (``output.shape[:-1]``, -100 = none).
    """
    n, n_classes = output.shape[0], output.shape[-1]
    if _is(target, "label"):
        if labels is None:
            raise DataError(_NO_LABELS)
        return _inputs.explained_labels(output, labels, inputs, model)
    if callable(target) and not isinstance(target, str):
        r = torch.as_tensor(target(output, labels)).to(output.device).long()
        if tuple(r.shape) == tuple(output.shape[:-1]):
            classes = r
        elif r.numel() == n:
            classes = _inputs.explained_labels(output, r.reshape(-1), inputs, model)
        else:
            raise DataError(
                f"the target callable returned {r.numel()} classes for a batch of {n} samples; return "
                f"one class per sample [{n}] or one per position {list(output.shape[:-1])}"
            )
        _inputs.check_classes(classes, n_classes, "target classes")
        return classes
    if _is(target, "predicted"):
        classes = output.detach().argmax(-1)
    elif isinstance(target, int) and not isinstance(target, bool):
        classes = torch.full(output.shape[:-1], target, dtype=torch.long, device=output.device)
    else:
        raise XpruneError(
            f"target must be 'label', 'predicted', 'embedding', an int or a callable(output, labels); got {target!r}"
        )
    if labels is not None:
        where = _inputs.explained_labels(output, labels, inputs, model) != _inputs.IGNORE
    elif output.dim() == 2:
        where = torch.ones(n, dtype=torch.bool, device=output.device)
    else:
        where = torch.zeros(output.shape[:-1], dtype=torch.bool, device=output.device)
        where.reshape(n, -1)[torch.arange(n, device=output.device), _inputs.last_positions(output, inputs)] = True
    classes = classes.masked_fill(~where, _inputs.IGNORE)
    _inputs.check_classes(classes, n_classes, "target classes")
    return classes


class Objective:
    r"""What a batch's scores explain: a scalar function of the model output, and its gradient there.

    Built by :meth:`of` from the model output, the labels and the target.
    ``output`` is the tensor the objective reads, ``seed`` its gradient
    there (detached, the shape of ``output``):

    - class targets (``"label"``, ``"predicted"``, an int, a callable):
      ``output`` holds the logits ``[N, C]`` or ``[N, T, C]``, ``classes``
      the class explained at each position (-100: none, see
      :func:`target_classes`) and the objective is the sum of the explained
      logits (``"logit"``) or minus the summed cross-entropy there
      (``"loss"``); ``seed`` is one-hot at the explained positions;
    - ``target="embedding"`` (no labels needed): ``output`` is the embedding
      :math:`e(x)` ``[N, D]`` (:func:`xprune._inputs.embedding`: the mean of
      the token states over the attention mask, or the model's vector
      output), the objective :math:`\sum_n e_n(x) \cdot \hat e_n` with
      :math:`\hat e = e / |e|` the original model's embedding, normalised
      and detached. Its gradient at the original model is :math:`\hat e`
      (non-zero, unlike the cosine similarity's) and its value
      :math:`|e(x)|`: the similarity of the embedding to the original one.
      On a model with logits the logits vector is the embedding.
    """

    def __init__(
        self,
        output: torch.Tensor,
        seed: torch.Tensor,
        classes: torch.Tensor | None = None,
        read: Callable[[Any], torch.Tensor] = _inputs.logits,
    ):
        self.output = output
        self.seed = seed
        self.classes = classes
        self._read = read

    @classmethod
    def of(
        cls, target: Any, output: Any, labels: Any = None, *, inputs: Any = None, model: nn.Module | None = None
    ) -> Objective:
        """The objective of one batch from the raw model ``output`` (a tensor or a Hugging Face output).

        ``inputs`` (for the attention mask) and ``model`` (is it a causal
        language model?) decide which positions count; see :func:`target_classes`.
        """
        if _is(target, "embedding"):

            def read(raw):
                return _inputs.embedding(raw, inputs)

            e = read(output)
            ref = e.detach().to(torch.promote_types(e.dtype, torch.float32))  # half precision: normalised in fp32
            ref = (ref / ref.norm(dim=-1, keepdim=True).clamp(min=1e-12)).to(e.dtype)
            return cls(e, ref, None, read)
        out = _inputs.logits(output)
        classes = target_classes(target, out, labels, inputs=inputs, model=model)
        seed = torch.zeros_like(out)
        flat, idx = seed.reshape(-1, out.shape[-1]), classes.reshape(-1)
        rows = (idx != _inputs.IGNORE).nonzero().reshape(-1)
        flat[rows, idx[rows]] = 1.0
        return cls(out, seed, classes)

    @property
    def is_embedding(self) -> bool:
        return self.classes is None

    @property
    def count(self) -> int:
        """Number of explained positions (samples for ``[N, C]`` outputs and embeddings, tokens for token labels)."""
        if self.classes is None:
            return int(self.output.shape[0])
        return int((self.classes != _inputs.IGNORE).sum())

    def read(self, output: Any) -> torch.Tensor:
        """The explained tensor of another model output on the same batch (gated or interpolated passes)."""
        return self._read(output)

    def _check(self, objective: str) -> None:
        if objective not in ("logit", "loss"):
            raise XpruneError(f"objective must be 'logit' or 'loss', got {objective!r}")
        if objective == "loss" and self.classes is None:
            raise XpruneError(
                "objective='loss' is the cross-entropy of class targets and target='embedding' has "
                "none; use objective='logit' (the similarity to the original embedding)"
            )

    def value(self, output: torch.Tensor | None = None, objective: str = "logit") -> torch.Tensor:
        """The objective summed over the batch, at ``output`` (default: :attr:`output`), differentiable."""
        self._check(objective)
        out = self.output if output is None else output
        if self.classes is None:
            return (out * self.seed.to(out.dtype)).sum()
        idx = self.classes.reshape(-1)
        rows = (idx != _inputs.IGNORE).nonzero().reshape(-1)
        flat = out.reshape(-1, out.shape[-1])
        if objective == "logit":
            return flat[rows, idx[rows]].sum()
        picked = flat[rows]
        picked = picked.to(torch.promote_types(picked.dtype, torch.float32))  # half precision: fp32 softmax
        return -torch.nn.functional.cross_entropy(picked, idx[rows], reduction="sum")

    def gradient(self, objective: str = "logit") -> torch.Tensor:
        """The gradient of :meth:`value` at :attr:`output` (``grad_outputs`` of the backward pass)."""
        self._check(objective)
        if objective == "logit":
            return self.seed
        # d/d(logits) of minus the summed cross-entropy: "more of the right class", as the logit
        return self.seed - torch.softmax(self.output.detach(), dim=-1) * self.seed.sum(-1, keepdim=True)
