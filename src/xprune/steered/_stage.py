"""Cached, resumable training stages with a progress bar.

Every stage of the steered pipeline (predictor, selector, gates) is a loop of
``steps`` Adam steps on one module. :func:`run_stage` stores

- ``<cache>/steered/<stage>-<key>.pt`` when the stage finishes (the module's
  state and a summary); a later call with the same key loads it and trains
  nothing;
- ``<cache>/steered/<stage>-<key>.partial.pt`` every ``checkpoint_every``
  steps (module, optimiser and random-generator states, step): an interrupted
  stage resumes from there and ends exactly where an uninterrupted one would.

The key is a SHA-256 of the stage's settings, which include the hash of the
weights of every network the stage depends on and of the training data.
Files are written atomically (:func:`xprune._io.atomic_write`).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_write
from ..errors import XpruneError

__all__ = ["tensor_hash", "module_hash", "StageCache", "run_stage", "Interrupted"]


class Interrupted(RuntimeError):
    """Raised by :func:`run_stage` after ``stop_after`` steps (the checkpoint is written first)."""


def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 (16 hex digits) of tensors' dtypes, shapes and values."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def module_hash(module: nn.Module) -> str:
    """Hash of a module's state dict (names, shapes, values): the key of its weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_hash(t).encode())
    return h.hexdigest()[:16]


class StageCache:
    """Where one stage's result and checkpoint live (``enabled=False``: nowhere)."""

    def __init__(self, stage: str, settings: dict[str, Any], root: str | Path | None, enabled: bool = True):
        blob = json.dumps(settings, sort_keys=True, default=str)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self.stage = stage
        self.settings = settings
        self.enabled = enabled and root is not None
        folder = Path(root if root is not None else ".") / "steered"
        self.path = folder / f"{stage}-{self.key}.pt"
        self.partial = folder / f"{stage}-{self.key}.partial.pt"

    def _read(self, path: Path) -> dict | None:
        if not self.enabled or not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged or foreign cache file (any unpickling error): recompute
            return None

    def load(self) -> dict | None:
        return self._read(self.path)

    def load_partial(self) -> dict | None:
        return self._read(self.partial)

    def _write(self, path: Path, state: dict) -> None:
        if self.enabled:
            buf = io.BytesIO()
            torch.save(state, buf)
            atomic_write(path, buf.getvalue())

    def checkpoint(self, state: dict) -> None:
        self._write(self.partial, state)

    def save(self, state: dict) -> None:
        self._write(self.path, state)
        if self.enabled and self.partial.exists():
            self.partial.unlink()


def run_stage(
    cache: StageCache,
    module: nn.Module,
    step_fn: Callable[[torch.Generator, int], tuple[torch.Tensor, dict[str, float]]],
    *,
    steps: int,
    lr: float,
    seed: int,
    progress: bool = True,
    checkpoint_every: int = 50,
    stop_after: int | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
) -> dict[str, Any]:
    """Train ``module``'s trainable parameters for ``steps`` Adam (or AdamW) steps, cached and resumable.

    ``step_fn(generator, step) -> (loss, logs)`` draws its batch and noise
    from ``generator`` only, so a resumed stage repeats the same draws.
    ``stop_after`` ends the loop early, writes a checkpoint and raises
    :class:`Interrupted` (simulates an interruption; for tests).

    Returns the stage summary: ``seconds`` (training time, summed over
    resumptions), ``steps``, ``resumed_from``, ``cached`` (loaded, not
    trained), ``final`` (mean logs over the last 10% of steps), ``history``
    (the logs of every step).
    ``optimizer``: ``"adam"`` or ``"adamw"`` (decoupled ``weight_decay``).
    """
    done = cache.load()
    if done is not None:
        module.load_state_dict(done["module"])
        return dict(done["summary"], cached=True)
    params = [p for p in module.parameters() if p.requires_grad]
    opt: torch.optim.Optimizer
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        raise XpruneError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}")
    gen = torch.Generator().manual_seed(int(seed))
    start, seconds, history = 0, 0.0, []
    part = cache.load_partial()
    if part is not None:
        module.load_state_dict(part["module"])
        opt.load_state_dict(part["optimizer"])
        gen.set_state(part["generator"])
        start, seconds, history = int(part["step"]), float(part["seconds"]), list(part["history"])
    bar = None
    if progress:
        from .._progress import Progress

        bar = Progress(transient=True)
    t0 = time.perf_counter()
    was_training = module.training
    end = steps if stop_after is None else min(steps, start + stop_after)
    with bar if bar is not None else nullcontext():
        task = bar.add_task(f"steered: {cache.stage}", total=steps, completed=start, status="") if bar else None
        for step in range(start, end):
            loss, logs = step_fn(gen, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append({k: float(v) for k, v in logs.items()})
            if bar is not None and task is not None:
                bar.update(task, advance=1, status=" ".join(f"{k} {v:.3g}" for k, v in logs.items()))
            if (
                checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps
            ) or step + 1 == end < steps:
                cache.checkpoint(
                    {
                        "module": module.state_dict(),
                        "optimizer": opt.state_dict(),
                        "generator": gen.get_state(),
                        "step": step + 1,
                        "seconds": seconds + time.perf_counter() - t0,
                        "history": history,
                    }
                )
    module.train(was_training)
    seconds += time.perf_counter() - t0
    tail = history[-max(1, len(history) // 10) :] if history else []
    final = {k: sum(h[k] for h in tail) / len(tail) for k in (tail[0] if tail else {})}
    summary = {
        "stage": cache.stage,
        "key": cache.key,
        "seconds": seconds,
        "steps": len(history),
        "resumed_from": start,
        "final": final,
        "history": history,
        "cached": False,
    }
    if end < steps:
        raise Interrupted(f"stage {cache.stage!r} stopped after step {end} of {steps} (checkpoint written)")
    cache.save({"module": module.state_dict(), "summary": summary})
    return summary
