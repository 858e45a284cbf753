r"""Radial-basis-function (RBF) saliency masks and their relaxed-Bernoulli samples.

An explanation in Interpretations Steered Pruning (Ganjdanesh, Gao, Huang,
"Interpretations Steered Network Pruning via Amortized Inferred Saliency
Maps", ECCV 2022) is one Gaussian bump per image, described by three numbers.

Parametrisation
---------------
Coordinates are normalised: pixel column :math:`j` of a width-:math:`W` image
sits at :math:`u_j = -1 + 2j/(W-1)` (and row :math:`i` at :math:`v_i`
likewise), so the image spans :math:`[-1, 1]^2` and a width of 1 is half the
image. From unconstrained numbers :math:`r = (r_x, r_y, r_w)`
(:func:`constrain`):

.. math::

    c_x = \tanh r_x, \qquad c_y = \tanh r_y, \qquad
    \sigma = \operatorname{softplus}(r_w) + \sigma_{\min},

so the centre always lies inside the image and the width is positive
(:math:`\sigma > \sigma_{\min}`; in floating point :math:`\ge`, default :math:`\sigma_{\min} = 0.05`, about
one pixel of a 28 x 28 image). :func:`unconstrain` is the inverse.

Mask (:func:`rbf_mask`), a Gaussian normalised to peak 1 on the pixel grid:

.. math::

    G_{ij} = \exp\Big(-\frac{(u_j - c_x)^2 + (v_i - c_y)^2}{2\sigma^2}\Big), \qquad
    m_{ij} = \frac{G_{ij}}{\max_{kl} G_{kl}} \in (0, 1],

hence :math:`\max_{ij} m_{ij} = 1` exactly (in floating point values far
from a narrow bump underflow to 0, so the range is :math:`[0, 1]`), reached at the pixel nearest the
centre. (The continuous bump peaks at 1 at the centre itself; the
normalisation makes the sampled grid peak at 1 too, whatever the centre.)

Samples (:func:`relaxed_bernoulli`): the Binary Concrete / relaxed Bernoulli
distribution (Maddison et al., ICLR 2017; Jang et al., ICLR 2017) with
probabilities :math:`m` and temperature :math:`\tau`,

.. math::

    s = \operatorname{sigmoid}\Big(\frac{\operatorname{logit} m + \log U - \log(1 - U)}{\tau}\Big),
    \quad U \sim \mathcal U(0, 1),

differentiable in :math:`m` (reparametrised), :math:`s \in (0, 1)` (:math:`[0, 1]` in floating point), and
:math:`P(s > 1/2) = m`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import XpruneError

__all__ = ["constrain", "unconstrain", "rbf_mask", "random_params", "relaxed_bernoulli", "total_variation", "MIN_WIDTH"]

#: Default lower bound of the width :math:`\sigma` (normalised units).
MIN_WIDTH = 0.05


def constrain(raw: torch.Tensor, min_width: float = MIN_WIDTH) -> torch.Tensor:
    """Map unconstrained ``raw [N, 3]`` to RBF parameters ``[N, 3] = (c_x, c_y, sigma)``.

    ``c = tanh(r)`` keeps the centre in ``(-1, 1)^2``; ``sigma = softplus(r_w) + min_width``.
    """
    if raw.dim() != 2 or raw.shape[-1] != 3:
        raise XpruneError(f"RBF parameters are [N, 3] (x, y, width); got shape {tuple(raw.shape)}")
    return torch.cat([torch.tanh(raw[:, :2]), F.softplus(raw[:, 2:]) + min_width], dim=1)


def unconstrain(params: torch.Tensor, min_width: float = MIN_WIDTH) -> torch.Tensor:
    """Inverse of :func:`constrain` (centres must lie in ``(-1, 1)``, widths above ``min_width``)."""
    c = params[:, :2]
    w = params[:, 2:] - min_width
    if (c.abs() >= 1).any() or (w <= 0).any():
        raise XpruneError(f"centres must lie in (-1, 1) and widths above min_width={min_width}")
    return torch.cat([torch.atanh(c), w + torch.log(-torch.expm1(-w))], dim=1)  # softplus^-1(w) = w + log(1 - e^-w)


def _grid(n: int, device, dtype) -> torch.Tensor:
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)


def rbf_mask(params: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Masks ``[N, 1, H, W]`` with values in ``(0, 1]`` and maximum exactly 1 (see the module docs).

    Parameters
    ----------
    params : Tensor ``[N, 3]``
        Constrained parameters ``(c_x, c_y, sigma)`` (from :func:`constrain`).
    size : (H, W)
        Image height and width.
    """
    if params.dim() != 2 or params.shape[-1] != 3:
        raise XpruneError(f"RBF parameters are [N, 3] (x, y, width); got shape {tuple(params.shape)}")
    h, w = int(size[0]), int(size[1])
    u = _grid(w, params.device, params.dtype).view(1, 1, 1, w)
    v = _grid(h, params.device, params.dtype).view(1, 1, h, 1)
    cx, cy, sigma = (params[:, k].view(-1, 1, 1, 1) for k in range(3))
    logits = -((u - cx) ** 2 + (v - cy) ** 2) / (2 * sigma**2)
    # dividing by the max is subtracting it in log space: stable for tiny widths
    return torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))


def random_params(
    n: int, generator: torch.Generator | None = None, width_range: tuple[float, float] = (0.1, 1.0), dtype=torch.float32
) -> torch.Tensor:
    """Random RBF parameters: centres uniform in ``[-1, 1]^2``, widths log-uniform in ``width_range``."""
    lo, hi = width_range
    if not 0 < lo <= hi:
        raise XpruneError(f"width_range must be 0 < low <= high, got {width_range!r}")
    r = torch.rand(n, 3, generator=generator, dtype=dtype)
    centre = 2 * r[:, :2] - 1
    width = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * r[:, 2:])
    return torch.cat([centre, width], dim=1)


def relaxed_bernoulli(
    probs: torch.Tensor, temperature: float = 0.5, generator: torch.Generator | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """A reparametrised relaxed-Bernoulli sample with probabilities ``probs`` (see the module docs)."""
    if temperature <= 0:
        raise XpruneError(f"temperature must be > 0, got {temperature!r}")
    p = probs.clamp(eps, 1 - eps)
    u = torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device).clamp(eps, 1 - eps)
    return torch.sigmoid((torch.log(p) - torch.log1p(-p) + torch.log(u) - torch.log1p(-u)) / temperature)


def total_variation(s: torch.Tensor) -> torch.Tensor:
    r"""Mean anisotropic total variation of ``s [N, C, H, W]``.

    :math:`\mathrm{TV}(s) = \frac1N \sum_n \big(\operatorname{mean}_{ij} |s_{i+1,j} - s_{ij}|
    + \operatorname{mean}_{ij} |s_{i,j+1} - s_{ij}|\big)`.
    """
    tv = s.new_zeros(())
    if s.shape[-2] > 1:
        tv = tv + (s[..., 1:, :] - s[..., :-1, :]).abs().mean()
    if s.shape[-1] > 1:
        tv = tv + (s[..., :, 1:] - s[..., :, :-1]).abs().mean()
    return tv
