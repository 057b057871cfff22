"""The pure builder: known-answer vector from OpenSSL, agreement with cryptography's builder, profile rules."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID

from crl.build import (CrlBuildError, EntryEncoder, Issuer, Reason, Scope, build_crl, build_tbs, encode_entry,
                       patch_crl)
from crl.parse import locate_entries, parse_crl
from crl.signing import ECDSA_SHA256, RSA_SHA256, CrlSigner
from tests.crl.pki import key, make_ca

UTC = timezone.utc
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "crl"
T0 = datetime(2026, 11, 23, 10, tzinfo=UTC)
T1 = datetime(2026, 11, 30, 10, tzinfo=UTC)


def fixture_ca():
    cert = x509.load_pem_x509_certificate((FIXTURES / "ca.pem").read_bytes())
    k = serialization.load_pem_private_key((FIXTURES / "ca.key.pem").read_bytes(), None)
    return cert, k


def test_known_answer_vector_is_byte_identical_to_openssl_ca_gencrl():
    cert, k = fixture_ca()
    entries = [
        (0x01, datetime(2026, 3, 1, 12, tzinfo=UTC), Reason.KEY_COMPROMISE, datetime(2026, 2, 28, 9, tzinfo=UTC)),
        (0x42, datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), Reason.AFFILIATION_CHANGED, None),
        (0x80, datetime(2026, 3, 2, 12, tzinfo=UTC), Reason.CESSATION_OF_OPERATION, None),
        (0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF, datetime(2026, 3, 3, 12, tzinfo=UTC), None, None),
        (0xABCDEF0123456789ABCDEF0123456789, datetime(2026, 3, 4, 12, tzinfo=UTC), Reason.SUPERSEDED, None),
    ]
    der = build_crl(issuer=Issuer.from_certificate(cert), signer=CrlSigner.for_private_key(k), number=10,
                    this_update=T0, next_update=T1, entries=entries)
    assert der == (FIXTURES / "openssl-gencrl.der").read_bytes()


def _cryptography_tbs(ca, entries, number, this_update, next_update, idp=None, key_for_sign=None):
    """The same CRL made with cryptography's builder (constructor form), for a TBS comparison."""
    revoked = []
    for serial, at, reason, inv in entries:
        rb = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at)
        if reason:
            rb = rb.add_extension(x509.CRLReason(x509.ReasonFlags(_FLAG[reason])), critical=False)
        if inv:
            rb = rb.add_extension(x509.InvalidityDate(inv.replace(tzinfo=None)), critical=False)
        revoked.append(rb.build())
    exts = [x509.Extension(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, False,
                           x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())),
            x509.Extension(ExtensionOID.CRL_NUMBER, False, x509.CRLNumber(number))]
    if idp:
        exts.append(x509.Extension(ExtensionOID.ISSUING_DISTRIBUTION_POINT, True, idp))
    b = x509.CertificateRevocationListBuilder(ca.cert.subject, this_update, next_update, exts, revoked)
    return b.sign(key_for_sign or ca.key, hashes.SHA256()).tbs_certlist_bytes


_FLAG = {1: "keyCompromise", 3: "affiliationChanged", 4: "superseded", 5: "cessationOfOperation",
         6: "certificateHold", 9: "privilegeWithdrawn", 10: "aACompromise", 2: "cACompromise"}


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_tbs_matches_cryptography_builder(kind):
    ca = make_ca(kind=kind)
    entries = [
        (5, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None, None),
        (0xFF, datetime(2030, 6, 1, tzinfo=UTC), 6, None),  # hold; needs a leading zero octet
        (2**158 + 1, datetime(2051, 1, 1, 0, 0, 1, tzinfo=UTC), 1, datetime(2050, 12, 31, tzinfo=UTC)),  # GeneralizedTime
        (77, datetime(2026, 1, 1, tzinfo=UTC), 9, None),
        (78, datetime(2026, 1, 1, tzinfo=UTC), 10, None),
        (79, datetime(2026, 1, 1, tzinfo=UTC), 2, None),
    ]
    signer = CrlSigner.for_private_key(ca.key)
    assert signer.algorithm == (RSA_SHA256 if kind == "rsa" else ECDSA_SHA256)
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=signer, number=2**64 + 7,
                    this_update=T0, next_update=T1, entries=entries)
    ours = x509.load_der_x509_crl(der)
    assert ours.tbs_certlist_bytes == _cryptography_tbs(ca, entries, 2**64 + 7, T0, T1)
    assert ours.is_signature_valid(ca.key.public_key())
    assert ours[2].revocation_date_utc.year == 2051


def test_partitioned_crl_has_critical_idp_like_cryptography():
    ca = make_ca()
    uri = "http://127.0.0.1/crl/shard-3.crl"
    idp = x509.IssuingDistributionPoint(full_name=[x509.UniformResourceIdentifier(uri)], relative_name=None,
                                        only_contains_user_certs=True, only_contains_ca_certs=False,
                                        only_some_reasons=None, indirect_crl=False,
                                        only_contains_attribute_certs=False)
    entries = [(9, T0 - timedelta(days=1), 5, None)]
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=3,
                    this_update=T0, next_update=T1, entries=entries, scope=Scope((uri,), only_user_certs=True))
    assert x509.load_der_x509_crl(der).tbs_certlist_bytes == _cryptography_tbs(ca, entries, 3, T0, T1, idp)


def test_empty_crl_omits_revoked_certificates_and_has_aki_and_number():
    ca = make_ca(kind="ec")
    der = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                    this_update=T0, next_update=T1)
    crl = x509.load_der_x509_crl(der)
    assert len(crl) == 0
    assert crl.tbs_certlist_bytes == _cryptography_tbs(ca, [], 1, T0, T1)
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.issuer.public_bytes() == ca.cert.subject.public_bytes()
    assert crl.next_update_utc == T1 and crl.last_update_utc == T0


def test_unspecified_reason_is_written_as_no_reason_code_and_times_are_truncated_to_seconds():
    entry = encode_entry(3, datetime(2026, 1, 1, 0, 0, 0, 999999, tzinfo=UTC), Reason.UNSPECIFIED)
    assert entry == bytes.fromhex("3012020103170d3236303130313030303030305a")
    # a non-UTC offset is converted, a naive time is taken as UTC
    east = timezone(timedelta(hours=2))
    assert encode_entry(3, datetime(2026, 1, 1, 2, tzinfo=east)) == entry
    assert encode_entry(3, datetime(2026, 1, 1)) == entry


def test_fast_and_generic_entry_encodings_agree():
    enc = EntryEncoder(cache=False)
    east = timezone(timedelta(hours=-5))
    entries = [(1, T0, None, None), (2**159 - 1, T0, 6, None), (0x80, datetime(2050, 1, 1, tzinfo=UTC), 1, None),
               (12, datetime(2026, 5, 5, 23, 59, 59, tzinfo=east), 4, None), (13, T0, 1, T0 - timedelta(days=2)),
               (14, datetime(1999, 12, 31, 23, 59, 59), None, None)]
    assert enc.encode(entries) == [encode_entry(*e) for e in entries]


@pytest.mark.parametrize("entry, message", [
    ((0, T0, None, None), "positive"),
    ((-5, T0, None, None), "positive"),
    ((2**159, T0, None, None), "20 octets"),
    ((5, T0, 8, None), "complete CRL"),  # removeFromCRL belongs to delta CRLs
    ((5, T0, 7, None), "complete CRL"),
    ((5, None, None, None), "bad CRL entry"),
])
def test_bad_entries_are_refused(entry, message):
    ca = make_ca(kind="ec")
    with pytest.raises(CrlBuildError, match=message):
        build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                  this_update=T0, next_update=T1, entries=[(1, T0, None, None), entry])


def test_number_and_validity_limits():
    ca = make_ca(kind="ec")
    issuer, signer = Issuer.from_certificate(ca.cert), CrlSigner.for_private_key(ca.key)
    with pytest.raises(CrlBuildError, match="2\\^159"):
        build_crl(issuer=issuer, signer=signer, number=2**159, this_update=T0, next_update=T1)
    with pytest.raises(CrlBuildError, match="nextUpdate"):
        build_crl(issuer=issuer, signer=signer, number=1, this_update=T0, next_update=T0)
    der = build_crl(issuer=issuer, signer=signer, number=2**159 - 1, this_update=T0, next_update=T1)
    assert x509.load_der_x509_crl(der).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == \
        2**159 - 1


def test_entry_encoder_reuses_unchanged_entries_and_bounds_its_cache():
    enc = EntryEncoder()
    a, b, c = (1, T0, None, None), (2, T0, 6, None), (3, T0, 1, None)
    first = enc.encode([a, b, c])
    assert enc.last_reused == 0
    b_revoked = (2, T0 + timedelta(hours=1), 5, None)  # hold -> revoked: a new entry
    second = enc.encode([a, b_revoked, c])
    assert enc.last_reused == 2
    assert second[0] is first[0] and second[2] is first[2]
    assert second[1] == encode_entry(*b_revoked)
    third = enc.encode([a])
    assert third == [first[0]] and enc.last_reused == 1
    assert enc.encode([a, b, c]) == first and enc.last_reused == 3  # recently removed entries are still cached
    many = [(i, T0, None, None) for i in range(10, 3010)]
    enc.encode(many)
    assert enc.cached_entries == 3004
    small = many[:100]
    assert enc.encode(small) == [encode_entry(*e) for e in small] and enc.last_reused == 100
    assert enc.cached_entries == 100  # the entries gone from the CRL outgrew the allowance: dropped


def test_signer_receives_the_tbs_bytes_once():
    ca = make_ca()
    inner = CrlSigner.for_private_key(ca.key)
    seen: list[bytes] = []

    def sign(tbs: bytes) -> bytes:  # e.g. an HSM: signs the raw TBSCertList
        seen.append(tbs)
        return inner.sign(tbs)

    issuer = Issuer.from_certificate(ca.cert)
    entries = [(i, T0, None, None) for i in range(1, 100)]
    der = build_crl(issuer=issuer, signer=CrlSigner(RSA_SHA256, sign), number=4, this_update=T0, next_update=T1,
                    entries=entries)
    assert len(seen) == 1
    enc = EntryEncoder(cache=False)
    assert seen[0] == build_tbs(issuer=issuer, algorithm=RSA_SHA256, number=4, this_update=T0, next_update=T1,
                                encoded_entries=enc.encode(entries))
    assert x509.load_der_x509_crl(der).tbs_certlist_bytes == seen[0]


def test_issuer_without_ski_uses_the_rfc5280_key_hash():
    k = key("ec", 1)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "No SKI CA")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(T0).not_valid_after(T1)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(k, hashes.SHA256()))
    issuer = Issuer.from_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert issuer.key_id == x509.SubjectKeyIdentifier.from_public_key(k.public_key()).digest


def test_scope_rules():
    with pytest.raises(CrlBuildError):
        Scope(())
    with pytest.raises(CrlBuildError):
        Scope(("http://x/a.crl",), only_user_certs=True, only_ca_certs=True)


def _serials_and_reasons(der: bytes) -> dict:
    crl = x509.load_der_x509_crl(der)
    out = {}
    for r in crl:
        try:
            reason = r.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            reason = None
        out[r.serial_number] = (r.revocation_date_utc, reason)
    return out


def test_locate_entries_finds_only_real_entries():
    # serial B's encoding (02 05 1a bb cc dd ee), even behind a SEQUENCE header, sits inside serial A's octets: a
    # hit there is not B's entry
    a = int.from_bytes(b"\x11\x30\x07\x02\x05\x1a\xbb\xcc\xdd\xee\x01", "big")
    b = 0x1ABBCCDDEE
    long_entry = (0x77, T0, 1, T0 - timedelta(days=3))  # reasonCode and invalidityDate
    ca = make_ca("Locate CA", kind="ec", slot=8)
    issuer, signer = Issuer.from_certificate(ca.cert), CrlSigner.for_private_key(ca.key)
    for entries in ([(a, T0, None, None), long_entry], [(a, T0, None, None), (b, T0, 4, None), long_entry]):
        der = build_crl(issuer=issuer, signer=signer, number=1, this_update=T0, next_update=T0 + timedelta(days=1),
                        entries=entries)
        crl = parse_crl(der)
        spans = locate_entries(der, crl.entries_start, crl.entries_end, {a, b, 0x77, 0x99})
        assert set(spans) == {e[0] for e in entries}
        for serial, (start, end) in spans.items():
            assert der[start:end] == encode_entry(*next(e for e in entries if e[0] == serial))


def test_patch_crl_drops_and_adds_entries_around_the_unchanged_ones():
    ca = make_ca("Patch CA", kind="rsa", slot=9)
    issuer, signer = Issuer.from_certificate(ca.cert), CrlSigner.for_private_key(ca.key)
    base_entries = [(s, T0 - timedelta(hours=s), (None, 1, 4, 6)[s % 4], None) for s in range(100, 140)]
    scope = Scope(("http://127.0.0.1/crl/default/0.crl",), only_user_certs=True)
    base = build_crl(issuer=issuer, signer=signer, number=1, this_update=T0, next_update=T0 + timedelta(days=1),
                     entries=base_entries, scope=scope)
    crl = parse_crl(base)
    gone = {100, 117, 139}  # the first, a middle and the last entry
    changed = {120: (120, T0, 1, None)}  # held, then revoked: its entry changes
    added = [(5000, T0, 5, T0 - timedelta(days=1)), changed[120]]
    spans = locate_entries(base, crl.entries_start, crl.entries_end, gone | set(changed) | {5000})
    assert set(spans) == gone | {120}
    der = patch_crl(base=base, entries_start=crl.entries_start, entries_end=crl.entries_end, drop=spans.values(),
                    add=added, issuer=issuer, signer=signer, number=2, this_update=T0,
                    next_update=T0 + timedelta(days=1), scope=scope)
    expected = [e for e in base_entries if e[0] not in gone and e[0] not in changed] + added
    full = build_crl(issuer=issuer, signer=signer, number=2, this_update=T0, next_update=T0 + timedelta(days=1),
                     entries=expected, scope=scope)
    assert _serials_and_reasons(der) == _serials_and_reasons(full)
    assert x509.load_der_x509_crl(der).is_signature_valid(ca.cert.public_key())
    # dropping every entry leaves no revokedCertificates at all (§5.1.2.6)
    crl = parse_crl(der)
    every = locate_entries(der, crl.entries_start, crl.entries_end, {e[0] for e in expected})
    empty = patch_crl(base=der, entries_start=crl.entries_start, entries_end=crl.entries_end, drop=every.values(),
                      add=[], issuer=issuer, signer=signer, number=3, this_update=T0,
                      next_update=T0 + timedelta(days=1), scope=scope)
    assert not parse_crl(empty).has_entries and len(x509.load_der_x509_crl(empty)) == 0
    with pytest.raises(CrlBuildError):  # spans that overlap
        patch_crl(base=base, entries_start=crl.entries_start, entries_end=crl.entries_end,
                  drop=[(crl.entries_start, crl.entries_start + 10), (crl.entries_start + 5, crl.entries_start + 20)],
                  add=[], issuer=issuer, signer=signer, number=2, this_update=T0, next_update=T0 + timedelta(days=1))
