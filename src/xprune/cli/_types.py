"""The value types of the ``xprune`` command line's options: each checks its text and says what to give.

A bad value raises ``argparse.ArgumentTypeError`` with what is wrong and what to give; :class:`~._parser.Parser`
turns it into the one-line usage error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: Values of --normalize besides a JSON file of statistics.
NORMALIZE_NAMES = ("auto", "mean-std", "none")


def csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def ints(text: str) -> list[int]:
    """Comma-separated integers (``--seeds 0,1,2``)."""
    values = []
    for t in csv(text):
        try:
            values.append(int(t))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{t!r} is not an integer; give comma-separated integers, e.g. 0,1,2"
            ) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer, e.g. 0")
    return values


def shape(text: str) -> list[int]:
    """An input shape, batch first (``--input-shape 1,3,32,32``)."""
    try:
        dims = [int(t) for t in csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; give comma-separated sizes, batch first, e.g. 1,3,32,32"
        ) from None
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape; give at least two positive sizes, batch first, "
            "e.g. 1,3,32,32 (images) or 1,16 (16 features)"
        )
    return dims


def _number(text: str, kind=float):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and value != value:
        raise argparse.ArgumentTypeError("nan is not a number")
    return value


def ratio(text: str) -> float:
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"ratio must be in [0, 1), got {value}")
    return value


def demo_ratio(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return ratio(text)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}; or give auto (the default)") from None


def level(text: str) -> float:
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {value}")
    return value


def positive(text: str) -> float:
    value = _number(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def min_keep(text: str) -> float | int:
    value = _number(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a count (1, 2, ...) or a fraction in [0, 1), got {value}")
    if value >= 1:
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"a count must be a whole number, got {value}")
        return int(value)
    return value


def device(text: str) -> str:
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; use cpu, cuda or cuda:N")
    return text


def normalize(text: str) -> str:
    if text in NORMALIZE_NAMES:
        return text
    path = Path(text)
    if path.suffix.lower() != ".json":
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither auto, mean-std, none nor a .json file of per-channel "
            'mean and std (e.g. {"mean": [0.5], "std": [0.25]})'
        )
    if not path.is_file():
        raise argparse.ArgumentTypeError(
            f"no such file {text!r}; give auto, mean-std, none or a .json file of per-channel mean and std"
        )
    return text


def image_size(text: str) -> int | tuple[int, int]:
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) not in (1, 2) or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r} is not an image size; give N (square) or HxW, e.g. 28 or 32x48")
    return dims[0] if len(dims) == 1 else (dims[0], dims[1])


def option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(
            f"{text!r} is not KEY=VALUE; e.g. --option aggregate=yeom "
            "('xprune criteria' lists each criterion's options)"
        )
    return key, value.strip()


def composite(text: str) -> str:
    """A composite preset name or a composite JSON file (checked when the command runs)."""
    if text.lower().endswith(".json") and not Path(text).is_file():
        raise argparse.ArgumentTypeError(
            f"no such file {text!r}; give a composite file written by 'xprune tune' "
            "(OUT/best_composite.json) or a preset name such as epsilon-plus"
        )
    return text


def budget(text: str) -> int | float:
    """Units removed at most: a count (``100``) or a fraction of all units (``0.01``)."""
    value = _number(text)
    if 0 < value < 1:
        return value
    if value >= 1 and value.is_integer():
        return int(value)
    raise argparse.ArgumentTypeError(
        f"give a count of units (e.g. 100) or a fraction of them in (0, 1) (e.g. 0.01), got {text!r}"
    )


def classes(text: str) -> list[int]:
    values = ints(text)
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"class indices are >= 0, got {text!r}")
    return values
