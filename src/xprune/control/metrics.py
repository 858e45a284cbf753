"""What :func:`~xprune.control.correct` and :func:`~xprune.control.circuit` measure: a :class:`Metric` and the defaults.

A metric is a callable ``model -> float`` with a direction. The defaults:

- classifiers: top-1 accuracy (:func:`xprune.measure.accuracy`) on a data set
  w.r.t. its labels. On the behaviour set the labels are the *unwanted*
  answers, so its accuracy is how often the model still shows the behaviour;
- causal language models (:func:`xprune._inputs.is_causal_lm`): on the
  behaviour set, the mean probability the model gives to the labelled
  continuation tokens (labels per token, ``-100`` not counted, position ``t``
  judged on ``labels[:, t + 1]`` as in Hugging Face's loss; one label per
  block, as :class:`xprune.llm.TokenBlocks` gives, judges the last position);
  on the general set, the perplexity of every next token
  (:func:`xprune.llm.next_token_nll` per batch, padding skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import _inputs
from ..errors import DataError, XpruneError
from ..measure import accuracy

__all__ = ["Metric", "as_metric", "continuation_probability", "default_metric", "token_perplexity"]


@dataclass
class Metric:
    """A measurement of a model with its direction.

    Attributes
    ----------
    fn : callable
        ``fn(model) -> float``.
    higher_is_worse : bool
        For the behaviour metric: higher = more of the unwanted behaviour (it
        must be True there). For the general metric: True for losses and
        perplexities, False for accuracies.
    name : str
        What is measured (for the report).
    """

    fn: Callable[[nn.Module], float]
    higher_is_worse: bool = True
    name: str = "metric"

    def __call__(self, model: nn.Module) -> float:
        value = float(self.fn(model))
        if not math.isfinite(value):
            raise DataError(f"the {self.name} metric gave {value}: check the data and the model (NaN/Inf outputs)")
        return value


def as_metric(metric: Any, *, higher_is_worse: bool | None, default: Metric | None, what: str) -> Metric:
    """``metric`` (None, a :class:`Metric` or a callable) as a Metric.

    ``higher_is_worse`` gives a callable's direction.
    """
    if metric is None:
        if default is None:
            raise XpruneError(f"pass {what}= (a callable model -> float): there is no default for this model")
        return default
    if isinstance(metric, Metric):
        return metric
    if not callable(metric):
        raise XpruneError(
            f"{what} must be a callable model -> float or an xprune.control.Metric, got {type(metric).__name__}"
        )
    if higher_is_worse is None:
        raise XpruneError(
            f"say the direction of {what}: wrap it as xprune.control.Metric(fn, higher_is_worse=...) "
            "(True for a loss or perplexity, False for an accuracy)"
        )
    return Metric(metric, bool(higher_is_worse), getattr(metric, "__name__", what))


def _ids_and_mask(x: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(x, torch.Tensor):
        return x, None
    if isinstance(x, dict) and isinstance(x.get("input_ids"), torch.Tensor):
        return x["input_ids"], _inputs.token_mask(x)
    raise DataError(
        f"a language model's data must hold token ids (a tensor or a dict with 'input_ids'); got {type(x).__name__}"
    )


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@torch.no_grad()
def continuation_probability(model: nn.Module, data: Any, *, batch_size: int = 32) -> float:
    """Mean probability ``model`` gives to the labelled tokens of ``data`` (see the module's docstring)."""
    total, count = 0.0, 0
    dev = _device(model)
    with _inputs.preserved_state(model):
        for x, y in _inputs.batches(data, batch_size):
            x = _inputs.to_device(x, dev)
            out = _inputs.logits(_inputs.call(model, x)).float()
            judged = _inputs.explained_labels(out, torch.as_tensor(y), x, model)
            where = judged != _inputs.IGNORE
            if where.any():
                p = out[where].softmax(-1).gather(-1, judged[where][:, None])
                total += float(p.sum())
                count += int(where.sum())
    if count == 0:
        raise DataError(
            "the behaviour set has no labelled token (labels are all -100): label the continuation "
            "tokens that should go"
        )
    return total / count


@torch.no_grad()
def token_perplexity(model: nn.Module, data: Any, *, batch_size: int = 8) -> float:
    """Perplexity of every next token of ``data`` (token ids; padding skipped by the attention mask)."""
    from ..llm import next_token_nll

    total, count = 0.0, 0
    dev = _device(model)
    with _inputs.preserved_state(model):
        for x, _ in _inputs.batches(data, batch_size, need_labels=False):
            ids, mask = _ids_and_mask(_inputs.to_device(x, dev))
            out = _inputs.logits(model(input_ids=ids) if mask is None else model(input_ids=ids, attention_mask=mask))
            nll, n = next_token_nll(out, ids, mask)
            total += float(nll)
            count += n
    if count == 0:
        raise DataError("the general set has no token to predict (blocks of one token?)")
    return math.exp(total / count)


def default_metric(model: nn.Module, data: Any, role: str) -> Metric:
    """The default metric of ``role`` (``"behaviour"`` or ``"general"``) on ``data`` for ``model``."""
    if _inputs.is_causal_lm(model):
        if role == "behaviour":
            return Metric(lambda m: continuation_probability(m, data), True, "continuation probability")
        return Metric(lambda m: token_perplexity(m, data), True, "perplexity")
    if role == "behaviour":
        return Metric(lambda m: accuracy(m, data), True, "accuracy on the behaviour labels")
    return Metric(lambda m: accuracy(m, data), False, "accuracy")
