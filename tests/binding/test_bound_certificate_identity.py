"""A bound certificate is identified by its DER or its TBSCertificate, never by its CA's name and serial alone: a
customer CA is known by a registration name, which a removal frees for another CA (and an external CA may not take
the name of one of ours, nor of one of its rollover successors). A certificate of another CA registered under the
same name, with the serial of a bound certificate, is another certificate: never managed as the bound one, never
taken for it presented by a second device (nothing retired); on SQLite and PostgreSQL."""
from __future__ import annotations

import hashlib
import json
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crl.build import Issuer, build_crl
from crl.check import CrlChecker
from crl.config import CheckerSettings, Policy
from crl.signing import CrlSigner
from scep_server.binding.attestation import AttestationService, Verdict
from scep_server.binding.devices import DeviceStore
from scep_server.binding.errors import ExternalCaError
from scep_server.binding.external import ExternalCas
from scep_server.binding.tables import device_certs
from scep_server.store.tables import events
from tests.binding.conftest import api, clock, server  # noqa: F401 - fixtures
from tests.binding.test_reencoded_certificates import attest, bindings, fingerprint, reencode, second_device_events
from tests.crl import pki
from tests.factories import make_ca, register_ca
from tests.server import run
from trustkit.clock import SettableClock

CDP = "http://127.0.0.1:9/identity.crl"
SERIAL = 0x1000


def device_cert(ca: pki.CaPair, key, cn: str, serial: int = SERIAL) -> bytes:
    """A device certificate of `ca` for `key` (P-256), with a CDP, DER."""
    return (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(pki.NOW - timedelta(hours=1)).not_valid_after(pki.NOW + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(CDP)], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
            .sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


class World:
    """Two customer CAs (P-256), devices dev-a and dev-b, and a key and certificate of serial 0x1000 of each CA
    (another key and subject)."""

    def __init__(self, engine):
        self.engine = engine
        self.clock = SettableClock(pki.NOW + timedelta(minutes=5))
        self.ca1 = pki.make_ca("Identity Customer CA One", kind="ec", slot=12, cdp="http://127.0.0.1:9/one.crl")
        self.ca2 = pki.make_ca("Identity Customer CA Two", kind="ec", slot=13, cdp="http://127.0.0.1:9/two.crl")
        self.key1, self.key2 = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        self.cert1 = device_cert(self.ca1, self.key1, "device one")
        self.cert2 = device_cert(self.ca2, self.key2, "someone else")
        self.ext = ExternalCas(engine, CrlChecker(settings=CheckerSettings(), clock=self.clock))
        self.att = AttestationService(engine, cas={}, external=self.ext, clock=self.clock)

    async def register(self, name: str, ca: pki.CaPair) -> None:
        """Register `ca` as external CA `name` and install its (empty) CRL."""
        await self.ext.add(name, ca.cert, policy=Policy.FAIL_CLOSED, actor="t", now=self.clock())
        await self.ext.reload()
        crl = build_crl(issuer=Issuer.from_certificate(ca.cert), signer=CrlSigner.for_private_key(ca.key), number=1,
                        this_update=pki.NOW, next_update=pki.NOW + timedelta(days=7), entries=[])
        assert (await self.ext.checker.install(name, CDP, crl)).ok

    async def unregister(self, name: str) -> None:
        await self.ext.remove(name, actor="t", now=self.clock())
        await self.ext.reload()


@pytest.fixture
async def world(engine):
    w = World(engine)
    store = DeviceStore(engine, clock=w.clock)
    for device in ("dev-a", "dev-b"):
        await store.create(device, actor="t")
    yield w
    await w.att.aclose()


async def refusals(engine) -> list[dict]:
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(events.c.data).where(
            events.c.kind == "security.binding.refused"))).scalars().all()
    return [json.loads(data) for data in rows]


@pytest.mark.parametrize("revoke", [False, True], ids=["record", "revoke_on_second_device"])
async def test_another_ca_registered_under_the_name_does_not_inherit_a_binding(engine, world, revoke):
    """The reproduction: dev-a bound to CA1's certificate of serial 0x1000; "cust" removed and registered again
    with CA2; CA2's certificate of serial 0x1000 (another key and subject) is not dev-a's bound certificate."""
    w = world
    w.att.revoke_on_second_device = revoke
    await w.register("cust", w.ca1)
    assert (await attest(w.att, "dev-a", w.key1, w.cert1))[0].reason is Verdict.MANAGED
    bound = [(fingerprint(w.cert1), "dev-a", "active", None)]
    assert await bindings(engine) == bound

    await w.unregister("cust")
    await w.register("cust", w.ca2)
    result, _ = await attest(w.att, "dev-a", w.key2, w.cert2)
    assert not result.managed
    assert result.reason is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE, result
    # presented by another device it is not the bound certificate either: no second device, nothing retired
    result, _ = await attest(w.att, "dev-b", w.key2, w.cert2)
    assert not result.managed
    assert result.reason is Verdict.CERTIFICATE_UNKNOWN, result
    assert await second_device_events(engine) == []
    assert await bindings(engine) == bound
    taken = [r for r in await refusals(engine) if r["reason"] == "certificate_unknown"]
    assert [(r["ca"], r["bound_to"], r["bound_fingerprint_sha256"]) for r in taken] == \
        [("cust", "dev-a", fingerprint(w.cert1))]
    # its re-encoded copy is the same other certificate
    result, _ = await attest(w.att, "dev-a", w.key2, reencode(w.cert2))
    assert result.reason is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE, result
    assert await bindings(engine) == bound


async def test_a_certificate_with_the_serial_of_a_removed_binding_of_the_device_does_not_bind(engine, world):
    """After `device remove-cert` the device binds its next certificate, but not one whose (ca, serial) is that
    of a binding of another certificate: it would be taken for that binding."""
    w = world
    await w.register("cust", w.ca1)
    assert (await attest(w.att, "dev-a", w.key1, w.cert1))[0].reason is Verdict.MANAGED
    await DeviceStore(engine, clock=w.clock).remove_certificate("dev-a", actor="t")
    await w.unregister("cust")
    await w.register("cust", w.ca2)
    result, _ = await attest(w.att, "dev-a", w.key2, w.cert2)
    assert result.reason is Verdict.CERTIFICATE_UNKNOWN, result
    assert await bindings(engine) == [(fingerprint(w.cert1), "dev-a", "retired", "removed")]


async def test_a_binding_found_by_fingerprint_and_another_by_ca_and_serial(engine, world):
    """Two bindings for one lookup: the certificate's own (under an earlier name of its CA) is the one judged,
    whichever row the database returns first; the other certificate's binding is left alone."""
    w = world
    w.att.revoke_on_second_device = True
    await w.register("old", w.ca1)
    assert (await attest(w.att, "dev-a", w.key1, w.cert1))[0].reason is Verdict.MANAGED
    await w.unregister("old")
    await w.register("cust", w.ca2)
    assert (await attest(w.att, "dev-b", w.key2, w.cert2))[0].reason is Verdict.MANAGED
    await w.unregister("cust")
    await w.register("cust", w.ca1)
    for _ in range(3):
        result, _ = await attest(w.att, "dev-a", w.key1, w.cert1)
        assert result.reason is Verdict.MANAGED, result
    assert await second_device_events(engine) == []
    assert sorted(await bindings(engine)) == sorted([(fingerprint(w.cert1), "dev-a", "active", None),
                                                     (fingerprint(w.cert2), "dev-b", "active", None)])


async def test_a_binding_without_its_tbs_digest_is_its_fingerprint_only(engine, world):
    """A binding made before binding_0008 has no TBSCertificate digest: only its DER is the bound certificate."""
    w = world
    await w.register("cust", w.ca1)
    assert (await attest(w.att, "dev-a", w.key1, w.cert1))[0].reason is Verdict.MANAGED
    async with engine.begin() as conn:
        await conn.execute(device_certs.update().values(tbs_sha256=None))
    copy = reencode(w.cert1)
    assert (await attest(w.att, "dev-a", w.key1, copy))[0].reason is Verdict.DEVICE_BOUND_TO_OTHER_CERTIFICATE
    w.att.revoke_on_second_device = True
    assert (await attest(w.att, "dev-b", w.key1, copy))[0].reason is Verdict.CERTIFICATE_UNKNOWN
    assert await second_device_events(engine) == []
    assert (await attest(w.att, "dev-a", w.key1, w.cert1))[0].reason is Verdict.MANAGED
    assert await bindings(engine) == [(fingerprint(w.cert1), "dev-a", "active", None)]


async def test_a_binding_records_the_tbs_digest(engine, world):
    w = world
    await w.register("cust", w.ca1)
    assert (await attest(w.att, "dev-a", w.key1, reencode(w.cert1)))[0].reason is Verdict.MANAGED
    async with engine.connect() as conn:
        tbs = (await conn.execute(sa.select(device_certs.c.tbs_sha256))).scalar()
    assert tbs == hashlib.sha256(x509.load_der_x509_certificate(w.cert1).tbs_certificate_bytes).hexdigest()


# ---------------------------------------------------------------- an external CA under one of our names

@pytest.fixture(scope="module")
def our_ca(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("identity-ca"), name="ours", key_type="ec-p256")


@pytest.mark.parametrize("name", ["ours", "ours-g2", "ours-g3", "ours-g17"])
async def test_an_external_ca_may_not_take_a_name_of_ours(engine, world, our_ca, name):
    """Our CAs as the database records them, and as the process knows them (its runtime, its CA directory)."""
    await register_ca(engine, our_ca)
    with pytest.raises(ExternalCaError, match="choose another name"):
        await world.ext.add(name, world.ca1.cert, policy=Policy.FAIL_CLOSED, actor="t", now=world.clock())
    known = ExternalCas(engine, world.ext.checker, our_names=lambda: ["issuing"])
    with pytest.raises(ExternalCaError, match="'issuing'"):
        await known.add("issuing-g2", world.ca1.cert, policy=Policy.FAIL_CLOSED, actor="t", now=world.clock())
    assert await world.ext.list() == []
    await world.ext.add("ours-customer", world.ca1.cert, policy=Policy.FAIL_CLOSED, actor="t", now=world.clock())


def _pem(ca: pki.CaPair) -> str:
    return ca.cert.public_bytes(serialization.Encoding.PEM).decode()


async def test_the_api_and_the_command_refuse_a_name_of_ours(server, api, tmp_path):
    name = server.runtime.settings.ca.name
    ca = pki.make_ca("Identity Customer CA Api", kind="ec", slot=14, cdp="http://127.0.0.1:9/api.crl")
    for taken in (name, f"{name}-g2", f"{name}-g3"):
        res = await api.post("/api/v1/external-cas", {"name": taken, "certificate": _pem(ca)}, admin=True,
                             expect=None)
        assert res.get("status") == 400 and res.get("code") == "external_ca_refused", res
        assert "choose another name" in res.get("detail", ""), res
    path = tmp_path / "ca.pem"
    path.write_text(_pem(ca))
    rc, out, err = await run(sys.executable, "-m", "scep_server.cli", "--data-dir", str(server.data_dir),
                             "ca", "add-external", f"{name}-g2", "--cert", str(path))
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, (out, err)
    assert "choose another name" in err
    assert await server.runtime.binding.external.list() == []
