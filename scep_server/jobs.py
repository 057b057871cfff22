"""Supervision of the server's background jobs.

Each job runs under :class:`Supervisor`: a job that raises is logged (``job.crashed`` with its name and the
exception) and started again after a delay that doubles from ``initial_backoff`` up to ``max_backoff``. While
it is failing, ``/readyz`` shows the check ``job:<name>`` as failed; once a new run has lasted ``settle``
seconds without raising, the job counts as running again and the delay starts over. Cancelling the
supervised task (shutdown) stops the job cleanly, without a restart.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Awaitable, Callable

import structlog

log = structlog.get_logger("jobs")

Job = Callable[[], Awaitable[None]]

INITIAL_BACKOFF = 1.0  # seconds before the first restart
MAX_BACKOFF = 300.0  # the delay doubles up to this
SETTLE = 10.0  # a run that lasts this long without raising means the job works again


@dataclass
class JobState:
    name: str
    failing_since: datetime | None = None  # first failure of the current run of failures
    last_error: str | None = None  # the exception's class name (its text is in the log)
    restarts: int = 0
    finished: bool = False

    def readiness(self) -> str:
        if self.failing_since is None:
            return "ok"
        return f"error: failing since {self.failing_since.isoformat()} ({self.last_error})"


class Supervisor:
    """Runs jobs, restarts those that raise, and exposes their state as readiness checks."""

    def __init__(self, *, initial_backoff: float | None = None, max_backoff: float | None = None,
                 settle: float | None = None):
        self.initial_backoff = INITIAL_BACKOFF if initial_backoff is None else initial_backoff
        self.max_backoff = MAX_BACKOFF if max_backoff is None else max_backoff
        self.settle = SETTLE if settle is None else settle
        self.states: dict[str, JobState] = {}
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, job: Job, readiness: dict | None = None) -> asyncio.Task:
        """Run ``job`` under supervision; its state is registered in ``readiness`` as ``job:<name>``."""
        state = self.states[name] = JobState(name)
        if readiness is not None:
            readiness[f"job:{name}"] = state.readiness
        task = asyncio.create_task(self._supervise(state, job), name=f"job:{name}")
        self.tasks.append(task)
        return task

    async def _supervise(self, state: JobState, job: Job) -> None:
        delay = self.initial_backoff
        loop = asyncio.get_running_loop()
        while True:
            def settled() -> None:
                nonlocal delay
                if state.failing_since is not None:
                    log.info("job.recovered", job=state.name, restarts=state.restarts)
                state.failing_since = None
                delay = self.initial_backoff
            handle = loop.call_later(self.settle, settled)
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, reflected in readiness, restarted
                if state.failing_since is None:
                    state.failing_since = datetime.now(timezone.utc)
                state.last_error = type(exc).__name__
                log.error("job.crashed", job=state.name, error=f"{type(exc).__name__}: {exc}",
                          restart_in=delay, exc_info=exc)
            else:
                state.failing_since = None
                state.finished = True
                log.info("job.finished", job=state.name)
                return
            finally:
                handle.cancel()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)
            state.restarts += 1

    async def stop(self) -> None:
        """Cancel every job and wait until each has stopped."""
        tasks, self.tasks = self.tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
