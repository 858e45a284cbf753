r"""Large language models: an offline text corpus, calibration blocks and perplexity.

Pruning a decoder-only language model (Llama, Qwen2, GPT-2 families of
Hugging Face ``transformers``; units ``"heads"`` and ``"neurons"``, see
:mod:`xprune.transformers`) needs two kinds of text:

- *calibration* text the criteria read (:func:`calibration`: ``n_samples``
  blocks of ``seq_len`` tokens drawn at random, seeded, from the training
  split; its size is the ``n_samples`` option), and
- *held-out* text the pruned model is evaluated on (:func:`heldout`:
  consecutive blocks of the evaluation split), by :func:`perplexity`.

The corpus
----------
:func:`corpus` gives text that exists offline on every machine: the
docstrings of the Python standard library's modules, classes and functions
(read from the source files with :mod:`ast`, no module is imported; files in
sorted order, nodes in :func:`ast.walk` order, so the text is deterministic
for a given Python version; about 1.5 MB of English prose and examples on
Python 3.11; extracted once and kept as JSON in the xprune cache folder,
``$XPRUNE_CACHE`` or ``~/.cache/xprune``). Pass ``source="path/to/file.txt"`` to use any text file
instead (documents = paragraphs separated by blank lines).

Documents are de-duplicated and each is assigned to a split by a hash of its
text: ``"test"`` holds the documents whose MD5 digest is 0 modulo 10 (about
10%), ``"train"`` the others. The two splits share no document.

Tokens
------
Pass a Hugging Face tokenizer (anything with ``encode(text)`` or called on a
list of texts returning ``{"input_ids": ...}``); without one,
:class:`ByteTokenizer` maps text to its UTF-8 bytes (vocabulary of 256), which
tiny random-initialised models can use.

Example::

    import xprune
    from xprune import llm
    calib = llm.calibration(128, seq_len=256, tokenizer=tok)       # 128 blocks x 256 tokens
    test = llm.heldout(256, n_blocks=64, tokenizer=tok)
    print(llm.perplexity(model, test))
    scores = xprune.score(model, calib, "wanda", "heads")          # or "llm-pruner", "lrp", ...
    pruned = xprune.apply(model, xprune.select(scores, 0.25, scope="local"))
    print(llm.perplexity(pruned, test))

:class:`TokenBlocks` is what :func:`xprune.score` reads: batches of
``({"input_ids": blocks}, next_tokens)``, the label of a block being the
token that follows it in the corpus (the class the ``"lrp"`` and other
target-based criteria explain at the last position; ``"wanda"`` and
``"llm-pruner"`` ignore it).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import math
import os
import re
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _inputs
from .errors import DataError, XpruneError

__all__ = [
    "ByteTokenizer",
    "TokenBlocks",
    "calibration",
    "check_tokens",
    "corpus",
    "documents",
    "heldout",
    "perplexity",
    "tokenize",
]

SPLITS = ("train", "test", "all")
_FORMAT = 1  # version of the docstring extraction (part of the cache key)
_SKIP_DIRS = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__")


# ----------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)
def _stdlib_docstrings() -> tuple[str, ...]:
    """The docstrings, read once per Python installation and kept in the xprune cache folder (JSON)."""
    import json
    import sys

    root = Path(sysconfig.get_paths()["stdlib"])
    key = hashlib.sha256(f"{_FORMAT}|{sys.version}|{root}".encode()).hexdigest()[:16]
    try:
        from .models import cache_dir

        cached = cache_dir() / "corpus" / f"stdlib-docstrings-{key}.json"
    except Exception:  # noqa: BLE001 - no usable cache folder: read the sources every time
        cached = None
    if cached is not None and cached.exists():
        try:
            return tuple(json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass  # unreadable cache file: rebuild it
    docs = _read_stdlib_docstrings(root)
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(docs), encoding="utf-8")
            os.replace(tmp, cached)
        except OSError:
            pass  # read-only cache folder: fine, only slower next time
    return docs


def _read_stdlib_docstrings(root: Path) -> tuple[str, ...]:
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part in _SKIP_DIRS or part.startswith("test") for part in p.relative_to(root).parts)
    )
    docs: list[str] = []
    for f in files:
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue  # a file this Python cannot read is skipped
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 40:
                    docs.append(doc.strip())
    return tuple(docs)


def _file_documents(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"text file {str(path)!r} does not exist; pass an existing UTF-8 text file as source") from None
    except UnicodeDecodeError:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text; convert it (e.g. iconv -t utf-8) or pass another file"
        ) from None
    docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
    if len(docs) < 10:  # too few paragraphs to split by hash: use lines as documents
        docs = [d.strip() for d in text.splitlines() if d.strip()]
    return docs


def _in_test(doc: str) -> bool:
    return int(hashlib.md5(doc.encode("utf-8")).hexdigest(), 16) % 10 == 0


def documents(split: str = "train", source: str | Path | None = None) -> list[str]:
    """The documents of one split of the corpus (see the module documentation).

    Parameters
    ----------
    split : "train", "test" or "all"
    source : path, optional
        A UTF-8 text file (documents = paragraphs); default: the standard
        library's docstrings.
    """
    if split not in SPLITS:
        raise XpruneError(f"split must be one of {SPLITS}; got {split!r}")
    raw = _stdlib_docstrings() if source is None else _file_documents(Path(source))
    seen: set[str] = set()
    docs = []
    for d in raw:
        if d not in seen:
            seen.add(d)
            docs.append(d)
    if split != "all":
        docs = [d for d in docs if _in_test(d) == (split == "test")]
    if not docs:
        where = "the standard library's docstrings" if source is None else repr(str(source))
        raise DataError(
            f"split {split!r} of {where} holds no text; pass a longer text file "
            "(about 10% of its paragraphs go to the test split)"
        )
    return docs


def corpus(split: str = "train", source: str | Path | None = None) -> str:
    """The text of one split: its :func:`documents` joined by blank lines."""
    return "\n\n".join(documents(split, source))


# ----------------------------------------------------------------------------- tokens


class ByteTokenizer:
    """Byte-level tokenizer: a text's UTF-8 bytes are its tokens (vocabulary 256, no special tokens)."""

    vocab_size = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def __call__(self, texts, add_special_tokens: bool = False) -> dict[str, Any]:
        if isinstance(texts, str):
            return {"input_ids": self.encode(texts)}
        return {"input_ids": [self.encode(t) for t in texts]}

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"


def tokenize(texts: str | Sequence[str], tokenizer: Any = None) -> torch.Tensor:
    """One 1-D LongTensor of the tokens of ``texts`` (several texts are joined by blank lines).

    ``tokenizer``: a Hugging Face tokenizer (special tokens are not added) or
    ``None`` for :class:`ByteTokenizer`.
    """
    tok = ByteTokenizer() if tokenizer is None else tokenizer
    if isinstance(tok, ByteTokenizer):  # fast path: the bytes of the joined text
        data = (texts if isinstance(texts, str) else "\n\n".join(texts)).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else torch.zeros(0, dtype=torch.long)
    parts = [texts] if isinstance(texts, str) else [t + "\n\n" for t in texts[:-1]] + list(texts[-1:])
    if callable(tok):
        ids = tok(list(parts), add_special_tokens=False)["input_ids"]
    elif hasattr(tok, "encode"):
        ids = [tok.encode(p, add_special_tokens=False) for p in parts]
    else:
        raise XpruneError(
            f"tokenizer {type(tok).__name__} has no encode(); pass a Hugging Face tokenizer or None (byte-level)"
        )
    flat = [int(i) for seq in ids for i in seq]
    return torch.tensor(flat, dtype=torch.long)


class TokenBlocks:
    """Blocks of token ids ``[n, seq_len]`` with the token following each block, as xprune data.

    Iterating :meth:`batches` gives ``({"input_ids": tokens[i:j]}, next[i:j])``;
    indexing with a slice gives a :class:`TokenBlocks` (used to split the
    blocks across ranks in distributed scoring).

    Attributes
    ----------
    tokens : LongTensor ``[n, seq_len]``
    next : LongTensor ``[n]``
        The corpus token after each block (the label; ``-1`` when the block
        ends the text).
    """

    #: labels are next tokens: :func:`xprune.score` does not warn that they cover few of the vocabulary's "classes"
    label_coverage = False

    def __init__(self, tokens: torch.Tensor, next_tokens: torch.Tensor | None = None):
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32) or tokens.shape[1] < 2:
            raise DataError(
                f"token blocks must be an integer tensor [n_blocks, seq_len >= 2]; got "
                f"{tuple(tokens.shape)} {tokens.dtype}"
            )
        self.tokens = tokens.long()
        if next_tokens is None:
            next_tokens = torch.full((len(tokens),), -1, dtype=torch.long)
        self.next = torch.as_tensor(next_tokens).long().reshape(-1)
        if len(self.next) != len(self.tokens):
            raise DataError(f"{len(self.next)} next tokens for {len(self.tokens)} blocks")

    @property
    def seq_len(self) -> int:
        return int(self.tokens.shape[1])

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index) -> TokenBlocks:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return TokenBlocks(self.tokens[index], self.next[index])

    def batches(self, batch_size: int = 8) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        if batch_size < 1:
            raise XpruneError(f"batch_size must be at least 1; got {batch_size}")
        for i in range(0, len(self), batch_size):
            y = self.next[i : i + batch_size]
            # a block ending the text has no next token: explain its own last token instead
            y = torch.where(y < 0, self.tokens[i : i + batch_size, -1], y)
            yield {"input_ids": self.tokens[i : i + batch_size]}, y

    def __iter__(self):
        return self.batches()

    def __repr__(self) -> str:
        return f"TokenBlocks(n={len(self)}, seq_len={self.seq_len})"


def _stream(split: str, source, tokenizer, text) -> tuple[torch.Tensor, str]:
    if text is not None:
        if source is not None:
            raise XpruneError("pass either text= or source=, not both")
        docs = [text] if isinstance(text, str) else list(text)
        where = "the given text"
    else:
        docs = documents(split, source)
        where = f"split {split!r} of " + ("the standard library's docstrings" if source is None else repr(str(source)))
    return tokenize(docs, tokenizer), where


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise XpruneError(f"seq_len must be an int >= 2 (tokens per block); got {seq_len!r}")


def calibration(
    n_samples: int = 128,
    seq_len: int = 128,
    *,
    tokenizer: Any = None,
    seed: int = 0,
    split: str = "train",
    source: str | Path | None = None,
    text: str | Sequence[str] | None = None,
    model: nn.Module | None = None,
) -> TokenBlocks:
    """``n_samples`` calibration blocks of ``seq_len`` tokens, drawn at random (seeded) from a split.

    The token stream of the split is cut into consecutive non-overlapping
    blocks; a random permutation (``torch.Generator`` seeded with ``seed``)
    picks ``n_samples`` of them. For a fixed seed, a smaller calibration set
    is the first part of a larger one.

    Parameters
    ----------
    n_samples : int
        Number of blocks (the calibration size: e.g. 8, 32, 128).
    seq_len : int
        Tokens per block.
    tokenizer : optional
        A Hugging Face tokenizer; default :class:`ByteTokenizer`.
    seed : int
    split : "train", "test" or "all"
        Which split of the corpus (default: train; evaluate on :func:`heldout`).
    source : path, optional
        A text file instead of the standard library's docstrings.
    text : str or list of str, optional
        Text to use directly (no split).
    model : nn.Module, optional
        When given, fail early if ``seq_len`` exceeds its maximum number of
        positions or the tokens exceed its vocabulary.

    Raises
    ------
    DataError
        When the text holds fewer than ``n_samples`` blocks.
    """
    _check_seq_len(seq_len)
    if not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1:
        raise XpruneError(f"n_samples must be a positive int (number of calibration blocks); got {n_samples!r}")
    ids, where = _stream(split, source, tokenizer, text)
    available = (len(ids) - 1) // seq_len if len(ids) > 1 else 0
    if n_samples > available:
        raise DataError(
            f"{where} holds {len(ids)} tokens: {available} blocks of {seq_len} tokens, fewer than the "
            f"{n_samples} requested; ask for fewer or shorter blocks, or pass more text (source=)"
        )
    gen = torch.Generator().manual_seed(int(seed))
    starts = torch.randperm(available, generator=gen)[:n_samples] * seq_len
    index = starts[:, None] + torch.arange(seq_len)
    blocks = TokenBlocks(ids[index], ids[starts + seq_len])
    if model is not None:
        check_tokens(model, blocks.tokens)
    return blocks


def heldout(
    seq_len: int = 128,
    n_blocks: int | None = None,
    *,
    tokenizer: Any = None,
    split: str = "test",
    source: str | Path | None = None,
    text: str | Sequence[str] | None = None,
    model: nn.Module | None = None,
) -> TokenBlocks:
    """Consecutive non-overlapping blocks of ``seq_len`` tokens of the evaluation split (all, or the first
    ``n_blocks``).

    Parameters as in :func:`calibration`; ``split`` defaults to ``"test"``,
    which shares no document with the ``"train"`` split calibration uses.
    """
    _check_seq_len(seq_len)
    ids, where = _stream(split, source, tokenizer, text)
    available = len(ids) // seq_len
    n = available if n_blocks is None else n_blocks
    if not isinstance(n, int) or n < 1 or n > available:
        raise DataError(
            f"{where} holds {len(ids)} tokens: {available} blocks of {seq_len} tokens; cannot give "
            f"{n_blocks!r}. Ask for 1..{max(available, 1)} blocks, shorter blocks, or pass more text"
        )
    tokens = ids[: n * seq_len].reshape(n, seq_len)
    nxt = torch.cat([ids[seq_len : n * seq_len + 1 : seq_len], torch.full((1,), -1, dtype=torch.long)])[:n]
    blocks = TokenBlocks(tokens, nxt)
    if model is not None:
        check_tokens(model, blocks.tokens)
    return blocks


# ----------------------------------------------------------------------------- checks and perplexity


def _limits(model: nn.Module) -> tuple[int | None, int | None]:
    cfg = getattr(model, "config", None)
    positions = None
    for attr in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            positions = v
            break
    vocab = getattr(cfg, "vocab_size", None)
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None  # type: ignore[operator]  # nn.Module attributes are typed Tensor | Module
    if isinstance(emb, nn.Embedding):
        vocab = emb.num_embeddings
    return positions, vocab if isinstance(vocab, int) else None


def check_tokens(model: nn.Module, tokens: torch.Tensor) -> None:
    """Raise :class:`DataError` when blocks are longer than ``model``'s positions or use ids outside its vocabulary."""
    positions, vocab = _limits(model)
    if positions is not None and tokens.shape[-1] > positions:
        raise DataError(
            f"blocks of {tokens.shape[-1]} tokens are longer than the model's {positions} positions "
            f"(config.max_position_embeddings); use seq_len <= {positions}"
        )
    if vocab is not None and tokens.numel() and (int(tokens.max()) >= vocab or int(tokens.min()) < 0):
        raise DataError(
            f"token ids range from {int(tokens.min())} to {int(tokens.max())} but the model's vocabulary "
            f"has {vocab} entries: tokenize with the model's own tokenizer (tokenizer=...), or use a "
            "model with vocab_size >= 256 for the byte-level default"
        )


def _ids(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict) and isinstance(batch.get("input_ids"), torch.Tensor):
        return batch["input_ids"]
    raise DataError(f"expected token ids (a LongTensor or a dict with 'input_ids'); got {type(batch).__name__}")


def _as_blocks(tokens: Any) -> TokenBlocks:
    if isinstance(tokens, TokenBlocks):
        return tokens
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() == 1:
            tokens = tokens[None]
        return TokenBlocks(tokens)
    raise DataError(
        f"perplexity() takes TokenBlocks (xprune.llm.heldout) or a LongTensor [n, seq_len]; got {type(tokens).__name__}"
    )


def next_token_nll(
    logits: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed next-token negative log-likelihood of ``ids`` under ``logits`` ``[N, T, V]``, and the tokens counted.

    Position ``t`` predicts ``ids[:, t + 1]``; with ``mask`` ``[N, T]`` (an
    attention mask), targets whose token is padding are skipped.
    """
    pred, target = logits[:, :-1], ids[:, 1:]
    if mask is not None:
        target = target.masked_fill(mask[:, 1:] == 0, -100)
    pred = pred.to(torch.promote_types(pred.dtype, torch.float32))  # half precision logits: fp32 softmax
    nll = nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return nll, int((target != -100).sum())


def perplexity(
    model: nn.Module,
    tokens: TokenBlocks | torch.Tensor,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> float:
    r"""Perplexity of a causal language model on token blocks:
    :math:`\exp(\frac{1}{M}\sum -\log p(x_{t+1} \mid x_{\le t}))`.

    Every block is read on its own (no context across blocks); each of its
    ``seq_len - 1`` next tokens is predicted, :math:`M` is their total. The
    model runs in eval mode under ``torch.no_grad``, batch by batch (nothing
    but the running sum is kept); its mode and device are restored.

    Parameters
    ----------
    model : nn.Module
        Returns logits ``[N, T, vocab]`` (or an output with ``.logits``) for
        ``input_ids``.
    tokens : TokenBlocks or LongTensor ``[n, seq_len]``
    batch_size : int
    device : optional
        Evaluate on this device (the model is moved there and back).
    """
    from . import distributed

    blocks = _as_blocks(tokens)
    check_tokens(model, blocks.tokens)
    total, count = 0.0, 0
    with distributed.on_device(model, device) as dev, _inputs.preserved_state(model), torch.no_grad():
        for inputs, _ in blocks.batches(batch_size):
            ids = _ids(inputs).to(dev) if dev is not None else _ids(inputs)
            logits = _inputs.logits(model(input_ids=ids))
            nll, n = next_token_nll(logits, ids)
            total += float(nll)
            count += n
    return math.exp(total / count)
