"""A security event about one key is counted on that key's history: attempts against a victim's key are never
folded into the row of an event about another key from the same source in the same minute."""
from __future__ import annotations

from otp.report import ReportFilter

from .conftest import import_keys, make_key


async def test_attempts_against_a_key_stay_in_its_own_history(service):
    mine, victim = make_key(5001), make_key(5002)
    await import_keys(service, [mine, victim])
    assert (await service.verify_signin("attacker", mine.otp())).ok
    assert (await service.verify_signin("victim", victim.otp())).ok
    source = "198.51.100.7"
    # one of the attacker's own OTPs presented for somebody else first: a wrong_user event about the attacker's key
    assert not (await service.verify_signin("victim", mine.otp(), source=source)).ok
    # then, in the same minute and from the same address, the victim key's phished OTPs
    for _ in range(3):
        assert not (await service.verify_signin("attacker", victim.otp(), source=source)).ok
    [report] = await service.report(ReportFilter(serial=5002))
    assert "security.otp.wrong_user" in [h["event"] for h in report.history]
    [own] = await service.report(ReportFilter(serial=5001))
    assert [h["event"] for h in own.history].count("security.otp.wrong_user") == 1
