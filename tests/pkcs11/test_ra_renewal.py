"""RA renewal with the keys in a PKCS#11 token: `ca renew-ra` generates the new RA key pair in the token under a
new label recorded beside the certificate, the running server picks it up, requests encrypted to the old and to
the new RA certificate are both answered, and a restarted server finds the new key by its label."""
from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pkcs11
import pytest
import structlog
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding

from scep_server.ca.pkcs11 import HsmSettings, Pkcs11Keys
from scep_server.runtime import Uses, initialise, open_runtime
from scep_server.scep import PKIStatus
from tests.crlwiring.conftest import enrol_with_codec
from tests.factories import rsa_key, settings_for
from tests.interop.conftest import pkcs_req, ra_and_ca
from tests.interop.test_ra_renewal import json_of, post, renew_events, served_ra, wait_for_ra
from tests.server import start_app

from .conftest import PIN


def cli(server, db_url: str, softhsm, *args: str) -> str:
    from scep_server.cli import main

    env = {**softhsm.env(), "SCEP_SERVER_DATABASE__URL": db_url, "SCEP_SERVER_LOG__LEVEL": "warning"}
    with structlog.testing.capture_logs():  # the in-process server's lines stay out of the command's output
        result = CliRunner().invoke(main, ["--data-dir", str(server.data_dir), *args], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


async def test_renew_ra_in_the_token_then_old_and_new_ra_and_a_restart(aiohttp_server, tmp_path, db_url, softhsm):
    server = await start_app(aiohttp_server, tmp_path, db_url,
                             ca=softhsm.ca_settings(key_type="ec-p256", ra_check_interval=0.2))
    url = f"{server.url}/scep/default"
    ca_dir = server.data_dir / "ca" / "default"
    old_der = await served_ra(url)
    early_key = rsa_key()  # a device read the RA certificate just before the renewal
    early = pkcs_req(early_key, old_der, challenge=server.challenge(), cn="early")

    renewed = json_of(await asyncio.to_thread(cli, server, db_url, softhsm, "ca", "renew-ra", "default",
                                              "--format", "json"))
    new_der = await wait_for_ra(url, old_der)  # the running server picked the renewal up
    old, new = x509.load_der_x509_certificate(old_der), x509.load_der_x509_certificate(new_der)
    assert renewed["ra_certificate"]["serial"] == format(new.serial_number, "x")
    assert new.public_key() != old.public_key() and new.subject == old.subject
    async with aiohttp.ClientSession() as session:
        _, ca_der = await ra_and_ca(session, url)
    new.verify_directly_issued_by(x509.load_der_x509_certificate(ca_der))

    # no key file: the new key's label, recorded beside its certificate, names a key made in the token
    assert not list(ca_dir.glob("*.key"))
    label = (ca_dir / "ra-1.label").read_text().strip()
    assert label.startswith("scep-ra-") and label != "scep-ra"
    probe = Pkcs11Keys(HsmSettings(module=softhsm.module, token_label=softhsm.label, pin=PIN, ca_key_label="scep-ca",
                                   ra_key_label="scep-ra", pool_size=1))
    try:
        assert probe.ra_key(label=label).public_key() == new.public_key()
        with probe.pool.session() as s:
            private = s.get_key(object_class=pkcs11.ObjectClass.PRIVATE_KEY, label=label)
            assert private[pkcs11.Attribute.SENSITIVE] and not private[pkcs11.Attribute.EXTRACTABLE]
            assert private[pkcs11.Attribute.NEVER_EXTRACTABLE] and private[pkcs11.Attribute.TOKEN]
    finally:
        probe.close()

    # encrypted to the new RA certificate (GetCACert serves it), and to the old one: both decrypted in the token
    async with aiohttp.ClientSession() as session:
        await enrol_with_codec(session, server.url, server.challenge(), "after-renewal")
    reply = await post(url, early, early_key)
    assert reply.status is PKIStatus.SUCCESS, reply.fail_text
    assert reply.signer_cert_der == new_der  # answered by the new RA

    # a restarted server (the runtime a start opens) finds the new key by its label, and the old one
    async with open_runtime(server.runtime.settings, uses=Uses(ca_keys=True)) as runtime:
        ca = runtime.cas["default"]
        assert ca.ra_cert == new and ca.ra_key.label == label
        assert [c for c, _ in ca.previous_ras] == [old]
        for cert, key in ((new, ca.ra_key), (old, ca.previous_ras[0][1])):
            cek = os.urandom(16)
            assert key.decrypt(cert.public_key().encrypt(cek, padding.PKCS1v15()), "pkcs1v15") == cek


async def test_the_server_renews_a_due_ra_in_the_token(aiohttp_server, tmp_path, db_url, softhsm):
    ca_settings = softhsm.ca_settings(key_type="ec-p256", ra_check_interval=0.2)
    # an RA made 700 days ago: 30 days left, its renewal is due (60 days before)
    await initialise(settings_for(tmp_path / "data", db_url, ca=ca_settings),
                     clock=lambda: datetime.now(timezone.utc) - timedelta(days=700))
    server = await start_app(aiohttp_server, tmp_path, db_url, ca=ca_settings)
    url = f"{server.url}/scep/default"
    deadline = time.monotonic() + 15
    while not await renew_events(server.runtime.engine):
        assert time.monotonic() < deadline, "the RA was not renewed"
        await asyncio.sleep(0.1)
    (event,) = await renew_events(server.runtime.engine)
    assert event["actor"] == "system:ra-renewal"
    while format(x509.load_der_x509_certificate(await served_ra(url)).serial_number, "x") != event["data"]["serial"]:
        assert time.monotonic() < deadline, "GetCACert does not serve the renewed RA"  # recorded, then loaded
        await asyncio.sleep(0.05)
    ca = server.runtime.cas["default"]
    assert type(ca.ra_key).__name__ == "Pkcs11Key"
    assert ca.ra_key.label == (server.data_dir / "ca" / "default" / "ra-1.label").read_text().strip()
    async with aiohttp.ClientSession() as session:
        await enrol_with_codec(session, server.url, server.challenge(), "renewed-by-the-server")
        async with session.get(f"{server.url}/readyz") as resp:
            checks = (await resp.json())["checks"]
    assert checks["ca.ra"] == checks["ca.token"] == "ok"


def test_each_ra_key_is_found_by_the_label_beside_its_certificate_and_must_be_its_key(softhsm, tmp_path):
    from scep_server.ca.authority import create_ca, load_ca
    from scep_server.ca.pkcs11 import HsmError
    from scep_server.ca.ra import renew_ra

    from .test_keys import keys

    now = datetime.now(timezone.utc)
    directory = tmp_path / "ca"
    store = keys(softhsm)
    try:
        ca = create_ca(directory, name="default", subject="CN=HSM CA", ra_subject="CN=HSM RA", key_size=2048,
                       validity_days=365, ra_validity_days=365, passphrase=b"", base_url="http://127.0.0.1:1",
                       now=now, key_type="ec-p256", key_store=store)
        first = renew_ra(directory, ca, validity_days=365, passphrase=b"", now=now, key_store=store)
        second = renew_ra(directory, ca, validity_days=365, passphrase=b"", now=now, key_store=store)
        labels = [(directory / f"ra-{n}.label").read_text().strip() for n in (1, 2)]
        assert len(set(labels)) == 2 and all(label.startswith("scep-ra-") for label in labels)
        assert sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")) == [
            "ca.crt", "ca.lock", "ra-1.crt", "ra-1.label", "ra-2.crt", "ra-2.label", "ra.crt"]

        def load():
            return load_ca(directory, name="default", passphrase=b"", base_url="http://127.0.0.1:1", key_store=store)

        loaded = load()
        assert loaded.ra_cert == second and loaded.ra_key.label == labels[1]
        assert [(c, k.label) for c, k in loaded.previous_ras] == [(first, labels[0]), (ca.ra_cert, "scep-ra")]

        (directory / "ra-2.label").write_text(labels[0] + "\n")  # names another RA's key
        with pytest.raises(ValueError, match="not the key of ra-2.crt"):
            load()
        (directory / "ra-2.label").write_text("no-such-key\n")
        with pytest.raises(HsmError, match="no private key labelled 'no-such-key'"):
            load()
        (directory / "ra-2.label").unlink()
        with pytest.raises(ValueError, match="ra-2.crt has no ra-2.label"):
            load()
    finally:
        store.close()
