"""Checkpoints of the resumable schedules (:func:`xprune.schedules.iterative`, :func:`~xprune.schedules.entwined`).

A run's folder holds a JSON state (its settings, plans and history) and the
model of its last complete step, both written atomically; a run resumes only
with the settings it was started with. :func:`seeded` gives every step its own
reproducible random state.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .errors import XpruneError

__all__ = ["seeded", "run_settings", "resume_state", "load_model", "save_checkpoint"]


def seeded(seed: int | None, step: int):
    """Fork torch's CPU random state and seed it for ``step`` (a no-op without a seed)."""
    import contextlib

    import torch

    if seed is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def ctx():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 1_000_003 + step)
            yield

    return ctx()


def run_settings(criterion: Any, options: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """JSON-able settings of a run: what must match to resume it."""
    import json

    return {
        "criterion": criterion if isinstance(criterion, str) else type(criterion).__name__,
        **kw,
        "options": json.loads(json.dumps(options, default=repr)),
    }


def resume_state(folder: Any, state_file: str, settings: dict[str, Any], resume: bool, what: str):
    """The saved state of the run in ``folder`` (``None`` if there is none), checked against ``settings``.

    Without ``resume`` an existing run is an error (it is never overwritten).
    Hidden temporary files left by an interrupted atomic write are removed.
    """
    import json

    if folder is None or not (folder / state_file).exists():
        return None
    if not resume:
        raise XpruneError(
            f"{folder} already holds {what} run; pass resume=True to continue it, or choose an empty checkpoint_dir"
        )
    try:
        state = json.loads((folder / state_file).read_text())
        saved = state["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise XpruneError(
            f"{folder / state_file} cannot be read ({e}): it is damaged or not xprune's; "
            "start afresh in an empty checkpoint_dir"
        ) from e
    diff = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
    if diff:
        raise XpruneError(
            f"the run in {folder} was made with other settings (saved, given): {diff}; "
            "resume with the same settings or use another checkpoint_dir"
        )
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    return state


def load_model(folder: Any, state: dict[str, Any]) -> nn.Module:
    """The model of a saved step (a clear error when the file is damaged)."""
    import torch

    path = folder / state["model"]
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # zip/pickle errors of a truncated or corrupt file
        raise XpruneError(
            f"checkpoint {path} cannot be read (truncated or corrupt?): {e}; start afresh in an empty checkpoint_dir"
        ) from e


def save_checkpoint(folder: Any, state_file: str, step: int, model: nn.Module, state: dict[str, Any]) -> None:
    """Write ``model-step{step}.pt``, then the JSON state naming it, both atomically; drop older models.

    Killed at any moment, the folder holds the state of the last complete
    step and the model it names (and at most a hidden ``.*.tmp`` file).
    """
    import io
    import json

    import torch

    from ._io import atomic_write

    name = f"model-step{step}.pt"
    buf = io.BytesIO()
    torch.save(model, buf)
    atomic_write(folder / name, buf.getvalue())
    state.update(step=step, model=name)
    atomic_write(folder / state_file, json.dumps(state, indent=1, default=str))
    for old in folder.glob("model-step*.pt"):
        if old.name != name:
            old.unlink(missing_ok=True)
