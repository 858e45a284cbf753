r"""The amortised explainer of Interpretations Steered Pruning: predictor and selector.

Ganjdanesh, Gao, Huang, "Interpretations Steered Network Pruning via
Amortized Inferred Saliency Maps", ECCV 2022, explain a classifier :math:`f`
with a *selector* network that predicts, in one forward pass, the saliency
mask of an image for a class, trained in the REAL-X way (Jethani et al.,
"Have We Learned to Explain?", AISTATS 2021) against a *predictor*.

Predictor (:func:`predictor_step`)
    :math:`g` = a copy of :math:`f` fine-tuned to classify masked images like
    :math:`f` classifies the full ones:

    .. math:: \mathcal L_g = \mathrm{KL}\big(p_f(x) \,\|\, p_g(x \odot s)\big),
              \quad s \sim \mathrm{RelaxedBernoulli}_\tau(m_\theta),

    with random RBF masks :math:`m_\theta` (:func:`~xprune.steered.rbf.random_params`:
    centres uniform, widths log-uniform in ``width_range``). BatchNorm
    statistics stay frozen.

Selector (:class:`Selector`, :func:`selector_step`)
    A small U-Net-like decoder on the frozen classifier's own feature maps
    (its encoder): 1x1 lateral convolutions, the deepest map gated
    channel-wise by a class-label embedding
    (:math:`h \leftarrow h \odot \operatorname{sigmoid}(E[y])`), upsampling with
    skip connections and 3x3 convolutions up to the finest map, then a
    spatial soft-max attention pooling of the decoded features and of the
    pixel coordinates, and a small MLP giving the three unconstrained RBF
    numbers. The attention's expected coordinate is added (through
    :math:`\operatorname{atanh}`) to the centre outputs, so the centre starts
    as a soft arg-max of the attention; :func:`~xprune.steered.rbf.constrain`
    then keeps it inside the image. Loss, with the predictor frozen:

    .. math:: \mathcal L_\phi = \mathrm{KL}\big(p_f(x) \,\|\, p_g(x \odot s)\big)
              + \lambda_1 \overline{s} + \lambda_2 \mathrm{TV}(s),
              \quad s \sim \mathrm{RelaxedBernoulli}_\tau\big(m(\phi(x, y))\big),

    :math:`\overline{s}` the mean of the sample (sparsity, an L1 norm per
    pixel) and TV its total variation (smoothness,
    :func:`~xprune.steered.rbf.total_variation`). ``kl="reverse"`` uses
    :math:`\mathrm{KL}(p_g(x \odot s) \,\|\, p_f(x))` instead.

The feature maps are read by forward hooks at ``feature_layers`` (default
:func:`feature_layers`: for each spatial resolution of at least 2 x 2, the
last module in forward order whose output has it), so the same selector reads
a gated copy of the classifier during pruning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import XpruneError
from . import rbf

__all__ = [
    "feature_layers",
    "features",
    "Selector",
    "kl_loss",
    "sample_batch",
    "predictor_step",
    "selector_step",
    "frozen",
    "channels_of",
]


def feature_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Default encoder taps, shallow to deep: per resolution >= 2x2, the last leaf module producing it."""
    last: dict[tuple[int, int], str] = {}
    order: list[tuple[int, int]] = []
    handles = []
    for name, m in model.named_modules():
        if next(m.children(), None) is not None:
            continue

        def hook(mod, args, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and min(out.shape[-2:]) >= 2:
                hw = tuple(out.shape[-2:])
                if hw not in last:
                    order.append(hw)
                last[hw] = name

        handles.append(m.register_forward_hook(hook))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    if not order:
        raise XpruneError("the steered selector needs a convolutional classifier (4-D feature maps of at least 2x2)")
    names = []
    for hw in sorted(order, key=lambda s: -s[0] * s[1]):  # shallow (large) to deep (small)
        if last[hw] not in names:
            names.append(last[hw])
    return names


@contextlib.contextmanager
def features(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager capturing the outputs of ``layers`` on every forward (the last call wins)."""
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise XpruneError(
            f"the model has no layers {missing}; pass feature_layers from xprune.steered.feature_layers(model, x)"
        )
    store: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, a, out, n=n: store.__setitem__(n, out)) for n in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


class Selector(nn.Module):
    """Predicts RBF mask parameters from a classifier's feature maps and a class label.

    Parameters
    ----------
    channels : sequence of int
        Channels of the feature maps, shallow to deep.
    num_classes : int
    width : int, default 16
        Channels of the decoder.
    min_width : float, default ``rbf.MIN_WIDTH``
        Lower bound of the mask width.

    ``forward(feats, labels)`` returns constrained parameters ``[N, 3]``
    (centre x, centre y, width; see :mod:`xprune.steered.rbf`); :meth:`raw`
    the unconstrained ones.
    """

    def __init__(self, channels: Sequence[int], num_classes: int, width: int = 16, min_width: float = rbf.MIN_WIDTH):
        super().__init__()
        self.channels, self.num_classes, self.min_width = list(channels), int(num_classes), float(min_width)
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in channels)
        self.embed = nn.Embedding(num_classes, channels[-1])
        nn.init.normal_(self.embed.weight, 0.0, 1.0)
        self.attend = nn.Conv2d(width, 1, 1)
        first, last = nn.Linear(width + 2, 32), nn.Linear(32, 3)  # created in this order: the same random init
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.head = nn.Sequential(first, nn.ReLU(), last)

    def raw(self, feats: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        if len(feats) != len(self.lateral):
            raise XpruneError(f"the selector reads {len(self.lateral)} feature maps, got {len(feats)}")
        gate = torch.sigmoid(self.embed(labels.long()))[:, :, None, None]
        d = F.relu(self.smooth[-1](self.lateral[-1](feats[-1] * gate)))
        for i in range(len(feats) - 2, -1, -1):
            f = feats[i]
            d = F.interpolate(d, size=f.shape[-2:], mode="bilinear", align_corners=True) + self.lateral[i](f)
            d = F.relu(self.smooth[i](d))
        n, c, h, w = d.shape
        attn = torch.softmax(self.attend(d).reshape(n, h * w), dim=-1)  # [N, HW]
        v = rbf._grid(h, d.device, d.dtype).view(h, 1).expand(h, w).reshape(-1)
        u = rbf._grid(w, d.device, d.dtype).view(1, w).expand(h, w).reshape(-1)
        coords = torch.stack([attn @ u, attn @ v], dim=1)  # expected (x, y) under the attention
        pooled = torch.einsum("nk,nck->nc", attn, d.reshape(n, c, h * w))
        out = self.head(torch.cat([pooled, coords], dim=1))
        return torch.cat([out[:, :2] + torch.atanh(coords.clamp(-0.999, 0.999)), out[:, 2:]], dim=1)

    def forward(self, feats: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        return rbf.constrain(self.raw(feats, labels), self.min_width)


def kl_loss(reference_logits: torch.Tensor, logits: torch.Tensor, direction: str = "forward") -> torch.Tensor:
    r"""Mean over the batch of :math:`\mathrm{KL}(p_{ref} \| p)` (``"forward"``) or :math:`\mathrm{KL}(p \| p_{ref})`
    (``"reverse"``)."""
    ref, cur = F.log_softmax(reference_logits, -1), F.log_softmax(logits, -1)
    if direction == "forward":
        return (ref.exp() * (ref - cur)).sum(-1).mean()
    if direction == "reverse":
        return (cur.exp() * (cur - ref)).sum(-1).mean()
    raise XpruneError(f"kl must be 'forward' or 'reverse', got {direction!r}")


def sample_batch(X: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator):
    """A random batch (with replacement across steps) drawn from ``gen``."""
    idx = torch.randint(len(X), (min(batch_size, len(X)),), generator=gen)
    return X[idx], y[idx]


def _bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def predictor_step(original: nn.Module, predictor: nn.Module, X, y, *, batch_size, temperature, width_range, kl):
    """One predictor loss (see the module docs); returns ``step_fn`` for :func:`~xprune.steered._stage.run_stage`."""

    def step(gen: torch.Generator, i: int):
        x, _ = sample_batch(X, y, batch_size, gen)
        with torch.no_grad():
            ref = original(x)
        params = rbf.random_params(len(x), gen, width_range, x.dtype)
        s = rbf.relaxed_bernoulli(rbf.rbf_mask(params, x.shape[-2:]), temperature, gen)
        predictor.train()
        _bn_eval(predictor)
        loss = kl_loss(ref, predictor(x * s), kl)
        return loss, {"kl": loss.detach()}

    return step


def selector_step(
    original: nn.Module,
    predictor: nn.Module,
    selector: Selector,
    layers: Sequence[str],
    X,
    y,
    *,
    batch_size,
    temperature,
    sparsity,
    smoothness,
    kl,
    target,
):
    """One selector loss (see the module docs); returns ``step_fn`` for ``run_stage``."""

    def step(gen: torch.Generator, i: int):
        x, labels = sample_batch(X, y, batch_size, gen)
        with torch.no_grad(), features(original, layers) as store:
            ref = original(x)
            feats = [store[n] for n in layers]
        cls = labels if target == "label" else ref.argmax(-1)
        params = selector(feats, cls)
        s = rbf.relaxed_bernoulli(rbf.rbf_mask(params, x.shape[-2:]), temperature, gen)
        fit = kl_loss(ref, predictor(x * s), kl)
        l1, tv = s.mean(), rbf.total_variation(s)
        loss = fit + sparsity * l1 + smoothness * tv
        return loss, {"kl": fit.detach(), "area": l1.detach(), "tv": tv.detach(), "width": params[:, 2].mean().detach()}

    return step


def frozen(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with every parameter's ``requires_grad`` off (in place)."""
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def channels_of(model: nn.Module, layers: Sequence[str], example: torch.Tensor) -> list[int]:
    """Channels of the feature maps at ``layers`` for ``example``."""
    with torch.no_grad(), features(model, layers) as store:
        was = model.training
        model.eval()
        model(example[:1])
        model.train(was)
    return [int(store[n].shape[1]) for n in layers]
