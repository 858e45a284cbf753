"""The ``xprune`` command line.

Examples::

    xprune demo                                   # the main job on built-in data
    xprune criteria                               # list the criteria and their options
    xprune prune --model builtin:resnet --data mnist --criterion lrp --ratio 0.5 --out pruned.pt
    xprune prune --model builtin:resnet --data mnist --criterion lrp --max-drop 0.01 --confidence 0.95 \\
                 --out pruned.pt           # the largest rate losing <= 1 point with 95% confidence
    xprune prune --model mynet:make_net --weights net.safetensors --data ./images --image-size 32 \\
                 --criterion taylor --ratio 0.3 --n-per-class 10 --out small.pt
    xprune prune --model hf:./my-bert --data reviews.jsonl --units heads --ratio 0.3 --out my-bert-pruned
    xprune curve --model builtin:vgg --data digits --criteria lrp,taylor,weight --seeds 0,1,2 --out curves/
    xprune tune --model builtin:vgg --data digits --trials 20 --out tuned/   # PXP composite search
    xprune prune --model builtin:vgg --data digits --composite tuned/best_composite.json --ratio 0.5 --out p.pt
    xprune export --model pruned.pt --input-shape 1,1,8,8 --out pruned.onnx

Conventions of every command:

* bad input ends it with one line ``xprune: error: ...`` (what is wrong, what
  to give) and exit code 2; an unexpected failure with one line and exit code
  1 (``--traceback`` shows Python's traceback); Ctrl-C with exit code 130;
* results go to stdout, progress and warnings (``warning: ...``, one line
  each) to stderr;
* outputs that exist are refused unless ``--overwrite`` (``--resume``
  continues the long commands);
* ``--normalize auto`` feeds the model its inputs as it was trained, and the
  command prints (and records in its JSON) what it applied;
* the current folder is importable, as with ``python -m``: ``--model
  mynet:make_net`` finds ``./mynet.py``, and so does a pickled model of a class
  defined there.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence

from ..errors import XpruneError
from ._load import load_data, load_model  # public helpers of the command line
from ._parser import build_parser

__all__ = ["main", "build_parser", "load_data", "load_model", "cli_words", "EXTRAS"]

#: Optional packages and the extra of xprune that installs each (pyproject.toml).
EXTRAS = {
    "sklearn": "data",
    "mlxtend": "data",
    "PIL": "data",
    "matplotlib": "plots",
    "rich": "cli",
    "optuna": "tune",
    "transformers": "hf",
    "tokenizers": "hf",
    "onnx": "export",
    "onnxruntime": "export",
}


def _missing_extra(e: BaseException) -> str | None:
    """For an optional package that is not installed, the line saying which extra to install."""
    name = getattr(e, "name", None) or ""
    extra = EXTRAS.get(name.split(".")[0])
    if not isinstance(e, ModuleNotFoundError) or extra is None:
        return None
    return f"this needs the optional package {name.split('.')[0]!r}: pip install 'xprune[{extra}]' (or 'xprune[all]')"


#: Python arguments named in the library's messages, and the command-line option saying the same.
_OPTIONS = ("min_keep", "round_to", "n_per_class", "scope", "device", "precision", "max_drop", "confidence")
_ARGUMENT = re.compile(r"\b(" + "|".join(_OPTIONS) + r")=('?)([^'\s,;)]*)\2")


def cli_words(text: str) -> str:
    """A library message in the command line's words: ``min_keep=0.1`` becomes ``--min-keep 0.1``."""
    return _ARGUMENT.sub(lambda m: f"--{m.group(1).replace('_', '-')} {m.group(3)}", text)


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return cli_words(" ".join(lines) if len(lines) <= 3 else lines[0])


@contextlib.contextmanager
def _session() -> Iterator[None]:
    """For the duration of a command: warnings as one line ``warning: ...``, the current folder importable."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        from ..distributed import is_main

        if not is_main():  # in a process group rank 0 speaks for all
            return
        text = cli_words(" ".join(str(message).split("\n")).strip())
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not stop the command
            print(f"warning: {text}", file=sys.stderr if file is None else file, flush=True)

    added = None
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path and "." not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m xprune` does; a console script puts only its own folder
        added = cwd
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original
        if added is not None:
            with contextlib.suppress(ValueError):
                sys.path.remove(added)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 done, 2 bad input, 1 unexpected failure, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .. import distributed

    started = False
    with _session():
        try:
            # under torchrun (WORLD_SIZE > 1): join the process group; scoring and evaluation split across ranks
            started = distributed.init_from_env(device=getattr(args, "device", None))
            return args.func(args)
        except KeyboardInterrupt:
            print("xprune: interrupted", file=sys.stderr)
            return 130
        except (
            XpruneError,
            ValueError,
            FileNotFoundError,
            ModuleNotFoundError,
            NotADirectoryError,
            PermissionError,
            IsADirectoryError,
        ) as e:
            if args.traceback:
                raise
            prefix = (
                f"xprune: error (rank {distributed.rank()}): " if distributed.world_size() > 1 else "xprune: error: "
            )
            print(f"{prefix}{_missing_extra(e) or _one_line(e)}", file=sys.stderr)
            return 2
        except Exception as e:  # a failure inside the user's model, or a bug: one line, not a traceback
            if args.traceback:
                raise
            text = f"{type(e).__name__}: {_one_line(e)}" if str(e).strip() else type(e).__name__
            print(
                f"xprune: error: {text} (unexpected; run again with --traceback to see where it happened)",
                file=sys.stderr,
            )
            return 1
        finally:
            if started:
                import torch.distributed as dist

                dist.destroy_process_group()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
