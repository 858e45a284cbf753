"""Hugging Face models and text data in the user's own conventions: :func:`load`, :func:`text_data`, :func:`save`.

- :func:`load` opens a local folder written by ``save_pretrained`` (pruned by
  xprune or not) or a model already in the local Hugging Face cache, picks the
  model class from ``config.architectures`` (or the task asked for) and
  returns a :class:`Loaded`: the model in eval mode, its tokenizer, the task,
  and the image normalisation and size of its image processor. Nothing is
  downloaded.
- :func:`text_data` (from :mod:`.text`, re-exported here with
  :class:`TextData` and :class:`TextSplit`) reads a ``.txt`` or ``.jsonl``
  file into train / val / test splits of tokenised text that xprune can
  score and evaluate on, ``split.batches(batch_size)`` yielding
  ``({"input_ids", "attention_mask"}, labels)`` batches.
- :func:`save` writes a pruned model with ``save_pretrained`` together with
  the per-block size record (see :func:`~xprune.transformers.surgery.record_sizes`),
  and the tokenizer / image processor, so that :func:`load` (or
  :func:`~xprune.transformers.load_pruned`) gives the same model back.

Tasks (``Loaded.task`` and the ``task`` arguments): ``"causal-lm"``,
``"sequence-classification"``, ``"token-classification"``,
``"image-classification"`` and ``"embedding"`` (a bare encoder, ``AutoModel``).

Example::

    from xprune.transformers import hub
    loaded = hub.load("path/to/model")                  # or a name in the local HF cache
    data = hub.text_data("reviews.jsonl", loaded.tokenizer, task=loaded.task,
                         label_names=[loaded.model.config.id2label[i]
                                      for i in range(loaded.model.config.num_labels)])
    ref = xprune.data.reference_samples(data.train, 8, seed=0)
    pruned = xprune.apply(loaded.model, xprune.select(xprune.score(loaded.model, ref, "lrp", "heads"), 0.3))
    hub.save(pruned, "pruned-model", tokenizer=loaded.tokenizer)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import XpruneError, XpruneWarning
from .surgery import _quiet, hf_models, load_pruned, record_sizes
from .text import TextData, TextSplit, text_data

__all__ = ["TASKS", "Loaded", "load", "task_of", "TextSplit", "TextData", "text_data", "save"]

#: The tasks :func:`load` and :func:`text_data` know, and the Auto class each loads with.
TASKS = {
    "causal-lm": "AutoModelForCausalLM",
    "sequence-classification": "AutoModelForSequenceClassification",
    "token-classification": "AutoModelForTokenClassification",
    "image-classification": "AutoModelForImageClassification",
    "embedding": "AutoModel",
}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise XpruneError("Hugging Face models need transformers: pip install 'xprune[hf]'") from None
    return transformers


def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise XpruneError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")


def task_of(model_class: Any) -> str | None:
    """The task of a transformers model class (or class name), ``None`` when xprune has no task for it.

    ``*ForCausalLM`` / ``*LMHeadModel`` -> ``"causal-lm"``,
    ``*ForSequenceClassification``, ``*ForTokenClassification``,
    ``*ForImageClassification*`` -> the classification tasks, a bare model
    (``BertModel``, ``ViTModel``, ...) -> ``"embedding"``.
    """
    name = model_class if isinstance(model_class, str) else getattr(model_class, "__name__", "")
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    for suffix, task in (
        ("ForSequenceClassification", "sequence-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForImageClassification", "image-classification"),
    ):
        if suffix in name:
            return task
    if name.endswith("Model") and "For" not in name and not name.startswith("Auto"):
        return "embedding"
    return None


# ----------------------------------------------------------------------------- load


@dataclass
class Loaded:
    """A Hugging Face model loaded by :func:`load`, with what the data pipeline needs to feed it.

    Attributes
    ----------
    model : nn.Module
        The model, in eval mode.
    tokenizer : transformers tokenizer or None
        ``AutoTokenizer`` of the folder; ``None`` when it holds no tokenizer files.
    task : str
        One of :data:`TASKS`.
    normalization : dict or None
        ``{"method": "mean-std", "mean": [...], "std": [...], "source":
        "preprocessor_config.json"}`` when the image processor normalises
        (``do_normalize`` with ``image_mean`` / ``image_std``; these apply to
        pixels already scaled to [0, 1]), else ``None``.
    image_size : tuple of int or None
        ``(height, width)`` of the model's input images, from the image
        processor's ``crop_size`` (when it crops) or ``size``; ``None`` without
        an image processor or when it only fixes the shortest edge.
    path : Path
        The local folder the model was read from.
    """

    model: nn.Module
    tokenizer: Any
    task: str
    normalization: dict[str, Any] | None
    image_size: tuple[int, int] | None
    path: Path


def _resolve(spec: str | os.PathLike) -> Path:
    """The local folder of ``spec``: a folder with ``config.json``, or the snapshot of a cached model."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise XpruneError(f"{path} has no config.json; pass a folder written by save_pretrained")
        return path
    if path.exists():
        raise XpruneError(
            f"{path} is a file; pass the folder written by save_pretrained (it holds config.json) "
            "or the name of a model in the local Hugging Face cache"
        )
    miss = (
        f"{str(spec)!r} is neither a folder nor a model in the local Hugging Face cache, and xprune downloads "
        "nothing: download it beforehand (huggingface-cli download NAME) or save_pretrained it into a folder"
    )
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(spec), local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, not a valid repo name, no huggingface_hub: all the same to the user
        raise XpruneError(miss) from None
    if not (folder / "config.json").is_file():
        raise XpruneError(miss)
    return folder


def _image_processor(path: Path) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
    """Normalisation and input size from ``preprocessor_config.json`` (read as JSON; no image library needed)."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None, None
    try:
        cfg = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise XpruneError(f"cannot read {file}: {exc}") from None
    norm = None
    mean, std = cfg.get("image_mean"), cfg.get("image_std")
    if cfg.get("do_normalize", True) and mean is not None and std is not None:

        def as_list(v: Any) -> list[float]:
            return [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]

        norm = {"method": "mean-std", "mean": as_list(mean), "std": as_list(std), "source": file.name}

    def hw(size: Any) -> tuple[int, int] | None:
        if isinstance(size, int):
            return size, size
        if isinstance(size, dict) and "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        return None

    size = hw(cfg.get("crop_size")) if cfg.get("do_center_crop") else None
    return norm, size or hw(cfg.get("size"))


def _tokenizer(path: Path):
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        with _quiet():
            return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - one line instead of a traceback
        raise XpruneError(
            f"cannot load the tokenizer in {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
            "save it again with tokenizer.save_pretrained"
        ) from None


def load(spec: str | os.PathLike, *, task: str | None = None) -> Loaded:
    """Load a Hugging Face model from a local folder or the local cache, with its tokenizer and image settings.

    Parameters
    ----------
    spec : str or path
        A folder written by ``save_pretrained`` (or :func:`save`), possibly
        pruned by xprune (then rebuilt with
        :func:`~xprune.transformers.load_pruned`), or the name of a model in
        the local Hugging Face cache (``local_files_only``: nothing is
        downloaded).
    task : str, optional
        One of :data:`TASKS`; overrides the task of ``config.architectures[0]``
        (the model is then loaded with the task's ``AutoModelFor...`` class,
        e.g. ``"embedding"`` loads the bare encoder of a classifier).

    Returns
    -------
    Loaded

    Raises
    ------
    XpruneError
        transformers is not installed; ``spec`` is neither a folder with a
        ``config.json`` nor a cached model; the architecture has no task
        xprune knows and ``task`` is not given; the weights do not fit the
        model the config describes.

    Warns
    -----
    XpruneWarning
        Weights the model needs are not in the checkpoint and were initialised
        at random (e.g. a classification head on a bare encoder's checkpoint).
    """
    transformers = _transformers()
    _check_task(task)
    path = _resolve(spec)
    try:
        with _quiet():
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable config: one line instead of a traceback
        raise XpruneError(
            f"cannot read {path / 'config.json'}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    arch_class = getattr(transformers, arch, None) if arch else None
    arch_task = task_of(arch_class) if arch_class is not None else None
    if task is None:
        if arch_class is None:
            model_class, task = transformers.AutoModel, "embedding"
        elif arch_task is None:
            raise XpruneError(
                f"{path}: xprune has no task for {arch}; pass task= one of {', '.join(TASKS)} "
                "(e.g. 'embedding' prunes its encoder)"
            )
        else:
            model_class, task = arch_class, arch_task
    else:
        model_class = arch_class if arch_task == task else getattr(transformers, TASKS[task])
    model = _load_model(path, model_class, config)
    norm, size = _image_processor(path)
    return Loaded(model.eval(), _tokenizer(path), task, norm, size, path)


def _load_model(path: Path, model_class: Any, config: Any) -> nn.Module:
    if getattr(config, "xprune_pruning", None) is not None:
        return load_pruned(path, model_class)
    try:
        with _quiet():
            model, info = model_class.from_pretrained(path, local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - transformers reports a size mismatch "above", in its log
        text = str(exc)
        if "mismatch" in text or "size" in text:
            raise XpruneError(
                f"the weights in {path} do not fit the {model_class.__name__} its config.json "
                "describes (tensor sizes differ): was it pruned and saved without xprune's size "
                "record? Save pruned models with xprune.transformers.hub.save"
            ) from None
        raise XpruneError(
            f"cannot load the model in {path} as {model_class.__name__}: {text.splitlines()[0] if text else repr(exc)}"
        ) from None
    if info.get("mismatched_keys"):
        raise XpruneError(
            f"the weights in {path} do not fit {model_class.__name__}: "
            f"{len(info['mismatched_keys'])} tensors have other sizes, e.g. {info['mismatched_keys'][0]}"
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        warnings.warn(
            f"{len(missing)} weights of {type(model).__name__} are not in {path} and were initialised at "
            f"random (e.g. {missing[0]}): scores and accuracy mean nothing until the model is trained; "
            "or load it with the task it was saved for",
            XpruneWarning,
            stacklevel=3,
        )
    return model


# ----------------------------------------------------------------------------- save


def _inner_model(model: nn.Module) -> nn.Module:
    """The one outermost Hugging Face model inside ``model`` (``model`` itself if it is one)."""
    if not isinstance(model, nn.Module):
        raise XpruneError(f"save expects a torch module holding a Hugging Face model; got {type(model).__name__}")
    found = hf_models(model)
    if not found:
        raise XpruneError(
            f"{type(model).__name__} holds no Hugging Face model (transformers PreTrainedModel); "
            "save other models with xprune.save(model, 'model.safetensors')"
        )
    outer = [(n, m) for n, m in found if not any(o != n and (o == "" or n.startswith(o + ".")) for o, _ in found)]
    if len(outer) > 1:
        raise XpruneError(
            f"{type(model).__name__} holds {len(outer)} Hugging Face models "
            f"({', '.join(n for n, _ in outer)}); save each with save(model.<name>, folder)"
        )
    return outer[0][1]


def save(
    model: nn.Module, path: str | os.PathLike, *, tokenizer: Any = None, processor: Any = None, overwrite: bool = True
) -> Path:
    """Save a (pruned) Hugging Face model with ``save_pretrained``, its size record, tokenizer and processor.

    Parameters
    ----------
    model : nn.Module
        A transformers ``PreTrainedModel``, or a module holding one (e.g.
        :class:`~xprune.transformers.minilm.EmbeddingSimilarity`): the Hugging
        Face model inside is saved (the wrapper's own code is not).
    path : str or path
        The folder to write. It is written completely or not at all (the
        files go to a temporary folder beside it, which then takes its place).
    tokenizer, processor : optional
        A tokenizer and / or an image processor (anything with
        ``save_pretrained``) saved into the same folder.
    overwrite : bool, default True
        Replace a folder that holds a saved model (a ``config.json``). A
        non-empty folder without ``config.json`` is never replaced.

    Returns
    -------
    Path
        The folder.

    Notes
    -----
    The per-block sizes are written as ``xprune_pruning`` into
    ``config.json`` (see :func:`~xprune.transformers.surgery.record_sizes`);
    the model in memory is not changed. Reload with :func:`load` or
    :func:`~xprune.transformers.load_pruned`; plain ``from_pretrained``
    works too where every block kept the same size and the config can say so.

    Examples
    --------
    >>> import tempfile, torch, transformers, xprune
    >>> from xprune.transformers import hub
    >>> config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
    ...                                  num_attention_heads=4, intermediate_size=40, num_labels=2)
    >>> model = transformers.BertForSequenceClassification(config).eval()
    >>> ids, y = torch.randint(0, 50, (8, 6)), torch.randint(0, 2, (8,))
    >>> scores = xprune.score(model, [({"input_ids": ids}, y)], "weight", "neurons")
    >>> pruned = xprune.apply(model, xprune.select(scores, 0.3))
    >>> folder = hub.save(pruned, tempfile.mkdtemp() + "/pruned")
    >>> again = hub.load(folder)
    >>> again.task, bool(torch.allclose(again.model(ids).logits, pruned(ids).logits, atol=1e-6))
    ('sequence-classification', True)
    """
    inner = _inner_model(model)
    for what, obj in (("tokenizer", tokenizer), ("processor", processor)):
        if obj is not None and not callable(getattr(obj, "save_pretrained", None)):
            raise XpruneError(f"the {what} has no save_pretrained; pass a transformers {what} or None")
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise XpruneError(f"{path} is a file; save writes a folder")
        if any(path.iterdir()):
            if not (path / "config.json").is_file():
                raise XpruneError(f"{path} holds files that are not a saved model; choose a new or empty folder")
            if not overwrite:
                raise XpruneError(f"{path} holds a saved model; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # beside it: os.replace stays atomic
    config_before = copy.deepcopy(inner.config.__dict__)
    try:
        tmp.mkdir()  # honours the umask (mkdtemp would make the saved folder private)
        record_sizes(inner)
        with _quiet():
            inner.save_pretrained(tmp)  # type: ignore[operator]  # a transformers PreTrainedModel
        for obj in (tokenizer, processor):
            if obj is not None:
                obj.save_pretrained(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        inner.config.__dict__.clear()
        inner.config.__dict__.update(config_before)
    return path
