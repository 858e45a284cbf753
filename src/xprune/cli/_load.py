"""What a command works on: the model (``--model``, ``--weights``) and the data (``--data`` and its options).

:func:`load_source` reads both and returns a :class:`Source`; :func:`load_model`
and :func:`load_data` are its two halves. Conventions:

* ``--model`` is a saved module, ``module:factory``, ``builtin:ARCH`` or
  ``hf:PATH``; the current folder is importable (``python -m`` puts it on
  ``sys.path``, a console script does not: :func:`xprune.cli.main` adds it);
* ``--normalize auto`` applies what the model was trained with when it is
  known: the built-in datasets (and so the built-in models) are standardised
  with the train split's mean/std, ``hf:`` vision models get their image
  processor's mean/std, files and folders are fed as stored.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import XpruneError

TEXT_SUFFIXES = (".txt", ".jsonl")
DATA_SUFFIXES = (".npz", ".pt", ".pth")


@dataclass
class Source:
    """A loaded model and its data, with what the command needs to know about them."""

    model: nn.Module
    data: Any
    hf: Any = None  # xprune.transformers.hub's Loaded, for hf: models
    target: Any = "label"
    units: str = "channels"

    @property
    def normalization(self) -> dict | None:
        return getattr(self.data, "normalization", None)

    def describe_normalization(self) -> str:
        if self.normalization is None:
            return "text inputs tokenised by the model's tokenizer (no normalisation applies)"
        return self.data.describe_normalization(cli=True)

    @property
    def num_classes(self) -> int | None:
        classes = getattr(self.data, "classes", None)
        return len(classes) if classes else None


# ----------------------------------------------------------------------------- models


def _read(path: Path, reader, what: str):
    """Run ``reader()``; a file that is not what it should be gives a clear error, not a traceback."""
    if path.is_dir():
        raise XpruneError(f"{path} is a folder, not {what} file")
    try:
        return reader()
    except XpruneError:
        raise
    except (ModuleNotFoundError, AttributeError) as e:
        raise _import_error(path, e) from e
    except Exception as e:  # zip, pickle and safetensors errors of a damaged or foreign file
        raise XpruneError(
            f"{path} cannot be read as {what} (truncated, corrupt or another format?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def _import_error(path: Path, e: BaseException) -> BaseException:
    """The error for a pickled module whose class cannot be imported (the file itself is fine)."""
    from . import EXTRAS

    if isinstance(e, ModuleNotFoundError):
        name = e.name or "?"
        if name.split(".")[0] in EXTRAS:
            return e  # an optional package: main() says which extra to install
        return XpruneError(
            f"{path} is a saved module whose code lives in the Python module {name!r}, which cannot be imported "
            f"here ({e}); run from the folder holding {name.split('.')[0]}.py, or put that folder on the path: "
            f"PYTHONPATH=/path/to/that/folder xprune ..."
        )
    return XpruneError(
        f"{path} is a saved module whose class cannot be found ({e}); the code that defined it "
        "has changed: restore it, or save model.state_dict() and use --model module:factory "
        "--weights FILE"
    )


def load_model(
    spec: str, *, weights: str | None = None, dataset: str | None = None, seed: int = 0, data_root: str | None = None
) -> nn.Module:
    """A model from ``builtin:ARCH`` (trained on ``dataset``, cached), a saved module file, or ``module:factory``."""
    if spec.startswith("builtin:"):
        from ..models import pretrained

        if dataset is None:
            raise XpruneError("builtin models need --data naming a built-in dataset")
        model, _ = pretrained(
            spec.split(":", 1)[1], dataset, seed=seed, data_kwargs={"root": data_root} if data_root else None
        )
    elif spec.startswith("hf:"):
        raise XpruneError(f"--model {spec}: this command takes a torch module; hf: models are not supported here")
    elif Path(spec).exists():
        path = Path(spec)
        model = _read(path, lambda: torch.load(path, map_location="cpu", weights_only=False), "a saved module")
        if isinstance(model, dict):
            raise XpruneError(f"{path} holds a state dict, not a module: pass --model module:factory --weights {path}")
    elif ":" in spec:
        model = _from_factory(spec)
    else:
        raise XpruneError(
            f"--model {spec!r}: no such file; use a saved module (.pt), module:factory, builtin:ARCH or hf:PATH"
        )
    if weights:
        _load_weights(model, weights)
    if not isinstance(model, nn.Module):
        raise XpruneError(f"--model {spec} did not give a torch.nn.Module (got {type(model).__name__})")
    return model.eval()


def _from_factory(spec: str) -> Any:
    module_name, _, factory = spec.partition(":")
    if not module_name or not factory:
        raise XpruneError(
            f"--model {spec!r}: give module:factory, e.g. mynet:make_net (mynet.py in the current "
            "folder or on PYTHONPATH)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) and missing and module_name.startswith(missing):
            raise XpruneError(
                f"cannot import {module_name!r} for --model {spec}: no {missing.replace('.', '/')}.py in "
                f"the current folder ({os.getcwd()}) nor on PYTHONPATH; run from its folder or set "
                "PYTHONPATH=/path/to/its/folder"
            ) from e
        raise XpruneError(f"importing {module_name!r} for --model {spec} failed: {e}") from e
    if not hasattr(module, factory):
        raise XpruneError(f"module {module_name!r} has no attribute {factory!r}")
    try:
        return getattr(module, factory)()
    except XpruneError:
        raise
    except Exception as e:
        raise XpruneError(
            f"--model {spec}: calling {factory}() failed ({type(e).__name__}: {e}); the factory must "
            "build the model without arguments"
        ) from e


def _load_weights(model: Any, weights: str) -> None:
    wpath = Path(weights)
    if not wpath.exists():
        raise XpruneError(f"--weights {weights}: no such file")
    if not isinstance(model, nn.Module):
        raise XpruneError(f"--weights need a torch.nn.Module to load into; --model gave a {type(model).__name__}")
    if wpath.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = _read(wpath, lambda: load_file(str(wpath)), "a state dict")
    else:
        state = _read(wpath, lambda: torch.load(wpath, map_location="cpu", weights_only=True), "a state dict")
    if not isinstance(state, dict):
        raise XpruneError(f"--weights {weights} holds a {type(state).__name__}, not a state dict")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = [line.strip() for line in str(e).splitlines() if "size mismatch" in line][:2]
        raise XpruneError(
            f"--weights {weights} do not fit the model: {'; '.join(first) or str(e).splitlines()[0]}"
        ) from None
    if missing or unexpected:
        raise XpruneError(f"--weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


# ----------------------------------------------------------------------------- data


def load_data(
    spec: str,
    *,
    seed: int = 0,
    root: str | None = None,
    normalize: Any = "auto",
    image_size: Any = None,
    grayscale: bool = False,
):
    """The dataset ``spec`` names (built-in name, ``.npz``/``.pt`` file or image folder), normalised as asked.

    Parameters
    ----------
    spec : str
        What ``--data`` says.
    seed : int
        Seed of the stratified splits.
    root : str, optional
        Folder of a built-in dataset's files (``--data-root``).
    normalize : "auto", "mean-std", "none", dict or path
        See :func:`xprune.data.load`.
    image_size, grayscale :
        Image folders only (``--image-size``, ``--grayscale``).
    """
    from .. import data as xdata

    path = Path(spec)
    if path.suffix.lower() in TEXT_SUFFIXES:
        raise XpruneError(f"--data {spec} is text: it needs a Hugging Face language model, --model hf:FOLDER")
    if root and (path.is_dir() or path.is_file()):
        raise XpruneError(
            f"--data-root applies to built-in datasets (e.g. fashion-mnist); --data {spec} is a "
            f"{'folder' if path.is_dir() else 'file'} already"
        )
    if path.is_dir():
        return xdata.load(
            "folder", root=str(path), seed=seed, normalize=normalize, image_size=image_size, grayscale=bool(grayscale)
        )
    given = [o for o, v in (("--image-size", image_size), ("--grayscale", grayscale)) if v]
    if given:
        what = "a data file" if path.suffix.lower() in DATA_SUFFIXES or path.is_file() else "a built-in dataset"
        raise XpruneError(
            f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to image folders; --data {spec} is {what}"
        )
    if path.suffix.lower() in DATA_SUFFIXES or path.is_file():
        return xdata.load(str(path), seed=seed, normalize=normalize)
    extra: dict[str, Any] = {"root": root} if root else {}
    return xdata.load(spec, seed=seed, normalize=normalize, **extra)


def _data(args, seed: int, *, normalize: Any = None, image_size: Any = None):
    """:func:`load_data` with the command's data options (``normalize``/``image_size``: the model's defaults)."""
    if getattr(args, "max_length", None) is not None:
        raise XpruneError("--max-length applies to .txt/.jsonl text data of hf: language models")
    size = args.image_size if args.image_size is not None else (image_size if Path(args.data).is_dir() else None)
    return load_data(
        args.data,
        seed=seed,
        root=getattr(args, "data_root", None),
        normalize=args.normalize if normalize is None else normalize,
        image_size=size,
        grayscale=args.grayscale,
    )


def _no_image_options(args, what: str) -> None:
    given = [o for o, v in (("--image-size", args.image_size), ("--grayscale", args.grayscale)) if v]
    if given:
        raise XpruneError(
            f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to image folders; "
            f"--data {args.data} is {what}"
        )


def _hf(args, seed: int) -> Source:
    from ..transformers import hub

    if getattr(args, "weights", None):
        raise XpruneError("--weights does not apply to hf: models: they load the weights saved in their folder")
    loaded = hub.load(args.model[3:])
    model = loaded.model.eval()
    units = "heads" if _has_attention(model) else "channels"
    target = "embedding" if loaded.task == "embedding" else "label"
    data_path = Path(args.data)
    if data_path.suffix.lower() in TEXT_SUFFIXES:
        if loaded.tokenizer is None:
            raise XpruneError(
                f"--data {args.data} is text, but {args.model} has no tokenizer (an image model?); give an image folder"
            )
        _no_image_options(args, "text")
        if args.normalize not in ("auto", "none"):
            raise XpruneError("--normalize applies to images; text is tokenised as it is (drop --normalize)")
        kwargs = {} if args.max_length is None else {"max_length": args.max_length}
        if loaded.task == "sequence-classification":
            kwargs["label_names"] = getattr(model.config, "id2label", None)
        data = hub.text_data(str(data_path), loaded.tokenizer, task=loaded.task, seed=seed, **kwargs)
        return Source(model, data, loaded, target, units)
    if loaded.tokenizer is not None and loaded.image_size is None:
        raise XpruneError(
            f"{args.model} is a language model: give --data a .txt file (texts separated by blank "
            "lines) or a .jsonl file (one {'text': ..., 'label': ...} per line)"
        )
    normalize = args.normalize
    if normalize == "auto" and loaded.normalization is not None:
        normalize = loaded.normalization
    data = _data(args, seed, normalize=normalize, image_size=loaded.image_size)
    return Source(model, data, loaded, target, units)


def _has_attention(model: nn.Module) -> bool:
    from ..transformers import attention_specs

    try:
        return bool(attention_specs(model))
    except Exception:  # noqa: BLE001  (a model the adapters do not read: prune its channels)
        return False


def load_source(args, *, seed: int = 0) -> Source:
    """The model and data of a command, as ``--model``, ``--weights`` and ``--data`` (with its options) say."""
    if args.model.startswith("hf:"):
        source = _hf(args, seed)
    else:
        model = load_model(
            args.model, weights=args.weights, dataset=args.data, seed=seed, data_root=getattr(args, "data_root", None)
        )
        source = Source(model, _data(args, seed))
    if getattr(args, "units", None):
        source.units = args.units
    return source


def reference(source: Source, n_per_class: int, seed: int):
    """``n_per_class`` reference samples per class of the training split (the first ones for unlabelled text)."""
    from .. import data as xdata

    train = source.data.train
    if getattr(source.data, "classes", None):
        try:
            return xdata.reference_samples(train, n_per_class, seed=seed)
        except XpruneError as e:  # name the option, not the Python argument
            raise XpruneError(
                str(e)
                .replace(f"n_per_class={n_per_class}", f"--n-per-class {n_per_class}")
                .replace("lower n_per_class", "lower --n-per-class")
            ) from None
    if hasattr(train, "subset"):  # language models and embeddings: no classes to balance
        n = min(len(train), 10 * n_per_class)
        g = torch.Generator().manual_seed(seed)
        return train.subset(torch.randperm(len(train), generator=g)[:n])
    return train
