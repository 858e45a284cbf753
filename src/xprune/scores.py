"""Scores: one value per unit, and :func:`score`, the entry point that computes them."""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _inputs
from .criteria import base as criteria
from .errors import DataError, XpruneError, XpruneWarning
from .units import UnitSet, discover

NORMALIZATIONS = (None, "none", "l1", "l2", "max", "mean")


def normalize(values: torch.Tensor, how: str | None) -> torch.Tensor:
    """Normalise one layer's scores: ``"l1"`` (divide by the sum of |s|), ``"l2"``, ``"max"`` or none."""
    if how in (None, "none"):
        return values
    if how == "l1":
        d = values.abs().sum()
    elif how == "l2":
        d = values.norm()
    elif how == "max":
        d = values.abs().max()
    elif how == "mean":
        d = values.abs().mean() if values.numel() else values.new_zeros(())
    else:
        raise XpruneError(f"unknown normalisation {how!r}; use one of none, l1, l2, max, mean")
    return values / d if d > 0 else values


class Scores(Mapping):
    """Per-unit scores of a model: a mapping ``group name -> 1-D tensor``.

    Keys are the names (as in ``model.named_modules()``) of the first layer, in
    forward order, whose outputs are the units; ``members[name]`` lists every
    layer of the coupled group. Higher scores mean more important units.

    Attributes
    ----------
    kind : str
        Unit kind (``"channels"``, ``"weights"``, ...).
    criterion : str
        Name of the criterion that produced the scores.
    members : dict
        Group name -> the layers the group's removal touches.
    roots : dict
        Group name -> the layer through which the group is pruned.
    example : dict
        Shapes and dtypes of the example inputs (to rebuild the dependency graph).
    parts : dict
        Group name -> lists of units that must not all be removed (e.g. the
        channels of one branch of a concatenation: removing all of them would
        leave a layer with no output).
    meta : dict
        Anything else worth keeping (options, number of samples).
    """

    def __init__(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        kind: str,
        criterion: str = "",
        members: Mapping[str, Any] | None = None,
        roots: Mapping[str, str] | None = None,
        example: Any = None,
        meta: Mapping[str, Any] | None = None,
        parts: Mapping[str, Any] | None = None,
    ):
        self._values = {k: torch.as_tensor(v).detach().reshape(-1).double().cpu() for k, v in values.items()}
        self.kind = kind
        self.criterion = criterion
        self.members = {k: list(v) for k, v in (members or {}).items()}
        self.roots = dict(roots or {k: k for k in self._values})
        self.example = example
        self.meta = dict(meta or {})
        self.parts = {k: [list(map(int, p)) for p in v] for k, v in (parts or {}).items()}

    @classmethod
    def from_units(cls, values, units: UnitSet, **kw) -> Scores:
        return cls(
            values,
            kind=units.kind,
            members={g.name: g.members for g in units},
            roots={g.name: g.root for g in units},
            example=units.example,
            parts={g.name: [[u for u in m if u >= 0] for m in g.index.values()] for g in units if g.index},
            **kw,
        )

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def total(self) -> int:
        """Total number of units."""
        return sum(v.numel() for v in self._values.values())

    def normalized(self, how: str | None) -> Scores:
        """A copy with every layer's scores normalised (see :func:`normalize`)."""
        return self._replace({k: normalize(v, how) for k, v in self._values.items()})

    def _replace(self, values) -> Scores:
        return Scores(
            values,
            kind=self.kind,
            criterion=self.criterion,
            members=self.members,
            roots=self.roots,
            example=self.example,
            meta=self.meta,
            parts=self.parts,
        )

    def _header(self) -> dict[str, str]:
        return {
            "xprune": "scores",
            "kind": self.kind,
            "criterion": self.criterion,
            "members": json.dumps(self.members),
            "roots": json.dumps(self.roots),
            "example": json.dumps(self.example),
            "meta": json.dumps(self.meta, default=str),
            "parts": json.dumps(self.parts),
            "order": json.dumps(list(self._values)),
        }

    def save(self, path: str | Path) -> None:
        """Save to ``.safetensors`` (tensors + JSON metadata) or any other suffix with ``torch.save``."""
        from ._io import atomic_write

        path = Path(path)
        tensors = {k: v.contiguous() for k, v in self._values.items()}
        if path.suffix == ".safetensors":
            from safetensors.torch import save

            data = save(tensors, metadata=self._header())
            atomic_write(path, data)
        else:
            import io

            buf = io.BytesIO()
            torch.save({"header": self._header(), "values": tensors}, buf)
            atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        """Load scores written by :meth:`save`."""
        path = Path(path)
        if not path.exists():
            raise XpruneError(f"no scores file at {path}")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    header = f.metadata() or {}
                    values = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys() but is not iterable
            else:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                header, values = blob["header"], blob["values"]
        except Exception as e:  # safetensors, zip and unpickling errors of a damaged file
            raise XpruneError(
                f"{path} cannot be read as a scores file (truncated or corrupt?): "
                f"{type(e).__name__}: {e}. Recompute the scores with xprune.score"
            ) from e
        if not isinstance(header, dict) or header.get("xprune") != "scores":
            raise XpruneError(f"{path} is not an xprune scores file (written by Scores.save)")
        try:
            values = {k: values[k] for k in json.loads(header.get("order", "[]")) or values}  # forward order
            return cls(
                values,
                kind=header["kind"],
                criterion=header["criterion"],
                members=json.loads(header["members"]),
                roots=json.loads(header["roots"]),
                example=json.loads(header["example"]),
                meta=json.loads(header["meta"]),
                parts=json.loads(header.get("parts", "{}")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise XpruneError(
                f"{path} is a damaged scores file ({type(e).__name__}: {e}); recompute the scores with xprune.score"
            ) from e

    def __repr__(self) -> str:
        return f"Scores(criterion={self.criterion!r}, kind={self.kind!r}, groups={len(self)}, units={self.total})"


def score(
    model: nn.Module,
    data: Any = None,
    criterion: Any = "lrp",
    units: str | UnitSet = "channels",
    *,
    target: Any = "label",
    normalize: str | None = "default",
    example_inputs: Any = None,
    include_output: bool = False,
    ignore=(),
    batch_size: int = 128,
    progress: bool = False,
    device: Any = None,
    precision: str | None = None,
    **options: Any,
) -> Scores:
    """Score every prunable unit of ``model``.

    Parameters
    ----------
    model : nn.Module
        The model; it is never modified (eval mode is used while scoring and
        the train/eval flags are restored).
    data : iterable of batches, (X, y) pair, dict of tensors or xprune.data.Split
        The reference samples, streamed batch by batch. A batch is an
        ``(inputs, labels)`` pair, a dict of model inputs with the labels
        under ``"labels"`` (Hugging Face style, e.g. a ``DataLoader`` of a
        tokenised dataset; the other keys are passed to the model as keyword
        arguments), or the inputs alone when the target needs no labels.
        Labels are one class per sample ``[N]`` or one per token ``[N, T]``
        (``-100`` = not counted; for causal language models position ``t``
        is judged on ``labels[:, t + 1]``, as in Hugging Face's loss). See
        :func:`xprune._inputs.batches` for every accepted form. May be
        ``None`` only for criteria that need no data (``"weight"``,
        ``"l2"``, ``"random"``), in which case ``example_inputs`` is required.
    criterion : str, Criterion class or instance
        See :func:`xprune.criteria.available`.
    units : str or UnitSet
        Unit kind (``"channels"``, ``"weights"``) or units found before with
        :func:`xprune.units.discover`.
    target : "label", "predicted", "embedding", int or callable
        What the scores explain: the logit of the true label (default; with
        labels per token, of every labelled token, padding excluded), of the
        model's top class (``"predicted"``), of a fixed class (int) or of
        ``target(output, labels)``; or, for an encoder without a task head
        (``AutoModel``, a sentence encoder), ``"embedding"``: the similarity
        of its sentence embedding (token states averaged over the attention
        mask) to the original model's, which needs no labels. On a model
        with logits, ``"embedding"`` explains the logits vector as a whole
        (label-free). See :class:`~xprune.criteria.base.Objective`.
    normalize : "default", None, "l1", "l2", "max" or "mean"
        Per-layer normalisation: every layer's scores divided by their sum
        of absolute values (``"l1"``), Euclidean norm (``"l2"``), largest
        absolute value (``"max"``) or mean absolute value (``"mean"``);
        ``None`` keeps the raw scores. A positive factor per layer, so the
        ranking *within* a layer (``select(..., scope="local")``) never
        changes; it matters for the global ranking, where raw scores of
        different layers are on unrelated scales (e.g. weight norms grow
        with a layer's fan-in, so a 50% global plan on raw ``weight``
        scores removes whole layers). ``"default"`` is the criterion's own
        (:func:`default_normalization`: its class's ``default_normalize``,
        per unit kind where the class says so):

        ===================================  ==========  ========================================
        criterion                            default     why
        ===================================  ==========  ========================================
        ``taylor``, ``taylor-mean``          ``"l2"``    Molchanov et al. 2017, eq. (9)
        ``weight``, ``l2``, ``gradient``,    ``"mean"``  every layer's mean score 1, as
        ``activation``,                                  Torch-Pruning's importances by default
        ``integrated-gradients``, ``singe``,             (``normalizer="mean"``); unlike ``"l1"``
        ``singe-fast``                                   it does not depend on the layer's width
        ``weight``, ``l2`` on single         None        global magnitude pruning (Han et al.
        weights (``units="weights"``)                    2015): raw ``|w|`` across layers
        ``random``                           None        uniform scores share one scale already
        ``lrp``                              None        PXP (Hatefi et al. 2024): one global
                                                         ranking, no normalisation
        ``pbe``                              ``"l1"``    Yeom et al. 2021 (their
                                                         ``normalize_ranks_per_layer``)
        ===================================  ==========  ========================================

        Yeom et al. (2021) L1-normalise every criterion per layer before
        their global ranking (``normalize="l1"``); with layers of different
        widths L1 favours removing the wide layers' units (their normalised
        scores are smaller), which is why the baselines default to
        ``"mean"``. ``normalize=None`` reproduces PXP's unnormalised global
        ranking for any criterion. Measured on the demo's model
        (``benchmarks/fair_demo.py``, ``benchmarks/results/fair_demo.json``),
        L1 puts the cut almost entirely into the widest layer.
    example_inputs : optional
        Inputs used to trace the model; default: the first sample of ``data``.
    include_output, ignore :
        See :func:`xprune.units.discover`.
    progress : bool
        Show a progress bar over batches (on rank 0 only in a process group).
    device : str or torch.device, optional
        Score on this device (e.g. ``"cuda"``): the model is moved there for
        the call and back afterwards, every batch is moved there. Default: the
        model's device.
    precision : "fp32" or "bf16", optional
        ``"bf16"`` runs the passes under bf16 autocast for the criteria whose
        rule allows it (see :mod:`xprune.distributed`); sums stay float64.
    **options :
        Options of the criterion (e.g. ``seed`` for random, ``composite`` for lrp).

    Returns
    -------
    Scores

    Notes
    -----
    Inside an initialised ``torch.distributed`` process group, pass the same
    data on every rank: each rank scores its share and the per-unit sums are
    all-reduced, giving the single-process scores (see :mod:`xprune.distributed`).
    """
    from . import distributed

    if isinstance(target, str) and target not in criteria.TARGETS:
        raise XpruneError(
            f"unknown target {target!r}; use 'label', 'predicted', 'embedding', a class index (int) "
            "or a callable(output, labels)"
        )
    crit = criteria.get(criterion, **options)
    with distributed.on_device(model, device) as dev:
        raw, unit_set, used = _compute(
            model,
            data,
            crit,
            units,
            dev,
            target=target,
            example_inputs=example_inputs,
            include_output=include_output,
            ignore=ignore,
            batch_size=batch_size,
            progress=progress,
            precision=precision,
        )
    for g in unit_set:
        if g.name not in raw or raw[g.name].numel() != g.size:
            raise XpruneError(f"criterion {crit.name!r} returned no/incorrectly sized scores for {g.name!r}")
    bad = [g.name for g in unit_set if not torch.isfinite(torch.as_tensor(raw[g.name])).all()]
    if bad:
        raise DataError(
            f"criterion {crit.name!r} gave NaN/Inf scores for {bad[:5]}: the model's activations or gradients "
            "overflow or are NaN on these inputs. Check the inputs for NaN/Inf and that they are normalised "
            "as the model expects; for LRP, a larger epsilon stabilises the rules"
        )
    how = default_normalization(crit, unit_set.kind) if normalize == "default" else normalize
    values = {g.name: _normalize_one(raw[g.name], how) for g in unit_set}
    meta = {"normalize": how, "target": target if isinstance(target, (str, int)) else "callable"}
    meta.update(used)
    return Scores.from_units(values, unit_set, criterion=crit.name, meta=meta)


def default_normalization(crit: criteria.Criterion, kind: str) -> str | None:
    """The per-layer normalisation ``normalize="default"`` means for ``crit`` on unit kind ``kind``.

    The criterion's ``default_normalize_for(kind)`` where it defines one (the magnitude criteria: none on
    single weights, global magnitude pruning), else its class's ``default_normalize``.
    """
    pick = getattr(crit, "default_normalize_for", None)
    return pick(kind) if callable(pick) else crit.default_normalize


def _compute(
    model, data, crit, units, dev, *, target, example_inputs, include_output, ignore, batch_size, progress, precision
):
    """Raw scores of ``crit`` (split across ranks in a process group), the units, and what was used."""
    from . import distributed

    stream = None
    if data is not None:
        (x0, y0), stream = _inputs.peek(data, batch_size, need_labels=False)
        x0 = _inputs.to_device(x0, dev)
        if example_inputs is None:
            example_inputs = _inputs.first_sample(x0)
        n_classes = _check_labels(model, x0, y0, target)
    elif crit.requires_data:
        raise DataError(f"criterion {crit.name!r} needs data: pass reference samples as (X, y) or a DataLoader")
    elif example_inputs is None and not isinstance(units, UnitSet):
        raise DataError("pass example_inputs (or data) so the model can be traced to find its units")
    unit_set = (
        units
        if isinstance(units, UnitSet)
        else discover(
            model, _inputs.to_device(example_inputs, dev), units, include_output=include_output, ignore=ignore
        )
    )
    how = distributed.mode(crit, unit_set.kind)
    used = {} if how is None else {"distributed": how, "world_size": distributed.world_size()}
    if how == "fallback":
        warnings.warn(
            f"criterion {crit.name!r} on unit kind {unit_set.kind!r} cannot reduce its sums across "
            "ranks: every rank scores all the reference data (exact, no speed-up)",
            XpruneWarning,
            stacklevel=3,
        )
    # data may declare that its labels are not meant to cover the classes (next tokens of a text: xprune.llm)
    seen = (
        set()
        if stream is not None
        and how is None
        and isinstance(target, str)
        and target == "label"
        and n_classes
        and getattr(data, "label_coverage", True)
        else None
    )
    if stream is not None:
        if how == "shard":
            stream = distributed.shard(data, batch_size, stream)
        stream = _checked(_moved(stream, dev), seen)
        if progress and distributed.is_main():
            stream = _progress(stream, f"scoring ({crit.name})")
    autocast, used["precision"] = distributed.precision_context(crit, precision, dev)
    if used["precision"] == "fp32" and precision is None:
        del used["precision"]
    session = distributed.sharded_session(crit) if how == "shard" else contextlib.nullcontext()
    with _inputs.preserved_state(model), session, autocast:
        raw = crit.compute(model, unit_set, stream if crit.requires_data else None, target=target)
    if seen is not None and crit.requires_data:
        from .data import RestrictedModel  # a domain-restricted model only needs its task classes

        task = model.classes if isinstance(model, RestrictedModel) else None
        _warn_missing_classes(seen, n_classes, task)
    if how in ("replicate", "fallback"):  # identical on every rank, whatever the criterion's randomness
        raw = distributed.broadcast({g.name: torch.as_tensor(raw[g.name]) for g in unit_set if g.name in raw})
    return raw, unit_set, used


def _moved(stream, device):
    for x, y in stream:
        yield _inputs.to_device(x, device), _inputs.to_device(y, device)


def _normalize_one(v, how):
    return normalize(torch.as_tensor(v).double(), how)


def _check_labels(model: nn.Module, x: Any, y: Any, target: Any = "label") -> int | None:
    """Fail early, with a clear message, when inputs or labels do not fit the model.

    Returns the number of classes of a classifier (one label per sample on
    ``[N, C]`` outputs), else None (token labels, vocabularies, embeddings).
    """
    from .units import _check_forward

    first = _inputs.first_sample(x)
    with _inputs.preserved_state(model), torch.no_grad():
        raw = _check_forward(model, first)
    if y is None or (isinstance(target, str) and target == "embedding"):
        return None  # the criteria say what they need (target='label' without labels: a one-line error)
    try:
        out = _inputs.logits(raw)
    except DataError:  # no class scores: criteria that need them say so (suggesting target='embedding')
        return None
    y = torch.as_tensor(y)
    _inputs.integral_labels(y)  # float labels with a fractional part: one-line error
    if out.dim() < 2:
        return None
    batch_out = (len(y) if y.dim() >= 1 else 1, *out.shape[1:])  # the output's shape on the whole batch
    per_sample = y.numel() == batch_out[0]  # [N], or [N, 1]
    if not (per_sample or (len(batch_out) == 3 and tuple(y.shape[1:]) == tuple(batch_out[1:2]))):
        raise _inputs.label_shape_error(tuple(y.shape), batch_out)
    _inputs.check_classes(y, int(out.shape[-1]))  # every label of the batch
    return int(out.shape[-1]) if out.dim() == 2 and per_sample else None


def _checked(stream, seen: set | None = None):
    """Pass batches through, refusing inputs with NaN/Inf (and noting the labels in ``seen``)."""
    for x, y in stream:
        parts = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else [x]
        if any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all() for t in parts):
            raise DataError("the inputs contain NaN or Inf values; clean or impute them before scoring")
        if seen is not None and isinstance(y, torch.Tensor) and y.numel():
            seen.update(torch.unique(y.detach().reshape(-1).cpu()).tolist())
        yield x, y


def _warn_missing_classes(seen: set, n_classes: int, task=None) -> None:
    wanted = set(range(n_classes)) if task is None else {int(c) for c in task}
    missing = sorted(wanted - {int(c) for c in seen})
    if seen and missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        warnings.warn(
            f"the reference samples cover {len(wanted) - len(missing)} of the model's {len(wanted)} "
            f"{'classes' if task is None else 'task classes'} "
            f"(none of class {shown}): the scores ignore what the model needs for those classes. Fine for a "
            "domain restriction to the classes present; otherwise draw samples of every class, e.g. "
            "xprune.data.reference_samples(split, n_per_class)",
            XpruneWarning,
            stacklevel=4,
        )


def _progress(iterable, description: str):
    from ._progress import track

    yield from track(iterable, description, unit="batches")
