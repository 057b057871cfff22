"""kill -9 under enrolment and OTP load, three short cycles on SQLite (bench/crash.py runs longer)."""
from __future__ import annotations

from tests.scep_load.conftest import distinct_keys
from tests.server import free_port

from .crashrun import CrashRun, summary

CYCLES = 3


async def test_nothing_acknowledged_is_lost_across_kill_9(tmp_path):
    run = CrashRun(tmp_path / "data", free_port(), distinct_keys(48), yubikeys=4)
    await run.prepare()
    for _ in range(CYCLES):
        await run.cycle(load_seconds=0.8)
    await run.finish()
    figures = await run.check()
    print(summary(figures))
    assert figures["cycles"] == CYCLES
    assert figures["delivered"] >= CYCLES and figures["otp_accepted"] >= CYCLES  # the load did run
    assert figures["lost_answers"] >= 1  # and the kills did cut some answers
    assert figures["lost"] == 0, summary(figures)
    assert figures["duplicate_serials"] == 0, summary(figures)
    assert figures["otp_accepted_twice"] == 0, summary(figures)
    assert figures["otp_counter_behind"] == 0, summary(figures)
    assert figures["violations"] == 0, "\n".join(run.tally.violations)
