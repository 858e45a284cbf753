"""Input normalisation of a dataset: choose it (``normalize=``), apply it, describe it, save it.

:func:`xprune.data.load` takes ``normalize=`` in one of these forms:

* ``"auto"`` (default): ``"mean-std"`` for the built-in named datasets (xprune's
  built-in models are trained on them standardised, see
  :func:`xprune.models.pretrained`) and ``"none"`` for files and image folders;
* ``"mean-std"``: per-channel (images) / per-feature (tabular) mean and std of
  the train split; ``True`` means the same;
* ``"none"``: the inputs as stored; ``False`` and ``None`` mean the same;
* a dict ``{"mean": [...], "std": [...]}`` (one value per channel, or one number
  for all) applied as given, e.g. the statistics a model was trained with; an
  optional ``"source"`` string says where they come from (for the record);
* the path of a JSON file holding such a dict (:func:`save_normalization` writes one).

What was applied is recorded as the JSON-able :attr:`Dataset.normalization`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError, XpruneError, XpruneTypeError

__all__ = ["save_normalization", "NORMALIZE_METHODS"]

#: The named forms of ``normalize=`` (besides a dict and a JSON path).
NORMALIZE_METHODS = ("auto", "mean-std", "none")

_FORMS = (
    "normalize must be 'auto', 'mean-std', 'none', a {'mean': [...], 'std': [...]} dict "
    "or the path of a JSON file holding one"
)


class _Choice:
    """A parsed ``normalize=`` value: the method and, for given statistics, the values and where they came from."""

    def __init__(self, method: str, requested: str, mean: Any = None, std: Any = None, source: str | None = None):
        self.method, self.requested, self.mean, self.std, self.source = method, requested, mean, std, source


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise XpruneError(
            f"normalisation file {path} does not exist; write one with "
            "xprune.data.save_normalization(dataset, path), or pass normalize='mean-std' or 'none'"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise XpruneError(
            f"{path} is not a readable normalisation file ({str(e).splitlines()[0]}); it must hold "
            'a JSON object such as {"mean": [0.5], "std": [0.25]}'
        ) from None


def _from_mapping(spec: Mapping[str, Any], source: str, requested: str) -> _Choice:
    if not isinstance(spec, Mapping):
        raise XpruneError(
            f'the normalisation {source} must be a JSON object such as {{"mean": [0.5], "std": [0.25]}}; '
            f"got a {type(spec).__name__}"
        )
    method = spec.get("method")
    if method == "none" and "mean" not in spec and "std" not in spec:
        return _Choice("none", requested, source=source)
    missing = [k for k in ("mean", "std") if k not in spec]
    if missing:
        raise XpruneError(
            f"the normalisation {source} needs keys 'mean' and 'std' (one value per channel, or one "
            f"number for all); it lacks {' and '.join(repr(k) for k in missing)} "
            f"(keys found: {sorted(map(str, spec))})"
        )
    mean = _numbers(spec["mean"], "mean", source)
    std = _numbers(spec["std"], "std", source)
    if (std <= 0).any():
        raise XpruneError(
            f"the normalisation {source} has std {_short(std)}; every std must be > 0 (inputs are divided by it)"
        )
    return _Choice("given", requested, mean, std, source)


def _numbers(values: Any, what: str, source: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim > 1 or arr.size == 0:
        raise XpruneError(
            f"the normalisation {source} has {what} {values!r}; give a number or a list of numbers (one per channel)"
        )
    if not np.isfinite(arr).all():
        raise XpruneError(f"the normalisation {source} has {what} {_short(arr)}; every value must be finite")
    return arr


def _short(arr: Any, limit: int = 4) -> str:
    vals = [float(v) for v in np.asarray(arr, dtype=np.float64).reshape(-1)]
    text = ", ".join(f"{v:.4g}" for v in vals[:limit])
    return f"[{text}{', ...' if len(vals) > limit else ''}]"


def parse(normalize: Any, builtin: bool) -> _Choice:
    """Read a ``normalize=`` value (before the data is loaded, so a bad one fails fast).

    ``builtin`` says whether the data is a built-in named dataset (``"auto"``
    then means ``"mean-std"``) or a file / image folder (``"auto"`` means ``"none"``).
    """
    if normalize is None or isinstance(normalize, (bool, np.bool_)):
        return _Choice("mean-std" if normalize else "none", "mean-std" if normalize else "none")
    if isinstance(normalize, Mapping):
        source = normalize.get("source")  # e.g. "from the image processor of hf:MODEL"
        return _from_mapping(normalize, source if isinstance(source, str) and source else "given as a dict", "dict")
    if isinstance(normalize, os.PathLike):
        path = Path(normalize)
        return _from_mapping(_read_json(path), f"from {path}", str(path))
    if not isinstance(normalize, str):
        raise XpruneTypeError(f"{_FORMS}; got {type(normalize).__name__} {normalize!r}")
    key = normalize.strip().lower().replace("_", "-")
    if key == "auto":
        return _Choice("mean-std" if builtin else "none", "auto")
    if key in ("mean-std", "none"):
        return _Choice(key, key)
    if normalize.lower().endswith(".json") or os.sep in normalize or Path(normalize).is_file():
        path = Path(normalize)
        return _from_mapping(_read_json(path), f"from {path}", str(path))
    raise XpruneError(f"{_FORMS}; got {normalize!r}")


def _stat_shape(X: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (X.dim() - 2)


def _per(X: torch.Tensor) -> str:
    return "channel" if X.dim() > 2 else "feature"


def _fit_given(values: np.ndarray, n: int, what: str, choice: _Choice, per: str) -> torch.Tensor:
    if values.ndim == 0:  # one number for every channel
        values = np.full(n, float(values))
    if values.size != n:
        plural = "s" if n != 1 else ""
        raise DataError(
            f"the normalisation {choice.source} has {values.size} {what} value(s) but the data has "
            f"{n} {per}{plural}; give one value per {per}, or a single number for all"
        )
    return torch.as_tensor(values, dtype=torch.float32)


def apply(
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]], choice: _Choice, input_scaling: str | None = None
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """Normalise the splits as ``choice`` says; returns the splits, ``mean``, ``std`` and the record."""
    Xtr = tensors["train"][0]
    per = _per(Xtr)
    record: dict[str, Any] = {"method": choice.method}
    if choice.method == "none":
        mean = std = None
        if choice.source:
            record["source"] = choice.source
    elif choice.method == "mean-std":
        if len(Xtr) == 0:
            raise DataError("cannot normalise: the train split is empty; pass normalize='none' or give more data")
        dims = [0, *range(2, Xtr.dim())]
        mean = Xtr.mean(dim=dims)
        std = Xtr.std(dim=dims) if len(Xtr) > 1 else torch.ones_like(mean)
        std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant channels stay unscaled
        record.update(mean=mean.tolist(), std=std.tolist(), fitted_on="train split")
    else:
        n = Xtr.shape[1]
        mean = _fit_given(choice.mean, n, "mean", choice, per)
        std = _fit_given(choice.std, n, "std", choice, per)
        record.update(mean=mean.tolist(), std=std.tolist(), source=choice.source)
    if mean is not None and std is not None:
        record["per"] = per
        shape = _stat_shape(Xtr)
        m, s = mean.view(shape), std.view(shape)
        tensors = {k: ((a - m) / s, b) for k, (a, b) in tensors.items()}
    record["requested"] = choice.requested
    if input_scaling:
        record["input_scaling"] = input_scaling
    return tensors, mean, std, record


def record_from_stats(mean: torch.Tensor | None, std: torch.Tensor | None) -> dict[str, Any]:
    """The record of a :class:`Dataset` built by hand from ``mean`` / ``std`` (or none)."""
    if mean is None or std is None:
        return {"method": "none"}
    return {
        "method": "given",
        "mean": torch.as_tensor(mean).reshape(-1).tolist(),
        "std": torch.as_tensor(std).reshape(-1).tolist(),
        "source": "Dataset(mean=, std=)",
    }


def describe(record: Mapping[str, Any], *, cli: bool = False) -> str:
    """One line saying what was applied to the inputs and how to change it (``Dataset.describe_normalization``)."""

    def opt(value: str) -> str:
        return f"--normalize {value}" if cli else f"normalize={value!r}"

    method = record.get("method", "none")
    scaling = record.get("input_scaling")
    prefix = f"{scaling}, then " if scaling else ""
    if method == "none":
        line = (
            f"inputs fed to the model as stored{f' ({scaling})' if scaling else ''}, without normalisation; "
            f"pass {opt('mean-std')} to standardise them with the train split's mean/std, or "
            f"{opt('STATS.json')} with the mean/std the model was trained with"
        )
        return line
    per = record.get("per", "channel")
    mean, std = record.get("mean", []), record.get("std", [])
    if len(mean) <= 3:
        values = f"mean {_short(mean)}, std {_short(std)}"
    else:
        values = f"{len(mean)} values each; Dataset.normalization lists them"
    if method == "mean-std":
        what = f"standardised with the train split's mean and std per {per} ({values})"
    else:
        src = record.get("source")
        what = f"normalised with the given mean and std per {per} ({values}{f', {src}' if src else ''})"
    return f"{prefix}inputs {what}; pass {opt('none')} to feed them as stored"


def save_normalization(dataset: Any, path: str | os.PathLike) -> Path:
    """Write the normalisation of ``dataset`` as JSON, for ``load(..., normalize=path)`` to apply again.

    Parameters
    ----------
    dataset : Dataset
        A dataset from :func:`xprune.data.load` (its :attr:`Dataset.normalization`
        is written), or a dict ``{"mean": [...], "std": [...]}``.
    path : str or path-like
        The JSON file to write (replaced atomically if it exists).

    Returns
    -------
    Path
        ``path``. Loading other data with ``normalize=path`` applies the same
        mean and std (recorded there as method ``"given"``); a dataset that was
        not normalised writes ``{"method": "none"}``, which applies nothing.

    Examples
    --------
    >>> train = xprune.data.load("train.npz", normalize="mean-std")  # doctest: +SKIP
    >>> xprune.data.save_normalization(train, "stats.json")  # doctest: +SKIP
    >>> test = xprune.data.load("test.npz", normalize="stats.json")  # doctest: +SKIP
    """
    from .._io import atomic_write

    record = getattr(dataset, "normalization", dataset)
    if not isinstance(record, Mapping):
        raise XpruneTypeError(
            f"save_normalization expects a Dataset from xprune.data.load or a dict with "
            f"'mean' and 'std'; got {type(dataset).__name__}"
        )
    record = dict(record)
    if record.get("method") != "none":
        _from_mapping(record, "to save", "dict")  # refuse to write what load could not read back
    for key in ("mean", "std"):
        if isinstance(record.get(key), torch.Tensor):
            record[key] = record[key].reshape(-1).tolist()
    path = Path(path)
    if path.is_dir():
        raise XpruneError(f"{path} is a folder; give a file name inside it, e.g. {path / 'normalization.json'}")
    atomic_write(path, json.dumps({"xprune": "normalization", **record}, indent=1) + "\n")
    return path
