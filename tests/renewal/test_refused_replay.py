"""A renewal refused is refused for good: the same RenewalReq, captured on the way and sent again once the reason
it was refused for no longer holds (too early for the window, a signer on hold, a device not active), is not
issued and supersedes nothing; a request signed anew is judged afresh. SQLite and PostgreSQL."""
from __future__ import annotations

import os

import aiohttp
import sqlalchemy as sa
from cryptography import x509

from scep_server.scep import FailInfo, MessageType, PKIStatus, client, cms, oids
from trustkit import der as scep_der
from scep_server.scep.types import ContentCipher, Digest
from tests.factories import rsa_key

from .conftest import cert_row, certs_of, issue, pki, renew, serial_of, static_profile

REFUSED_BEFORE = "this renewal request was refused before; sign a new one"


def captured(srv, signer_der: bytes, signer_key, new_key, *, cn: str = "device") -> tuple[bytes, bytes]:
    """A RenewalReq without signingTime (clients may omit it), and the same request with another certificate set:
    its unsigned part differs, what its signer signed does not."""
    ca = next(iter(srv.runtime.cas.values()))
    envelope = cms.build_enveloped_data(
        client.make_csr(new_key, cn, None), recipient_cert_der=ca.ra_cert_der,
        recipient_key=x509.load_der_x509_certificate(ca.ra_cert_der).public_key(), cipher=ContentCipher.AES128_CBC,
        cek=os.urandom(16), iv=os.urandom(16), key_transport="pkcs1v15")
    attrs = [cms.attribute(oids.MESSAGE_TYPE_DER, scep_der.printable(str(int(MessageType.RENEWAL_REQ)))),
             cms.attribute(oids.TRANSACTION_ID_DER, scep_der.printable(client.transaction_id_for(new_key.public_key()))),
             cms.attribute(oids.SENDER_NONCE_DER, scep_der.octet_string(os.urandom(16)))]

    def body(certs):
        return cms.build_signed_data(econtent=envelope, signer_cert_der=signer_der, sign=client.rsa_signer(signer_key),
                                     digest=Digest.SHA256, extra_attrs=attrs, certs=certs)

    return body(None), body([signer_der, ca.cert_der])


async def test_a_renewal_refused_as_too_early_is_refused_when_replayed_inside_the_window(server, clock):
    await static_profile(server, "short", template={"validity_days": 30}, supersede_on_renewal=True)
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        early, reshaped = captured(server, der, key, rsa_key())
        assert early != reshaped
        rep = await pki(s, server, "short", early, key)
        assert rep.status is PKIStatus.FAILURE and "renewal is accepted only within" in rep.fail_text

        clock.advance(days=21)  # inside the window: the captured bytes are sent again
        for body in (early, reshaped):
            rep = await pki(s, server, "short", body, key)
            assert rep.status is PKIStatus.FAILURE and rep.fail_info is FailInfo.BAD_REQUEST, rep.fail_text
            assert rep.fail_text == REFUSED_BEFORE
        assert (await cert_row(server, der))["status"] == "valid"  # not superseded
        assert len(await certs_of(server, "short")) == 1

        # the device signs a new request: it renews, and its old certificate is superseded
        rep = await renew(s, server, "short", der, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        old = await cert_row(server, der)
        assert old["status"] == "revoked" and old["revocation_reason"] == 4  # superseded
        assert (await cert_row(server, rep.certs[0]))["renewal_of"] == serial_of(der)


async def test_a_renewal_refused_while_its_signer_was_on_hold_stays_refused_after_release(server, clock):
    await static_profile(server, "short", template={"validity_days": 30}, supersede_on_renewal=True)
    rt = server.runtime
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        clock.advance(days=21)
        await rt.revocation.hold(serial_of(der), actor="test")
        held, _ = captured(server, der, key, rsa_key())
        rep = await pki(s, server, "short", held, key)
        assert rep.status is PKIStatus.FAILURE and "on hold" in rep.fail_text
        await rt.revocation.release(serial_of(der), actor="test")

        rep = await pki(s, server, "short", held, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_text == REFUSED_BEFORE
        assert (await cert_row(server, der))["status"] == "valid" and len(await certs_of(server, "short")) == 1

        fresh, _ = captured(server, der, key, rsa_key())  # the device's own next attempt
        rep = await pki(s, server, "short", fresh, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        again = await pki(s, server, "short", fresh, key)  # a retry of the issued transaction: its certificate
        assert again.status is PKIStatus.SUCCESS and again.certs[0] == rep.certs[0]

    # the refusal is the only record: one row, for the signer, none for the renewal that succeeded
    from scep_server.store.tables import renewal_refusals
    async with rt.engine.connect() as conn:
        rows = (await conn.execute(sa.select(renewal_refusals))).all()
    assert [r.signer_serial for r in rows] == [serial_of(der)]


async def test_a_renewal_sent_first_to_a_profile_that_never_renews_it_is_not_blocked_where_it_renews(server, clock):
    """A captured RenewalReq sent to another profile first (one that does not renew the signer, or does not renew at
    all): refused there, and not remembered, so the device's request is still judged at its own profile."""
    await static_profile(server, "short", template={"validity_days": 30}, supersede_on_renewal=True)
    await static_profile(server, "other", template={"validity_days": 30})
    await static_profile(server, "closed", template={"validity_days": 30}, allow_renewal=False)
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        clock.advance(days=21)  # inside the window
        request, _ = captured(server, der, key, rsa_key())
        rep = await pki(s, server, "other", request, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_text == "a certificate issued at profile 'short' is renewed only there"
        rep = await pki(s, server, "closed", request, key)
        assert rep.status is PKIStatus.FAILURE and rep.fail_text == "renewal is not enabled on this profile"
        rep = await pki(s, server, "short", request, key)
        assert rep.status is PKIStatus.SUCCESS, rep.fail_text
        assert (await cert_row(server, rep.certs[0]))["renewal_of"] == serial_of(der)


async def test_a_renewal_refused_at_a_profile_that_renews_it_is_refused_at_every_such_profile(server, clock):
    """Refused as too early at the issuing profile, the same request is refused for good at a profile the issuing
    profile renews to as well (it would be issued there once inside the window)."""
    await static_profile(server, "short", template={"validity_days": 30}, renewal_to=["next"])
    await static_profile(server, "next", template={"validity_days": 30})
    async with aiohttp.ClientSession() as s:
        key = rsa_key()
        der = await issue(s, server, "short", key)
        request, _ = captured(server, der, key, rsa_key())
        rep = await pki(s, server, "short", request, key)
        assert rep.status is PKIStatus.FAILURE and "renewal is accepted only within" in rep.fail_text
        clock.advance(days=21)
        for profile in ("next", "short"):
            rep = await pki(s, server, profile, request, key)
            assert rep.status is PKIStatus.FAILURE and rep.fail_text == REFUSED_BEFORE, (profile, rep.fail_text)
        assert len(await certs_of(server, "next")) == 0
