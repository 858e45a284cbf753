"""Progress of long work on stderr: a bar with an ETA in a terminal, plain lines everywhere else.

In a terminal (stderr is a TTY and ``rich`` is installed) :class:`Progress`
draws rich bars with the elapsed and remaining time, cleared when done
(``transient=True``). When stderr is a file or a pipe (CI logs, ``| cat``,
``2> log``) it prints one plain line per task at most every ``interval``
seconds (default 5), for instance::

    scoring lrp: 40/120 batches, 12 s elapsed, ~18 s left

and a last line when a task that printed (or took longer than ``interval``)
finishes; short work prints nothing. Nothing goes to stdout, so tables and
results piped from stdout stay clean. ``XPRUNE_PROGRESS=off`` silences every
bar, ``=plain`` forces the lines even in a terminal;
``XPRUNE_PROGRESS_INTERVAL=SECONDS`` sets the default ``interval``.

This module imports nothing of xprune (floor 1); ``rich`` is imported only in
a terminal. The API mirrors the part of ``rich.progress`` xprune uses:
:meth:`Progress.add_task`, :meth:`Progress.update`, :meth:`Progress.advance`,
plus :func:`track` over an iterable.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["Progress", "track", "format_seconds"]

#: The rich progress display running now (terminal mode); nested bars add their tasks to it.
_LIVE: list[Any] = []


def format_seconds(seconds: float) -> str:
    """``"12 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _mode(stream: TextIO, enabled: bool) -> str:
    """``"off"``, ``"bar"`` (rich, in a terminal) or ``"plain"`` (lines)."""
    setting = os.environ.get("XPRUNE_PROGRESS", "").strip().lower()
    if not enabled or setting in ("off", "0", "no", "false"):
        return "off"
    if setting == "plain":
        return "plain"
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or stream-like objects without isatty
        tty = False
    if not tty or os.environ.get("TERM") == "dumb":
        return "plain"
    import importlib.util

    return "bar" if importlib.util.find_spec("rich") is not None else "plain"


def _interval(interval: float | None) -> float:
    if interval is not None:
        return float(interval)
    try:
        return max(0.0, float(os.environ.get("XPRUNE_PROGRESS_INTERVAL", "5")))
    except ValueError:
        return 5.0


class _Task:
    __slots__ = ("completed", "description", "fields", "last_line", "printed", "started", "total", "unit")

    def __init__(self, description: str, total: float | None, completed: float, unit: str, fields: dict):
        self.description, self.total, self.completed, self.unit = description, total, completed, unit
        self.fields = fields
        self.started = self.last_line = time.perf_counter()
        self.printed = False

    def line(self, final: bool = False) -> str:
        elapsed = time.perf_counter() - self.started
        done = int(self.completed) if float(self.completed).is_integer() else self.completed
        if self.total is not None and not final:
            total = int(self.total) if float(self.total).is_integer() else self.total
            text = f"{self.description}: {done}/{total} {self.unit}, {format_seconds(elapsed)} elapsed"
            if 0 < self.completed < self.total:
                left = elapsed / self.completed * (self.total - self.completed)
                text += f", ~{format_seconds(left)} left"
        elif final:
            text = f"{self.description}: {done} {self.unit} in {format_seconds(elapsed)}"
        else:
            text = f"{self.description}: {done} {self.unit}, {format_seconds(elapsed)} elapsed"
        status = str(self.fields.get("status") or "").strip()
        return f"{text} ({status})" if status else text


class Progress:
    """Progress of one or more tasks on stderr (see the module docstring).

    Parameters
    ----------
    enabled : bool, default True
        ``False`` makes every method a no-op.
    transient : bool, default True
        In a terminal, clear the bars when done (``False`` leaves them).
    interval : float, optional
        Plain mode: seconds between two lines of one task (default
        ``$XPRUNE_PROGRESS_INTERVAL``, else 5).
    stream : file, optional
        Where to write; default ``sys.stderr`` (looked up when the progress starts).

    Examples
    --------
    >>> with Progress() as bar:                                     # doctest: +SKIP
    ...     task = bar.add_task("scoring lrp", total=120, unit="batches")
    ...     for batch in batches:
    ...         bar.advance(task)
    """

    def __init__(
        self,
        *,
        enabled: bool = True,
        transient: bool = True,
        interval: float | None = None,
        stream: TextIO | None = None,
    ):
        self.enabled, self.transient, self.interval = enabled, transient, _interval(interval)
        self._stream = stream
        self._mode: str | None = None
        self._rich: Any = None  # the rich Progress drawing the bars (this one's, or an enclosing one's)
        self._owns_rich = False
        self._tasks: dict[int, Any] = {}  # our id -> _Task (plain) or rich task id (bar)

    # ------------------------------------------------------------------ lifecycle

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def start(self) -> Progress:
        if self._mode is not None:
            return self
        self._mode = _mode(self.stream, self.enabled)
        if self._mode == "bar":
            if _LIVE:  # nested in a running bar: add our tasks to it
                self._rich = _LIVE[-1]
            else:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress as RichProgress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )

                self._rich = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=Console(file=self.stream),
                    transient=self.transient,
                )
                self._rich.start()
                self._owns_rich = True
                _LIVE.append(self._rich)
        return self

    def stop(self) -> None:
        if self._mode is None:
            return
        if self._mode == "plain":
            for task in list(self._tasks):
                self._finish(task)
        elif self._rich is not None:
            if self._owns_rich:
                self._rich.stop()
                if _LIVE and _LIVE[-1] is self._rich:
                    _LIVE.pop()
            else:
                for rid in self._tasks.values():
                    self._rich.remove_task(rid)
        self._tasks.clear()
        self._mode = None

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ tasks

    def add_task(
        self, description: str, total: float | None = None, completed: float = 0, *, unit: str = "steps", **fields: Any
    ) -> int:
        """Start a task; returns its id for :meth:`update` and :meth:`advance`."""
        self.start()
        fields.setdefault("status", "")
        key = len(self._tasks)
        while key in self._tasks:
            key += 1
        if self._mode == "bar":
            self._tasks[key] = self._rich.add_task(description, total=total, completed=completed, **fields)
        elif self._mode == "plain":
            self._tasks[key] = _Task(description, total, completed, unit, fields)
        return key

    def update(
        self,
        task: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        """Move a task on (``advance``) or to ``completed``, and/or change its total, description or fields."""
        if task not in self._tasks:
            return
        if self._mode == "bar":
            kwargs = {
                k: v
                for k, v in (
                    ("advance", advance),
                    ("completed", completed),
                    ("total", total),
                    ("description", description),
                )
                if v is not None
            }
            self._rich.update(self._tasks[task], **kwargs, **fields)
            return
        t = self._tasks[task]
        if completed is not None:
            t.completed = completed
        if advance is not None:
            t.completed += advance
        if total is not None:
            t.total = total
        if description is not None:
            t.description = description
        t.fields.update(fields)
        now = time.perf_counter()
        if now - t.last_line >= self.interval and not (t.total is not None and t.completed >= t.total):
            self._print(t.line())
            t.last_line, t.printed = now, True

    def advance(self, task: int, advance: float = 1) -> None:
        """Move a task on by ``advance`` steps."""
        self.update(task, advance=advance)

    def remove_task(self, task: int) -> None:
        """End a task (plain mode: its last line, if it printed or took longer than ``interval``)."""
        if task not in self._tasks:
            return
        if self._mode == "bar":
            self._rich.remove_task(self._tasks.pop(task))
        else:
            self._finish(task)

    def log(self, message: str) -> None:
        """Print a line above the bars (a plain line in plain mode; nothing when disabled)."""
        self.start()
        if self._mode == "bar":
            self._rich.console.print(message, highlight=False, soft_wrap=True)
        elif self._mode == "plain":
            self._print(message)

    # ------------------------------------------------------------------ plain mode

    def _finish(self, task: int) -> None:
        t = self._tasks.pop(task)
        if t.printed or time.perf_counter() - t.started >= self.interval:
            self._print(t.line(final=True))

    def _print(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not stop the work
            print(text, file=self.stream, flush=True)


def track(
    iterable: Iterable,
    description: str,
    *,
    total: float | None = None,
    enabled: bool = True,
    transient: bool = True,
    unit: str = "steps",
    interval: float | None = None,
) -> Iterator:
    """Iterate ``iterable``, showing its progress (see :class:`Progress`).

    ``total`` defaults to ``len(iterable)`` when it has one.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]  # unsized iterables raise TypeError, caught below
        except TypeError:
            total = None
    if not enabled:
        yield from iterable
        return
    with Progress(transient=transient, interval=interval) as bar:
        task = bar.add_task(description, total=total, unit=unit)
        for item in iterable:
            yield item
            bar.advance(task)
