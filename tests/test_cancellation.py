"""Stopping never hangs: the loops of the server's jobs wait for a wake-up *or* a timeout, and a shutdown that
cancels them while the wake-up fires must end them.

On Python 3.11, ``asyncio.wait_for`` returns the inner result when the cancellation arrives in the same
iteration as that result, so the cancellation is lost: a loop around it runs on and whoever awaits the
cancelled task (a publisher's ``stop()``, the job supervisor, the application's clean-up) waits forever. The
project waits with ``asyncio.timeout()`` instead, which passes the cancellation on.
"""
from __future__ import annotations

import ast
import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scep_server", "crl", "otp", "trustkit")


def _wait_for_calls() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr == "wait_for" and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == "asyncio":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_module_waits_with_asyncio_wait_for():
    assert _wait_for_calls() == []


async def test_a_loop_cancelled_as_its_wake_up_fires_stops():
    """What the rule protects: the same wait, written both ways, cancelled as the event is set."""
    async def run(wait) -> str:
        wake = asyncio.Event()

        async def loop() -> None:
            while True:
                wake.clear()
                try:
                    await wait(wake)
                except TimeoutError:
                    pass

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.01)
        wake.set()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=1)
        if not done:
            task.cancel()  # the second cancellation is not swallowed: leave nothing running
            await asyncio.wait({task}, timeout=1)
        return "stopped" if done else "still running"

    async def with_timeout(wake: asyncio.Event) -> None:
        async with asyncio.timeout(30):
            await wake.wait()

    async def with_wait_for(wake: asyncio.Event) -> None:
        await asyncio.wait_for(wake.wait(), 30)

    assert await run(with_timeout) == "stopped"
    if sys.version_info < (3, 12):  # Python 3.11's wait_for: the reason for the rule
        assert await run(with_wait_for) == "still running"
