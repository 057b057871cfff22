"""publish_now(progress): the steps of a CRL's publication, for a command's progress bars."""
from __future__ import annotations

from datetime import timedelta

from crl.config import CrlSettings
from crl.publish import Publisher


async def test_publish_reports_read_sign_and_record_in_turn(engine, issuer, signer, source, clock):
    for serial in range(0x10, 0x15):
        source.revoke(serial, clock.now - timedelta(hours=serial), 1)
    pub = Publisher("default", issuer=issuer, signer=signer, source=source, engine=engine, settings=CrlSettings(),
                    clock=clock)
    calls: list[tuple[str, int, int]] = []
    published = await pub.publish_now(lambda *call: calls.append(call))
    assert published.entries == 5
    assert calls == [("read", 0, 1), ("read", 1, 1), ("sign", 0, 5), ("sign", 5, 5), ("record", 0, 1),
                     ("record", 1, 1)]
    assert (await pub.publish_now()).number == 2  # without a progress, as before
