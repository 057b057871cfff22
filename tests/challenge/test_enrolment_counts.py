"""Enrolments per hour and state (the console's chart), on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from scep_server.challenge.enrolments import hourly_outcomes
from scep_server.store.tables import scep_transactions

H = datetime(2026, 11, 23, 10, 0, 0, tzinfo=timezone.utc)


def _row(tx: str, state: str, at: datetime) -> dict:
    return dict(profile="p", transaction_id=tx, state=state, message_type=19, csr_der=b"-",
                public_key_sha256="0" * 64, created_at=at, updated_at=at + timedelta(hours=5))


async def test_enrolments_are_counted_per_hour_received_and_state(engine):
    at = [  # (offset from H, state)
        (timedelta(minutes=-1), "issued"),  # the hour before: outside [since, until)
        (timedelta(0), "issued"), (timedelta(minutes=10), "issued"), (timedelta(minutes=59, seconds=59), "pending"),
        (timedelta(minutes=30), "rejected"),
        (timedelta(hours=1), "issued"), (timedelta(hours=1, minutes=1), "awaiting_ack"),
        (timedelta(hours=3, minutes=59, microseconds=999), "pending"),
        (timedelta(hours=4), "issued"),  # the end: excluded
        (timedelta(hours=2, minutes=5), "unnamed"),  # a state the chart does not name
    ]
    async with engine.begin() as conn:
        await conn.execute(scep_transactions.insert(), [_row(f"tx-{i}", state, H + off)
                                                        for i, (off, state) in enumerate(at)])
    counts = await hourly_outcomes(engine, H, H + timedelta(hours=4))
    assert counts == [(H, "issued", 2), (H, "pending", 1), (H, "rejected", 1),
                      (H + timedelta(hours=1), "awaiting_ack", 1), (H + timedelta(hours=1), "issued", 1),
                      (H + timedelta(hours=2), "other", 1), (H + timedelta(hours=3), "pending", 1)]
    assert all(hour.tzinfo is not None for hour, _, _ in counts)
    assert await hourly_outcomes(engine, H + timedelta(hours=5), H + timedelta(hours=6)) == []
