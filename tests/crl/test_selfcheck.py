"""The checks every CRL passes before it is published."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from crl.build import Issuer, Scope, build_crl
from crl.selfcheck import Patched, SelfCheckError, check_crl
from crl.signing import CrlSigner
from tests.crl.pki import make_ca

UTC = timezone.utc
T0 = datetime(2026, 11, 23, 10, tzinfo=UTC)
T1 = T0 + timedelta(days=7)
ENTRIES = [(5, T0, 1, None), (6, T0, 6, None), (7, T0, None, None)]


@pytest.fixture(scope="module")
def made():
    ca = make_ca("Selfcheck CA", kind="ec", slot=6)
    issuer = Issuer.from_certificate(ca.cert)
    der = build_crl(issuer=issuer, signer=CrlSigner.for_private_key(ca.key), number=9, this_update=T0,
                    next_update=T1, entries=ENTRIES)
    return ca, issuer, der


def problems(der, issuer, **kw) -> list[str]:
    args = dict(number=9, this_update=T0, next_update=T1, entries=ENTRIES, previous_number=8)
    args.update(kw)
    with pytest.raises(SelfCheckError) as info:
        check_crl(der, issuer=issuer, **args)
    return info.value.problems


def test_a_good_crl_passes(made):
    _, issuer, der = made
    crl = check_crl(der, issuer=issuer, number=9, this_update=T0, next_update=T1, entries=ENTRIES, previous_number=8)
    assert crl.crl_number == 9


def test_entries_must_match_the_source(made):
    _, issuer, der = made
    assert any("serial 8 is missing" in p for p in problems(der, issuer, entries=ENTRIES + [(8, T0, 1, None)]))
    assert any("wrong reasonCode" in p for p in problems(der, issuer, entries=[(5, T0, 4, None), *ENTRIES[1:]]))
    assert any("the source has 2" in p for p in problems(der, issuer, entries=ENTRIES[:2]))
    dup = [*ENTRIES, ENTRIES[0]]  # a source listing a serial twice cannot be matched by a CRL
    assert any("duplicates" in p for p in problems(der, issuer, entries=dup))


def test_numbering_times_issuer_key_and_scope(made):
    ca, issuer, der = made
    assert any("does not exceed" in p for p in problems(der, issuer, previous_number=9))
    assert any("expected 10" in p for p in problems(der, issuer, number=10, previous_number=None))
    assert any("thisUpdate" in p for p in problems(der, issuer, this_update=T0 + timedelta(seconds=1)))
    assert any("nextUpdate" in p for p in problems(der, issuer, next_update=T1 + timedelta(days=1)))
    other = Issuer.from_certificate(make_ca("Other CA", kind="ec", slot=7).cert)
    found = problems(der, other)
    assert any("byte-identical" in p for p in found) and any("Authority Key Identifier" in p for p in found)
    assert any("does not verify" in p for p in found)
    assert any("no issuer public key" in p for p in problems(der, replace(issuer, public_key=None)))
    assert any("Issuing Distribution Point" in p for p in problems(der, issuer, scope=Scope(("http://x/1.crl",))))
    assert problems(b"\x30\x00", issuer)[0].startswith("does not parse")


def test_a_patched_crl_is_checked_by_count_and_changed_serials(made):
    _, issuer, der = made
    good = Patched(3, {5: ENTRIES[0], 8: None})
    assert check_crl(der, issuer=issuer, number=9, this_update=T0, next_update=T1, entries=good).crl_number == 9
    assert any("the source has 4" in p for p in problems(der, issuer, entries=Patched(4, {5: ENTRIES[0]})))
    assert any("serial 6 is listed but should not be" in p for p in problems(der, issuer, entries=Patched(3, {6: None})))
    assert any("serial 8 is missing" in p for p in problems(der, issuer, entries=Patched(3, {8: (8, T0, None, None)})))
    assert any("wrong reasonCode" in p for p in problems(der, issuer, entries=Patched(3, {6: (6, T0, 1, None)})))
    empty = Patched(0, {})
    assert any("should be absent" in p for p in problems(der, issuer, entries=empty))
