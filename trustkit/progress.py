"""Progress of long command-line work: bars on standard error when it is a terminal, nothing otherwise.

Long operations (a YubiKey import of 100,000 keys, ...) take a ``progress`` callable and call it as
``progress(stage, done, total)``: ``stage`` names the step ("read", "seal", "write", ...), ``done`` out of
``total`` units of it are finished. A command hands them :func:`stage_bars`::

    with stage_bars({"read": "reading lines", "write": "writing keys"}) as progress:
        result = operation(..., progress=progress)

Each stage gets its own bar (click's progress bar on stderr), finished when the next stage begins or the
block ends. When stderr is not a terminal (a pipe, a log file, cron) ``progress`` is None and nothing is
drawn, so scripts and logs see only the command's own output. ``progress`` may be called from a worker
thread (the callers of a stage call it from one thread at a time).
"""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Iterator, Mapping, Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int) -> None: ...


def report(progress: "Progress | None", stage: str, done: int, total: int) -> None:
    """Call ``progress`` if there is one (for the operations that take an optional ``progress``)."""
    if progress is not None:
        progress(stage, done, total)


def stderr_is_terminal() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced by something that is not a file
        return False


@contextlib.contextmanager
def stage_bars(labels: Mapping[str, str] | None = None) -> Iterator["Progress | None"]:
    """A ``progress`` that draws one bar per stage on stderr, or None when stderr is not a terminal."""
    if not stderr_is_terminal():
        yield None
        return
    bars = _StageBars(dict(labels or {}), sys.stderr)
    try:
        yield bars
    finally:
        bars.close()


class _StageBars:
    def __init__(self, labels: dict[str, str], file: Any) -> None:
        self._labels = labels
        self._file = file
        self._lock = threading.Lock()
        self._stage: str | None = None
        self._bar: Any = None
        self._total = 0
        self._done = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        import click

        with self._lock:
            if stage != self._stage or self._bar is None or total != self._total:
                self._finish()
                label = self._labels.get(stage, stage)
                width = max(len(text) for text in [label, *self._labels.values()])
                self._bar = click.progressbar(length=max(total, 1), label=label.ljust(width), file=self._file,
                                              show_eta=True, show_percent=True, show_pos=True)
                self._bar.__enter__()
                self._stage, self._total, self._done = stage, total, 0
            # an empty stage (total 0) is complete once reported done
            step = (self._bar.length if done >= total else done) - self._done
            if step > 0:
                self._bar.update(step)
                self._done += step

    def close(self) -> None:
        with self._lock:
            self._finish()

    def _finish(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.__exit__(None, None, None)
