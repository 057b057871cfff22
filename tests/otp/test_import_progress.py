"""An import reports its progress by stage (read, seal, write), each up to its total, in that order."""
from __future__ import annotations

import threading

from otp import secrets_csv, store
from tests.otp.conftest import make_key, secrets_file


async def test_import_reports_each_stage_up_to_its_total(service, monkeypatch):
    monkeypatch.setattr(secrets_csv, "PROGRESS_LINES", 100)
    monkeypatch.setattr(store, "INSERT_CHUNK", 150)
    keys = [make_key(5_000_000 + i) for i in range(420)]
    calls: list[tuple[str, int, int]] = []
    threads: set[str] = set()

    def progress(stage: str, done: int, total: int) -> None:
        calls.append((stage, done, total))
        threads.add(f"{stage}:{threading.current_thread() is threading.main_thread()}")

    result = await service.import_secrets(secrets_file(keys), progress=progress)
    assert result.ok and result.imported == 420
    stages = [stage for stage, _, _ in calls]
    assert stages == sorted(stages, key=["read", "seal", "write"].index)  # one stage after the other
    assert [(d, t) for s, d, t in calls if s == "read"] == [(100, 420), (200, 420), (300, 420), (400, 420), (420, 420)]
    assert [(d, t) for s, d, t in calls if s == "write"] == [(150, 420), (300, 420), (420, 420)]
    assert [(d, t) for s, d, t in calls if s == "seal"][-1] == (420, 420)
    assert "read:False" in threads and "write:True" in threads  # the parser reports from its thread


async def test_a_refused_import_reports_only_the_reading(service):
    keys = [make_key(6_000_000 + i) for i in range(3)]
    assert (await service.import_secrets(secrets_file(keys))).ok
    calls: list[tuple[str, int, int]] = []
    result = await service.import_secrets(secrets_file(keys), progress=lambda *call: calls.append(call))
    assert not result.ok and {stage for stage, _, _ in calls} == {"read"}


async def test_a_dry_run_reports_only_the_reading(service):
    calls: list[tuple[str, int, int]] = []
    result = await service.import_secrets(secrets_file([make_key(7_000_000)]), dry_run=True,
                                          progress=lambda *call: calls.append(call))
    assert result.ok and calls == [("read", 1, 1)]
