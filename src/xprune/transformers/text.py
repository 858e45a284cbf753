"""Text data for Hugging Face models: :func:`text_data` reads a file into tokenised train / val / test splits.

:func:`text_data` reads a ``.txt`` or ``.jsonl`` file into train / val /
test splits of tokenised text that xprune can score and evaluate on:
``split.batches(batch_size)`` yields ``({"input_ids", "attention_mask"},
labels)`` batches padded per batch, with the labels transformers expects
(class indices, or for causal language models the input ids with ``-100``
at the padding). :mod:`.hub` re-exports :func:`text_data`, :class:`TextData`
and :class:`TextSplit` (``xprune.transformers.hub.text_data``), beside the
model loading and saving.

Example::

    from xprune.transformers import hub
    loaded = hub.load("path/to/model")
    data = hub.text_data("reviews.jsonl", loaded.tokenizer, task=loaded.task,
                         label_names=[loaded.model.config.id2label[i]
                                      for i in range(loaded.model.config.num_labels)])
    ref = xprune.data.reference_samples(data.train, 8, seed=0)
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, XpruneError, XpruneWarning
from .surgery import _quiet

__all__ = ["TextSplit", "TextData", "text_data"]


class TextSplit:
    """One split of tokenised text: token ids, labels and class names.

    Used as data by xprune (:func:`xprune.score`, the evaluation functions):
    :meth:`batches` pads each batch to its longest sample.

    Attributes
    ----------
    input_ids : list of list of int
        The token ids of each sample, special tokens included, unpadded.
    y : torch.Tensor or None
        ``int64`` class labels ``[N]`` (classification); ``None`` for
        ``"causal-lm"`` and ``"embedding"`` data.
    classes : list of str or None
        Names of all classes of the dataset; ``None`` without classes.
    task : str
        The task the samples were made for.
    pad_id : int
        Token id used for padding (the tokenizer's pad token, else its end of
        sequence token, else 0; the attention mask hides it either way).
    texts : list of str
        The text each sample was tokenised from (for blocks of a longer
        text: the whole text).
    label_from : list of int or None
        ``"causal-lm"`` samples read from ``{"prompt", "continuation"}`` lines:
        per sample, the position of the first labelled token (the prompt's
        tokens are labelled ``-100``, not counted); ``None``: every token.
    """

    def __init__(
        self,
        input_ids: list[list[int]],
        y: torch.Tensor | None,
        classes: list[str] | None,
        task: str,
        pad_id: int,
        texts: list[str],
        label_from: list[int] | None = None,
    ):
        self.input_ids = input_ids
        self.y = y
        self.classes = classes
        self.task = task
        self.pad_id = int(pad_id)
        self.texts = texts
        self.label_from = label_from

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_classes(self) -> int | None:
        """Number of classes, ``None`` without classes."""
        return None if self.classes is None else len(self.classes)

    def __getitem__(self, index: Any) -> TextSplit:
        n = len(self)
        if isinstance(index, int):
            index = [range(n)[index]]
        elif isinstance(index, slice):
            index = list(range(n))[index]
        else:
            index = torch.as_tensor(index)
            if index.dtype == torch.bool:
                if index.shape != (n,):
                    raise XpruneError(f"a boolean index must have shape ({n},); got {tuple(index.shape)}")
                index = torch.nonzero(index).flatten()
            index = [range(n)[int(i)] for i in index.flatten().tolist()]
        y = None if self.y is None else self.y[torch.as_tensor(index, dtype=torch.long)]
        return TextSplit(
            [self.input_ids[i] for i in index],
            y,
            None if self.classes is None else list(self.classes),
            self.task,
            self.pad_id,
            [self.texts[i] for i in index],
            None if self.label_from is None else [self.label_from[i] for i in index],
        )

    def subset(self, indices: Any) -> TextSplit:
        """The samples at ``indices`` (positions, an ``int64`` tensor or a bool mask), in that order."""
        return self[indices]

    def collate(self, positions: Sequence[int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One batch ``(inputs, labels)`` of the samples at ``positions``, padded on the right to the longest."""
        seqs = [self.input_ids[int(i)] for i in positions]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        if self.task == "causal-lm":
            labels = ids.masked_fill(mask == 0, -100)
            if self.label_from is not None:  # the prompt is context, only the continuation is labelled
                for row, i in enumerate(positions):
                    labels[row, : self.label_from[int(i)]] = -100
        elif self.y is not None:
            labels = self.y[torch.as_tensor(list(positions), dtype=torch.long)]
        else:
            labels = torch.zeros(len(seqs), dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask}, labels

    def batches(
        self, batch_size: int = 128, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Iterate over ``(inputs, labels)`` mini-batches.

        Parameters
        ----------
        batch_size : int, default 128
            Samples per batch; the last batch may be smaller.
        shuffle : bool, default False
            Visit the samples in an order drawn from ``seed`` (the global
            random state is not touched).
        seed : int, default 0
            Seed of the shuffling order.

        Yields
        ------
        inputs : dict
            ``input_ids`` and ``attention_mask``, ``int64`` ``[B, T]`` with
            ``T`` the longest sample of the batch.
        labels : torch.Tensor
            Classification: class indices ``[B]``. ``"causal-lm"``: the input
            ids with ``-100`` at the padding, ``[B, T]`` (transformers shifts
            them itself). ``"embedding"``: zeros ``[B]`` (class 0 of a
            one-output objective such as
            :class:`~xprune.transformers.minilm.EmbeddingSimilarity`).
        """
        if batch_size < 1:
            raise XpruneError(f"batch_size must be >= 1; got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self.collate(order[start : start + batch_size].tolist())

    def __repr__(self) -> str:
        classes = "" if self.classes is None else f", num_classes={len(self.classes)}"
        return f"TextSplit(n={len(self)}, task={self.task!r}{classes})"


@dataclass
class TextData:
    """Tokenised text split into ``train``, ``val`` and ``test`` (from :func:`text_data`).

    Attributes
    ----------
    train, val, test : TextSplit
        Disjoint splits (``val``/``test`` may be empty for a fraction of 0).
    name : str
        The file's name.
    classes : list of str or None
        Class names (index = label), ``None`` for language-model and embedding data.
    task : str
        The task the samples were made for.
    normalization : None
        Text is not normalised (the attribute mirrors image data's).
    """

    train: TextSplit
    val: TextSplit
    test: TextSplit
    name: str
    classes: list[str] | None
    task: str
    normalization: None = field(default=None)

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def splits(self) -> dict[str, TextSplit]:
        """The splits as a ``{"train": ..., "val": ..., "test": ...}`` dict."""
        return {"train": self.train, "val": self.val, "test": self.test}

    def __repr__(self) -> str:
        return (
            f"TextData(name={self.name!r}, task={self.task!r}, classes={self.classes}, train={len(self.train)}, "
            f"val={len(self.val)}, test={len(self.test)})"
        )


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _jsonl(path: Path, task: str) -> tuple[list[str], list[Any], list[int]]:
    """Texts, raw labels (classification; causal-lm prompt lines: the prompts) and line numbers of a JSON-lines file."""
    texts: list[str] = []
    labels: list[Any] = []
    lines: list[int] = []
    for n, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DataError(
                f"{path}:{n}: not valid JSON ({getattr(exc, 'msg', exc)}); each line must be one "
                'object such as {"text": "...", "label": "..."}'
            ) from None
        if not isinstance(obj, dict):
            raise DataError(f'{path}:{n}: expected a JSON object such as {{"text": "..."}}, got {type(obj).__name__}')
        if task == "causal-lm" and "text" not in obj and ("prompt" in obj or "continuation" in obj):
            prompt, cont = obj.get("prompt"), obj.get("continuation")
            if not isinstance(prompt, str) or not isinstance(cont, str) or not cont:
                raise DataError(
                    f'{path}:{n}: a prompt line needs a "prompt" string and a non-empty "continuation" string'
                )
            texts.append(prompt + cont)
            labels.append(prompt)  # causal-lm: the prompt, whose tokens are not labelled
            lines.append(n)
            continue
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f'{path}:{n}: no "text" string' + ("" if text is None else f" (got {type(text).__name__})"))
        if task == "sequence-classification":
            label = obj.get("label")
            if label is None:
                raise DataError(f'{path}:{n}: no "label" (a class index or name) for sequence-classification')
            if isinstance(label, bool) or not isinstance(label, (int, str)):
                raise DataError(
                    f'{path}:{n}: "label" must be a class index (int) or a class name (string); got {label!r}'
                )
            labels.append(label)
        texts.append(text)
        lines.append(n)
    return texts, labels, lines


def _names(label_names: Any) -> list[str] | None:
    """Class names by index from a list (index = id), ``label2id`` or ``id2label``."""
    if label_names is None:
        return None
    if isinstance(label_names, Mapping):
        items = list(label_names.items())
        if all(isinstance(v, int) for _, v in items):  # label2id
            items = [(v, k) for k, v in items]
        by_id = {int(k): str(v) for k, v in items}
        if sorted(by_id) != list(range(len(by_id))):
            raise XpruneError(f"label_names must number the classes 0..{len(by_id) - 1}; got ids {sorted(by_id)}")
        return [by_id[i] for i in range(len(by_id))]
    return [str(v) for v in label_names]


def _class_labels(path: Path, raw: list[Any], lines: list[int], label_names: Any) -> tuple[torch.Tensor, list[str]]:
    names = _names(label_names)
    is_int = [isinstance(v, int) for v in raw]
    if any(is_int) and not all(is_int):
        odd = is_int.index(not is_int[0])
        raise DataError(
            f"{path}:{lines[odd]}: label {raw[odd]!r} is a class {'index' if is_int[odd] else 'name'} but "
            f"line {lines[0]} has a class {'index' if is_int[0] else 'name'}; use one or the other"
        )
    if all(is_int):
        for v, n in zip(raw, lines, strict=True):
            if v < 0 or (names is not None and v >= len(names)):
                top = "" if names is None else f" (the model has {len(names)} classes)"
                raise DataError(f"{path}:{n}: label {v} is not a class index{top}")
        classes = names if names is not None else [str(i) for i in range(max(raw) + 1)]
        return torch.tensor(raw, dtype=torch.long), classes
    found = sorted(set(raw))
    if names is not None and set(found) <= set(names):
        classes = names
    else:
        if names is not None:
            if len(found) > len(names):
                raise DataError(
                    f"{path} has {len(found)} label names {found[:10]} but the model has "
                    f"{len(names)} classes {names}; use the model's label names or class indices"
                )
            if not all(n == f"LABEL_{i}" for i, n in enumerate(names)):  # transformers' placeholder names
                warnings.warn(
                    f"the labels of {path} ({found[:10]}) are not all among the model's label names "
                    f"({names[:10]}); class i is taken to be the i-th of the sorted names {found[:10]}. "
                    "Use the model's names or class indices if that is not the model's order",
                    XpruneWarning,
                    stacklevel=4,
                )
        classes = found
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[v] for v in raw], dtype=torch.long), list(classes)


def _encode(tokenizer: Any, texts: list[str], max_length: int, blocks: bool) -> tuple[list[list[int]], list[int]]:
    """Token ids (special tokens included) and, per sample, the text it came from.

    ``blocks``: every text is cut into consecutive blocks of up to ``max_length``
    tokens; otherwise it is truncated to ``max_length``.
    """
    if not texts:
        return [], []
    with _quiet():
        enc = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=blocks)
        if blocks and "overflow_to_sample_mapping" not in enc:  # no overflow support: blocks without special tokens
            whole = tokenizer(texts, add_special_tokens=False)["input_ids"]
            cut = [(i, list(s[a : a + max_length])) for i, s in enumerate(whole) for a in range(0, len(s), max_length)]
            return [list(map(int, c)) for _, c in cut], [i for i, _ in cut]
    ids = [list(map(int, s)) for s in enc["input_ids"]]
    source = [int(i) for i in enc["overflow_to_sample_mapping"]] if blocks else list(range(len(ids)))
    return ids, source


def _split_positions(
    n: int, y: torch.Tensor | None, val_fraction: float, test_fraction: float, seed: int
) -> list[list[int]]:
    """Positions of train / val / test, stratified by ``y`` when given (each class split in the same proportions)."""
    gen = torch.Generator().manual_seed(int(seed))
    groups = [torch.arange(n)] if y is None else [torch.nonzero(y == c).flatten() for c in torch.unique(y)]
    parts: list[list[int]] = [[], [], []]
    for group in groups:
        idx = group[torch.randperm(len(group), generator=gen)].tolist()
        n_test, n_val = round(len(idx) * test_fraction), round(len(idx) * val_fraction)
        parts[2] += idx[:n_test]
        parts[1] += idx[n_test : n_test + n_val]
        parts[0] += idx[n_test + n_val :]
    return [sorted(p) for p in parts]


def text_data(
    path: str | os.PathLike,
    tokenizer: Any,
    *,
    task: str,
    max_length: int = 128,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    label_names: Any = None,
) -> TextData:
    """Read a text file into tokenised, seeded train / val / test splits.

    Parameters
    ----------
    path : str or path
        - ``.txt``: plain text; documents are paragraphs separated by blank
          lines. For ``"causal-lm"`` and ``"embedding"`` only: every document
          is cut into consecutive blocks of up to ``max_length`` tokens (the
          tokenizer's special tokens included), one sample per block.
        - ``.jsonl``: one JSON object per line (blank lines are skipped) with a
          ``"text"`` string and, for ``"sequence-classification"``, a
          ``"label"``: a class index (int) or a class name (string). Texts
          are truncated to ``max_length`` tokens (``"causal-lm"``: cut into
          blocks as for ``.txt``). Other keys are ignored. For ``"causal-lm"``
          a line may instead hold ``"prompt"`` and ``"continuation"``: the
          sample is the two strings joined, truncated to ``max_length``, and
          only the continuation is labelled (the first tokens, as many as the
          prompt alone tokenises to, get ``-100``): what ``xprune correct``
          needs to target an unwanted continuation. One form per file.
    tokenizer : transformers tokenizer
        The model's tokenizer (:attr:`Loaded.tokenizer <xprune.transformers.hub.Loaded>`).
    task : str
        ``"causal-lm"``, ``"sequence-classification"`` or ``"embedding"``
        (``"token-classification"`` data is not read yet).
    max_length : int, default 128
        Tokens per sample at most. For ``"causal-lm"``, blocks of a single
        token (nothing to predict) are left out.
    seed : int, default 0
        Seed of the splits.
    val_fraction, test_fraction : float, default 0.1 and 0.2
        Fractions of the samples held out, of every class for classification
        (stratified); the rest is ``train``. Language-model blocks of one
        document may fall into different splits.
    label_names : list of str, label2id or id2label mapping, optional
        The model's class names (``config.id2label``). Names in the file are
        mapped to these when all of them are among them; otherwise class
        ``i`` is the ``i``-th of the sorted names in the file (with a warning
        when the model has real names). Class indices in the file must lie
        below ``len(label_names)``.

    Returns
    -------
    TextData
        ``train`` / ``val`` / ``test`` :class:`TextSplit` s, ``classes``
        (``None`` for ``"causal-lm"`` and ``"embedding"``), ``name``,
        ``normalization = None``. Draw per-class reference samples with
        :func:`xprune.data.reference_samples`.

    Raises
    ------
    DataError
        Unreadable file, a line that is not a JSON object with the needed
        fields (the message names file and line), no sample at all.
    XpruneError
        Bad arguments: unknown task or one whose data this cannot read, no
        tokenizer, another file type, fractions outside [0, 1) or summing to 1 or more.
    """
    from .hub import _check_task  # the task names live with the model classes (hub imports this module)

    _check_task(task)
    if task == "token-classification":
        raise XpruneError(
            "text_data does not read token-classification data (per-token labels) yet; prune such "
            "models with batches of {'input_ids', 'attention_mask'} and per-token labels of your own"
        )
    if task == "image-classification":
        raise XpruneError(
            "image-classification takes images, not text; read an image folder with xprune.data.load_folder"
        )
    if tokenizer is None or not callable(tokenizer):
        raise XpruneError(
            "text_data needs the model's tokenizer (the model folder has none: save it there with "
            "tokenizer.save_pretrained, or pass one loaded with AutoTokenizer)"
        )
    if not isinstance(max_length, int) or max_length < 2:
        raise XpruneError(f"max_length must be an int >= 2; got {max_length!r}")
    for what, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= v < 1:
            raise XpruneError(f"{what} must be in [0, 1); got {v}")
    if val_fraction + test_fraction >= 1:
        raise XpruneError(f"val_fraction + test_fraction must be < 1; got {val_fraction} + {test_fraction}")
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise XpruneError(f"text_data reads .txt and .jsonl files; got {path.name!r}")
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    y, classes, prompts, label_from = None, None, [], []
    if suffix == ".txt":
        if task == "sequence-classification":
            raise XpruneError(
                f"{path.name} is plain text without labels; sequence-classification needs a .jsonl "
                'file with one {"text": ..., "label": ...} object per line'
            )
        docs, paragraph = [], []
        for line in [*_read_lines(path), ""]:
            if line.strip():
                paragraph.append(line.strip())
            elif paragraph:
                docs.append(" ".join(paragraph))
                paragraph = []
        ids, source = _encode(tokenizer, docs, max_length, blocks=True)
        texts = [docs[i] for i in source]
    else:
        docs, raw, lines = _jsonl(path, task)
        prompts = raw if task == "causal-lm" else []
        if prompts and len(prompts) != len(docs):
            raise DataError(
                f'{path}: mixes "text" lines and "prompt"/"continuation" lines; use one form for a causal LM'
            )
        ids, source = _encode(tokenizer, docs, max_length, blocks=task == "causal-lm" and not prompts)
        texts = [docs[i] for i in source]
        if prompts:  # the first tokens, as many as the prompt alone gives, are context
            label_from = [
                min(len(p), len(s) - 1)
                for p, s in zip(_encode(tokenizer, prompts, max_length, False)[0], ids, strict=True)
            ]
        if task == "sequence-classification" and docs:
            y, classes = _class_labels(path, raw, lines, label_names)
    if not ids:
        raise DataError(f"{path} holds no text")
    if task == "causal-lm":  # a block of one token predicts nothing
        keep = [i for i, s in enumerate(ids) if len(s) >= 2]
        ids, texts = [ids[i] for i in keep], [texts[i] for i in keep]
        label_from = [label_from[i] for i in keep] if prompts else label_from
        if not ids:
            raise DataError(f"every text of {path} is one token long, which gives a causal LM nothing to predict")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None)
    pad = 0 if pad is None else int(pad)
    whole = TextSplit(ids, y, classes, task, pad, texts, label_from if prompts else None)
    train, val, test = (whole[p] for p in _split_positions(len(whole), y, val_fraction, test_fraction, seed))
    if not len(train):
        raise DataError(f"{path} has too few samples ({len(whole)}) to keep any for train; lower the fractions")
    return TextData(train, val, test, path.name, None if classes is None else list(classes), task)
