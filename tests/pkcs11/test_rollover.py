"""CA rollover with the keys in a PKCS#11 token: `prepare` generates the next CA's and RA's keys in the token under
labels of their own (the current ones a generation higher), recorded in the CA directory in place of key files;
GetNextCACert announces the next CA; `activate` makes it the issuing CA, which signs in the token, while the
previous CA keeps signing its CRL there; a restarted server loads both by their labels; a label the token holds
already is refused."""
from __future__ import annotations

import asyncio
import json
import os

import aiohttp
import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scep_server.ca.pkcs11 import HsmSettings, Pkcs11Keys
from scep_server.runtime import Uses, open_runtime
from scep_server.scep import MessageType, PKIStatus, client
from tests.crlwiring.conftest import FAST_CRL, _request, enrol_with_codec, ra_and_ca, scep_operation
from tests.interop.conftest import renew_any_time
from tests.interop.test_ra_renewal import json_of
from tests.server import start_app

from .conftest import PIN
from .test_ra_renewal import cli

TOKEN_CA = {"ra_check_interval": 0.2}


def token_keys(softhsm) -> Pkcs11Keys:
    return Pkcs11Keys(HsmSettings(module=softhsm.module, token_label=softhsm.label, pin=PIN, ca_key_label="scep-ca",
                                  ra_key_label="scep-ra", pool_size=1))


def key_files(data_dir) -> list[str]:
    """Every private key file under the CA directories (none with the keys in a token)."""
    return sorted(str(p.relative_to(data_dir)) for p in (data_dir / "ca").rglob("*.key*"))


async def admin_post(server, path: str, body: dict | None = None) -> tuple[int, dict]:
    runtime = server.runtime
    _, token = await runtime.tokens.create(scope="admin", name=f"rollover-{os.urandom(4).hex()}", now=runtime.clock())
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/api/v1/cas/{path}", headers={"Authorization": f"Bearer {token}"},
                                json=body or {}) as resp:
            return resp.status, await resp.json()


async def crl_of(session, server, name: str, issuer: x509.Certificate,
                 timeout: float = 20) -> x509.CertificateRevocationList:
    """The CA's CRL as served, once its publisher signed it; its signature checked with the CA's key."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        async with session.get(f"{server.url}/crl/{name}.crl") as resp:
            body = await resp.read()
            if resp.status == 200:
                crl = x509.load_der_x509_crl(body)
                assert crl.issuer == issuer.subject and crl.is_signature_valid(issuer.public_key())
                return crl
            assert resp.status == 503 and asyncio.get_running_loop().time() < deadline, (name, resp.status)
        await asyncio.sleep(0.2)


async def wait_until(condition, timeout: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the running server did not pick it up"
        await asyncio.sleep(0.1)


async def served_ca(session, server, ca_der: bytes, timeout: float = 20) -> None:
    """Wait until GetCACert of the default profile serves this CA (within the profile cache's period)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await ra_and_ca(session, server.url))[1] != ca_der:
        assert asyncio.get_running_loop().time() < deadline, "GetCACert does not serve the new CA"
        await asyncio.sleep(0.2)


async def renew_at(session, server, key, cert: x509.Certificate, cn: str) -> x509.Certificate:
    """A RenewalReq signed by ``cert`` (no challenge) for a new key; the certificate issued."""
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ra_der, _ = await ra_and_ca(session, server.url)
    body = _request(key, ra_der, MessageType.RENEWAL_REQ, client.make_csr(new_key, cn, None),
                    cert.public_bytes(serialization.Encoding.DER))
    rep = await scep_operation(session, server.url, body, key, ra_der)
    assert rep.status is PKIStatus.SUCCESS, rep.fail_text
    return x509.load_der_x509_certificate(rep.certs[0])


@pytest.mark.parametrize("key_type", ["rsa", "ec-p256"])
async def test_prepare_and_activate_a_rollover_in_the_token_then_a_restart(aiohttp_server, tmp_path, db_url, softhsm,
                                                                           key_type):
    ca_settings = softhsm.ca_settings(key_type=key_type, **TOKEN_CA)
    server = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL, ca=ca_settings)
    runtime, data = server.runtime, server.data_dir
    old_dir = data / "ca" / "default"
    old_ca = runtime.cas["default"].cert
    async with aiohttp.ClientSession() as session:
        old_key, old_cert = await enrol_with_codec(session, server.url, server.challenge(), "before-rollover")
    assert old_cert.issuer == old_ca.subject

    # prepare (the API route): 200, the next keys made in the token, their labels recorded, no key file
    status, prepared = await admin_post(server, "default/rollover/prepare", {"cross_sign": True})
    assert status == 200, prepared
    assert json.loads((old_dir / "next-key-labels.json").read_text()) == {"ca": "scep-ca-g2", "ra": "scep-ra-g2"}
    assert not (old_dir / "next-ca.key").exists() and not (old_dir / "next-ra.key").exists()
    assert key_files(data) == [] and not runtime.settings.passphrase_path().exists()
    new_ca, new_ra, cross = x509.load_pem_x509_certificates((old_dir / "next-ca.crt").read_bytes())
    assert [c["serial"] for c in prepared["next_ca_certificates"]] == [format(c.serial_number, "x")
                                                                       for c in (new_ca, new_ra, cross)]
    new_ca.verify_directly_issued_by(new_ca)
    new_ra.verify_directly_issued_by(new_ca)
    cross.verify_directly_issued_by(old_ca)  # signed by the current CA's key, in the token
    probe = token_keys(softhsm)
    try:
        store = probe.for_labels(("scep-ca-g2", "scep-ra-g2"))
        assert store.ca_key().public_key() == new_ca.public_key()
        assert store.ra_key().public_key() == new_ra.public_key()
        with probe.pool.session() as s:
            for label in ("scep-ca-g2", "scep-ra-g2"):
                private = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
                assert private[pkcs11.Attribute.SENSITIVE] and not private[pkcs11.Attribute.EXTRACTABLE]
                assert private[pkcs11.Attribute.NEVER_EXTRACTABLE] and private[pkcs11.Attribute.TOKEN]
    finally:
        probe.close()

    # GetNextCACert announces the next CA (signed by the current RA); GetCACert still serves the current one
    url = f"{server.url}/scep/default"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}?operation=GetCACaps") as resp:
            assert "GetNextCACert" in (await resp.text()).split()
        ra_der, ca_der = await ra_and_ca(session, server.url)
        async with session.get(f"{url}?operation=GetNextCACert") as resp:
            assert resp.status == 200
            announced = client.parse_next_ca_cert(await resp.read(), ra_cert_der=ra_der)
    assert announced == [c.public_bytes(serialization.Encoding.DER) for c in (new_ca, new_ra, cross)]
    assert x509.load_der_x509_certificate(ca_der) == old_ca

    # activate (the API route): the new CA's directory holds its certificates and labels, no key
    status, done = await admin_post(server, "default/rollover/activate")
    assert status == 200, done
    assert done["active"] == "default-g2" and done["profiles"] == 1
    new_dir = data / "ca" / "default-g2"
    assert (data / "ca" / "active").read_text().strip() == "default-g2"
    assert sorted(p.name for p in new_dir.iterdir() if not p.name.startswith(".")) == [
        "ca.crt", "cross.crt", "key-labels.json", "ra.crt"]
    assert json.loads((new_dir / "key-labels.json").read_text()) == {"ca": "scep-ca-g2", "ra": "scep-ra-g2"}
    assert key_files(data) == []
    assert list(runtime.cas) == ["default-g2", "default"]
    g2 = runtime.cas["default-g2"]
    assert (g2.key.label, g2.ra_key.label) == ("scep-ca-g2", "scep-ra-g2")
    assert (runtime.cas["default"].key.label, runtime.cas["default"].ra_key.label) == ("scep-ca", "scep-ra")

    async with aiohttp.ClientSession() as session:
        await served_ca(session, server, announced[0])
        assert list(await ra_and_ca(session, server.url)) == announced[1::-1]  # as announced: its RA, then the CA
        # a new device enrols from the new CA: signed in the token, with the new RA's key decrypting
        _, fresh = await enrol_with_codec(session, server.url, server.challenge(), "after-rollover")
        fresh.verify_directly_issued_by(new_ca)
        # the old CA's certificate renews at the new CA
        await renew_any_time(server)
        renewed = await renew_at(session, server, old_key, old_cert, "before-rollover")
        renewed.verify_directly_issued_by(new_ca)
        # both CAs publish their CRLs, each signed in the token with its own key; the superseded certificate
        # is on the old CA's
        await crl_of(session, server, "default-g2", new_ca)
        deadline = asyncio.get_running_loop().time() + 15
        while (await crl_of(session, server, "default", old_ca)).get_revoked_certificate_by_serial_number(
                old_cert.serial_number) is None:
            assert asyncio.get_running_loop().time() < deadline, "the old CA's CRL does not list the superseded one"
            await asyncio.sleep(0.2)

    # a restart: a new runtime loads both CAs from the token by their directories' labels
    async with open_runtime(runtime.settings, uses=Uses(ca_keys=True)) as restarted:
        assert list(restarted.cas) == ["default-g2", "default"]
        for name, cert, labels in (("default-g2", new_ca, ("scep-ca-g2", "scep-ra-g2")),
                                   ("default", old_ca, ("scep-ca", "scep-ra"))):
            ca = restarted.cas[name]
            assert ca.cert == cert and (ca.key.label, ca.ra_key.label) == labels
            assert type(ca.key).__name__ == "Pkcs11Key"
    # and a new server on the same data directory and database issues from the new CA, publishes both CRLs
    after = await start_app(aiohttp_server, tmp_path, db_url, crl=FAST_CRL, ca=ca_settings)
    assert list(after.runtime.cas) == ["default-g2", "default"]
    async with aiohttp.ClientSession() as session:
        await served_ca(session, after, announced[0])
        _, later = await enrol_with_codec(session, after.url, after.challenge(), "after-restart")
        later.verify_directly_issued_by(new_ca)
        await crl_of(session, after, "default", old_ca)
        await crl_of(session, after, "default-g2", new_ca)
    assert key_files(data) == []


async def test_the_ra_of_a_rolled_over_ca_renews_in_the_token_and_the_next_rollover_goes_one_higher(
        aiohttp_server, tmp_path, db_url, softhsm):
    from scep_server.ca import lifecycle

    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(key_type="ec-p256", **TOKEN_CA))
    runtime, data = server.runtime, server.data_dir
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    await lifecycle.activate_rollover(runtime, "default", actor="test")
    renewed = await lifecycle.renew(runtime, "default-g2", actor="test")
    label = (data / "ca" / "default-g2" / "ra-1.label").read_text().strip()
    assert label.startswith("scep-ra-g2-") and runtime.cas["default-g2"].ra_key.label == label
    assert renewed["ra_certificate"]["serial"] == format(runtime.cas["default-g2"].ra_cert.serial_number, "x")
    # the next rollover by the command line (another runtime, its own sessions): the running server picks the
    # prepared CA and then the activated one up from the token, within ca.ra_check_interval
    await asyncio.to_thread(cli, server, db_url, softhsm, "ca", "rollover", "prepare", "default-g2")
    assert json.loads((data / "ca" / "default-g2" / "next-key-labels.json").read_text()) == {
        "ca": "scep-ca-g3", "ra": "scep-ra-g3"}
    await wait_until(lambda: runtime.cas["default-g2"].next_ca_certs)
    done = json_of(await asyncio.to_thread(cli, server, db_url, softhsm, "ca", "rollover", "activate", "default-g2",
                                           "--format", "json"))
    assert done["active"] == "default-g3"
    await wait_until(lambda: list(runtime.cas)[0] == "default-g3")
    assert runtime.cas["default-g3"].key.label == "scep-ca-g3" and key_files(data) == []
    async with aiohttp.ClientSession() as session:
        await served_ca(session, server, runtime.cas["default-g3"].cert_der)
        _, cert = await enrol_with_codec(session, server.url, server.challenge(), "third-generation")
    cert.verify_directly_issued_by(runtime.cas["default-g3"].cert)
    async with open_runtime(runtime.settings, uses=Uses(ca_keys=True)) as restarted:
        assert list(restarted.cas) == ["default-g3", "default", "default-g2"]
        assert restarted.cas["default-g2"].ra_key.label == label


async def test_a_next_label_the_token_holds_is_refused_and_nothing_is_written(aiohttp_server, tmp_path, db_url,
                                                                              softhsm):
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    directory = server.data_dir / "ca" / "default"
    probe = token_keys(softhsm)
    try:  # a key already labelled as the next RA key would be
        taken = probe.for_labels(("unused-ca", "scep-ra-g2")).ra_key(create=("rsa", 2048)).public_key()
    finally:
        probe.close()
    before = sorted(p.name for p in directory.iterdir())
    status, problem = await admin_post(server, "default/rollover/prepare")
    assert status == 409 and problem["code"] == "key_label_taken", problem
    assert "'scep-ra-g2'" in problem["detail"]
    assert sorted(p.name for p in directory.iterdir()) == before
    status, problem = await admin_post(server, "default/rollover/activate")
    assert status == 409 and problem["code"] == "rollover_not_prepared", problem
    probe = token_keys(softhsm)
    try:  # neither overwritten nor a second key under the label; no next CA key made
        assert probe.ra_key(label="scep-ra-g2").public_key() == taken
        assert not probe.label_taken("scep-ca-g2")
    finally:
        probe.close()
    assert not server.runtime.cas["default"].next_ca_certs and key_files(server.data_dir) == []


async def test_activate_checks_the_labelled_token_keys_are_the_next_cas(aiohttp_server, tmp_path, db_url, softhsm):
    from scep_server.ca import lifecycle
    from scep_server.ca.rollover import NotPrepared

    server = await start_app(aiohttp_server, tmp_path, db_url, ca=softhsm.ca_settings(**TOKEN_CA))
    runtime = server.runtime
    directory = server.data_dir / "ca" / "default"
    await lifecycle.prepare_rollover(runtime, "default", actor="test")
    record = directory / "next-key-labels.json"
    good = record.read_text()
    for labels, match in (({"ca": "scep-ra-g2", "ra": "scep-ca-g2"}, "is not the key of its CA certificate"),
                          ({"ca": "scep-ca-g2", "ra": "nowhere"}, "RA key 'nowhere' is not usable"),
                          ({"ca": "scep-ca-g2"}, "not a key label record")):
        record.write_text(json.dumps(labels))
        with pytest.raises(NotPrepared, match=match):
            await lifecycle.activate_rollover(runtime, "default", actor="test")
        assert not (server.data_dir / "ca" / "default-g2").exists() and list(runtime.cas) == ["default"]
    record.write_text(good)
    assert (await lifecycle.activate_rollover(runtime, "default", actor="test"))["active"] == "default-g2"
