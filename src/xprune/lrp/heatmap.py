"""Saving relevance maps as images (matplotlib, ``bwr`` colormap, symmetric limits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import XpruneError

__all__ = ["heatmap_array", "save_heatmap"]


def heatmap_array(relevance: torch.Tensor | np.ndarray, channel_reduce: str = "sum") -> np.ndarray:
    """A 2-D array from a relevance map of one sample.

    Accepts ``[H, W]``, ``[C, H, W]`` or ``[1, C, H, W]`` (channels reduced by
    ``"sum"`` or ``"max-abs"``) and 1-D vectors (shown as one row).
    """
    r = (
        relevance.detach().cpu().double().numpy()
        if isinstance(relevance, torch.Tensor)
        else np.asarray(relevance, float)
    )
    if r.ndim == 4:
        if r.shape[0] != 1:
            raise XpruneError(f"save_heatmap shows one sample; got a batch of {r.shape[0]} (index it first)")
        r = r[0]
    if r.ndim == 3:
        if channel_reduce == "sum":
            r = r.sum(0)
        elif channel_reduce == "max-abs":
            idx = np.abs(r).argmax(0)
            r = np.take_along_axis(r, idx[None], 0)[0]
        else:
            raise XpruneError(f"channel_reduce must be 'sum' or 'max-abs'; got {channel_reduce!r}")
    if r.ndim == 1:
        r = r[None, :]
    if r.ndim != 2:
        raise XpruneError(f"cannot show a relevance map of shape {tuple(np.shape(relevance))}")
    return r


def save_heatmap(
    relevance: torch.Tensor | np.ndarray,
    path: str | Path,
    *,
    cmap: str = "bwr",
    channel_reduce: str = "sum",
) -> np.ndarray:
    """Save a relevance map as an image: red positive, blue negative, white zero.

    The colour limits are symmetric, ``[-max|R|, +max|R|]``, so zero is white.
    Returns the 2-D array that was drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import image

    r = heatmap_array(relevance, channel_reduce)
    vmax = float(np.abs(r).max()) or 1.0
    image.imsave(str(path), r, cmap=cmap, vmin=-vmax, vmax=vmax)
    return r
