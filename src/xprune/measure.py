"""Measuring a model: predictions, top-1 accuracy, parameters and MACs, latency.

Conventions
-----------
- **MACs**: one multiply-add counts as 1 MAC (Torch-Pruning's counter, like
  fvcore/ptflops; ``torch.utils.flop_counter`` counts 2 FLOPs per MAC).
- **Latency**: wall-clock time of ``model(x)`` under ``torch.inference_mode``
  on the CPU, after warm-up runs, as the median of repeats; the batch size
  and the number of torch threads are reported with it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from . import _inputs, distributed
from .errors import DataError

__all__ = ["predictions", "accuracy", "count", "latency"]


@torch.no_grad()
def predictions(model: nn.Module, batches: Any, *, classes: Sequence[int] | None = None):
    """Yield ``(predicted class, label)`` tensors per batch, in eval mode (flags restored after).

    With ``classes``, only samples of those classes are kept and the
    prediction is the arg-max over their logits (the other logits suppressed).

    Labels are one class per sample or one per token (Hugging Face's
    convention): then each labelled token is one prediction, ``-100`` and
    padding (``attention_mask`` 0) are skipped and, for causal language
    models, the output at position ``t`` is judged on ``labels[:, t + 1]``
    (see :func:`xprune._inputs.explained_labels`); one label per sample on
    token outputs ``[N, T, C]`` judges the last token that is not padding.
    """
    keep = None if classes is None else torch.as_tensor(list(classes), dtype=torch.long)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with _inputs.preserved_state(model):
        for item in batches:
            x, y = _inputs._pair(item)  # (inputs, labels) pairs, or Hugging Face dicts with 'labels'
            if y is None:
                raise DataError(
                    "measuring accuracy needs labels; add them to each batch (key 'labels' of a batch "
                    "dict, or (inputs, labels) pairs)"
                )
            x, y = _inputs.to_device(x, device), torch.as_tensor(y).to(device)
            out = _inputs.logits(_inputs.call(model, x))
            if not (out.dim() == 2 and y.dim() == 1):  # tokens: one prediction per judged position
                judged = _inputs.explained_labels(out, y, x, model)
                where = judged != _inputs.IGNORE
                out, y = out[where], judged[where]
            if keep is None:
                yield out.argmax(-1), y
                continue
            k = keep.to(device)
            mask = torch.isin(y, k)
            if mask.any():
                yield k[out[mask][:, k].argmax(-1)], y[mask]


@torch.no_grad()
def accuracy(model: nn.Module, data: Any, *, classes: Sequence[int] | None = None, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (the model's train/eval flags are restored).

    With labels per token (``[N, T]``, Hugging Face's convention) it is the
    token accuracy: the fraction of labelled tokens predicted right (``-100``
    and padding skipped, shifted by one for causal language models; see
    :func:`predictions`).

    Parameters
    ----------
    data : (X, y), iterable of batches (pairs, or dicts with ``labels``) or xprune.data.Split
    classes : sequence of int, optional
        Restrict the task to these classes: only their samples count and the
        prediction is the arg-max over their logits (the other logits are
        suppressed, as in PXP's domain restriction).
    """
    # in a process group each rank evaluates its share (xprune.distributed), counts are summed
    correct = total = 0
    try:
        for pred, y in predictions(model, distributed.batches(data, batch_size), classes=classes):
            correct += int((pred == y).sum())
            total += int(y.numel())
    except Exception as e:
        if not isinstance(e, distributed.DistributedError):
            import contextlib

            with contextlib.suppress(distributed.DistributedError):
                distributed.sum_counts(0, 0, failed=True)  # the other ranks stop too instead of waiting
        raise
    correct, total = distributed.sum_counts(correct, total)
    if total == 0:
        raise DataError("accuracy needs at least one sample" + ("" if classes is None else " of the given classes"))
    return correct / total


def count(model: nn.Module, example_inputs: Any) -> dict[str, int]:
    """Parameters and MACs (1 multiply-add = 1 MAC) of one forward pass on ``example_inputs``."""
    with _inputs.preserved_state(model):
        macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return {"params": int(params), "macs": int(macs)}


def latency(model: nn.Module, example_inputs: Any, *, warmup: int = 5, repeats: int = 30) -> dict[str, Any]:
    """Median CPU latency of one forward pass, in milliseconds.

    Returns ``{"ms": median, "ms_iqr": interquartile range, "batch_size", "threads"}``.
    """
    times = []
    with _inputs.preserved_state(model), torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            _inputs.call(model, example_inputs)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    batch = int(example_inputs.shape[0]) if isinstance(example_inputs, torch.Tensor) else None
    return {
        "ms": 1000 * statistics.median(times),
        "ms_iqr": 1000 * (q[2] - q[0]),
        "batch_size": batch,
        "threads": torch.get_num_threads(),
    }
