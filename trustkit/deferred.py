"""A flush run a moment later on the event loop: what a buffer of small writes (log lines, metric increments)
needs to go out in one write per period instead of one per item."""
from __future__ import annotations

import threading
from typing import Any, Callable


class DeferredFlush:
    """Schedules `flush` on the running event loop, `delay` seconds after the first item of a batch.

    The caller keeps its own buffer and tells :meth:`on_loop` whether it already holds items (a flush is then
    due); a loop that closed before its flush ran leaves the flush to the next loop the caller runs on. Outside a
    running loop (a thread, the command line) there is nothing to schedule: the caller writes at once.
    """

    def __init__(self, flush: Callable[[], None], delay: float) -> None:
        self.flush = flush
        self.delay = delay
        self._loop: Any = None
        self._thread: "int | None" = None

    def on_loop(self, waiting: bool) -> bool:
        """True on a running event loop, with the flush of the caller's buffer scheduled there; False outside
        one. ``waiting``: the buffer holds items already (their flush may be scheduled on this loop)."""
        if waiting and threading.get_ident() == self._thread and not self._loop.is_closed():
            return True  # the common case, without asking asyncio for the running loop
        import asyncio  # loaded already wherever a loop runs; a command line that never runs one need not load it

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        if not waiting or loop is not self._loop:
            loop.call_later(self.delay, self.flush)
            self._loop, self._thread = loop, threading.get_ident()
        return True
